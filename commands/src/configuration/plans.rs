//! Writes planned from whole states: a rollback to an earlier revision and the merge of a branch
//! into its base. The plans are the domain's (`efms_domain::config::plans`); this commits them
//! through the same pipeline as any write.

use efms_domain::config::plans::{self, BranchState, MergeInputs, Merged};
use efms_domain::config::{BranchPoint, ConfigCommand, Key, Operation};

use super::{CommitRequest, ConfigService, ConfigServiceError};
use crate::log::Position;

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeOutcome {
    /// Where its commit landed (`None`: nothing to merge).
    pub position: Option<Position>,
    /// Each resource it changed on the base.
    pub report: Vec<(Key, Merged)>,
}

impl ConfigService {
    /// Commits, on `request`'s branch, the changes that turn `current` into `target` (a rollback):
    /// answers where the commit landed and how many resources it changed.
    pub async fn rollback(
        &self,
        request: &CommitRequest,
        target: &BranchState,
        current: &BranchState,
    ) -> Result<(Option<Position>, usize), ConfigServiceError> {
        let changes = plans::rollback(target, current).map_err(ConfigServiceError::Fault)?;
        let count = changes.len();
        let position = self.commit(request, Operation::Rollback, changes).await?;
        Ok((position, count))
    }

    /// Merges `source` into `request`'s branch (its base) as one revision: every resource merged
    /// three ways from `inputs`. Conflicts refuse the merge and change nothing; so does a
    /// concurrent write to the base (the changes expect the base as it was read).
    pub async fn merge(
        &self,
        request: &CommitRequest,
        source: BranchPoint,
        inputs: &MergeInputs,
    ) -> Result<MergeOutcome, ConfigServiceError> {
        let plan = plans::merge(inputs).map_err(ConfigServiceError::Fault)?;
        if !plan.conflicts.is_empty() {
            return Err(ConfigServiceError::MergeConflicts(plan.conflicts));
        }
        let command = ConfigCommand::Merge {
            message: request.metadata.message.clone(),
            source,
            changes: plan.changes,
        };
        let position = self.execute(request, command).await?;
        Ok(MergeOutcome {
            position,
            report: plan.report,
        })
    }
}

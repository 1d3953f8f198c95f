//! Bulk writes (API-BK-001, API-BK-002): up to thousands of operations across kinds in one commit,
//! or none of them and every operation at fault. The domain says what each operation expands to
//! (`efms_domain::config::bulk`); this reads what patches start from, holds the request to the
//! bytes it may write, and commits through the same pipeline as any write.

use std::time::Duration;

use efms_domain::config::bulk::{self, BulkOperation, Expansion, Fault, Target};
use efms_domain::config::{limits, Change, Key, Operation};

use super::{CommitRequest, ConfigService, ConfigServiceError};

/// How long a bulk commit waits for the read models to apply it: a commit as large as the
/// tenant takes them a while, and the answer names its revision.
pub const BULK_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The most bytes of documents one bulk request may write in all: each patch of a group's
/// resources writes one document per resource, so a small request can ask for much more.
pub const MAX_WRITTEN_BYTES: usize = 64 * 1024 * 1024;

/// Follows a bulk write on its way (a job records it).
pub trait BulkProgress: Send + Sync {
    /// `count` operations are expanded and checked.
    fn validated(&self, count: usize);
    /// All `total` operations are checked; the commit is being made.
    fn committing(&self, total: usize);
}

/// What a bulk write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkOutcome {
    /// The revision it landed in (`None`: it changed nothing).
    pub revision: Option<i64>,
    /// How many changes it applied (a patch of a group counts one per resource).
    pub changes: usize,
}

/// A fault of the operation at `operation` (its index in the request).
#[derive(Debug, Clone, PartialEq)]
pub struct OperationFault {
    /// The operation's index.
    pub operation: usize,
    /// What is wrong with it.
    pub fault: Fault,
}

/// Why a bulk write did not land. Nothing was written in any case, except with
/// [`BulkError::ReadModelsBehind`].
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// Operations at fault, each named.
    #[error("{} fault(s) in the operations", .0.len())]
    Faults(Vec<OperationFault>),
    /// The operations up to `operation` write more than [`MAX_WRITTEN_BYTES`].
    #[error(
        "the operations up to this one write more than {MAX_WRITTEN_BYTES} bytes of documents, \
         the limit of a bulk request; split it"
    )]
    TooMuchWritten {
        /// The operation that passes the limit.
        operation: usize,
    },
    /// The commit was refused; `changes` names the operation each change came from, so the
    /// refusal can be traced to one.
    #[error("{error}")]
    Refused {
        /// The refusal.
        error: ConfigServiceError,
        /// Each change's resource and the index of the operation it comes from, in order.
        changes: Vec<(Key, usize)>,
    },
    /// Reading what the operations start from failed.
    #[error(transparent)]
    Read(ConfigServiceError),
    /// Committed, but the read models have not applied it within [`BULK_READ_TIMEOUT`].
    #[error("the changes are committed; the read models are still applying them")]
    ReadModelsBehind,
}

impl ConfigService {
    /// Expands `operations`, checks them all, and commits them as one revision of the request's
    /// branch; `progress`, when given, follows the way through.
    pub async fn bulk(
        &self,
        request: &CommitRequest,
        operations: &[BulkOperation],
        progress: Option<&dyn BulkProgress>,
    ) -> Result<BulkOutcome, BulkError> {
        let mut changes = Vec::with_capacity(operations.len());
        let mut sources = Vec::with_capacity(operations.len());
        let mut faults = Vec::new();
        let mut written = 0;
        for (index, operation) in operations.iter().enumerate() {
            if let Some(progress) = progress {
                progress.validated(index);
            }
            match self.expand(request, operation).await? {
                Ok(expanded) => {
                    for change in expanded {
                        if let Change::Put { document, .. } = &change {
                            written += limits::json_size(document);
                        }
                        let (kind, name) = change.key();
                        sources.push(((kind, name.to_owned()), index));
                        changes.push(change);
                    }
                    if written > MAX_WRITTEN_BYTES {
                        return Err(BulkError::TooMuchWritten { operation: index });
                    }
                }
                Err(found) => faults.extend(found.into_iter().map(|fault| OperationFault {
                    operation: index,
                    fault,
                })),
            }
        }
        if !faults.is_empty() {
            return Err(BulkError::Faults(faults));
        }
        if let Some(progress) = progress {
            progress.committing(operations.len());
        }
        let count = changes.len();
        let (tenant_id, branch) = (request.tenant_id, request.branch.as_str());
        let before = self.services.head_revision(tenant_id, branch);
        let before = before.await.map_err(BulkError::Read)?;
        let position = match self.commit(request, Operation::Bulk, changes).await {
            Ok(position) => position,
            Err(error) => {
                return Err(BulkError::Refused {
                    error,
                    changes: sources,
                })
            }
        };
        if let Some(position) = position {
            if !self
                .services
                .wait_for_read_models(position, BULK_READ_TIMEOUT)
                .await
            {
                return Err(BulkError::ReadModelsBehind);
            }
        }
        let after = self.services.head_revision(tenant_id, branch);
        let after = after.await.map_err(BulkError::Read)?;
        Ok(BulkOutcome {
            revision: (after != before).then_some(after),
            changes: count,
        })
    }

    /// The changes one operation asks for (several for a patch of a group's resources), or its
    /// faults; the outer error is a failed read.
    async fn expand(
        &self,
        request: &CommitRequest,
        operation: &BulkOperation,
    ) -> Result<Result<Vec<Change>, Vec<Fault>>, BulkError> {
        let (kind, target) = match bulk::expand(operation, &self.limits) {
            Ok(Expansion::Changes(changes)) => return Ok(Ok(changes)),
            Ok(Expansion::Patch { kind, target }) => (kind, target),
            Err(faults) => return Ok(Err(faults)),
        };
        let (tenant_id, branch) = (request.tenant_id, request.branch.as_str());
        let names = match target {
            Target::Name(name) => vec![name.to_owned()],
            Target::Group(group) => {
                let gets = self.services.group_resources(tenant_id, branch, group);
                let inherited = gets.await.map_err(BulkError::Read)?;
                if let Some(missing) = inherited.missing {
                    return Ok(Err(vec![Fault {
                        pointer: "/group".to_owned(),
                        problem: bulk::Problem::Said(format!("there is no group `{missing}`")),
                    }]));
                }
                inherited
                    .attachments
                    .into_iter()
                    .filter(|effective| effective.attachment.kind == kind)
                    .map(|effective| effective.attachment.name)
                    .collect()
            }
        };
        let mut changes = Vec::with_capacity(names.len());
        for name in &names {
            let stored = self.services.stored_resource(tenant_id, branch, kind, name);
            let stored = stored.await.map_err(BulkError::Read)?;
            match bulk::patched((kind, name), stored, operation, &self.limits) {
                Ok(change) => changes.push(change),
                Err(faults) => return Ok(Err(faults)),
            }
        }
        Ok(Ok(changes))
    }
}

//! Rollouts' writes: each rollout is a stream of its own (aggregate `rollout`, id its uuid).

use efms_domain::fleet::rollout::{Rollout, RolloutCommand, RolloutError};
use uuid::Uuid;

use super::Fleet;
use crate::{CommandError, CommitMetadata, Position};

impl Fleet {
    /// Runs `command` on rollout `rollout_id` of `tenant_id` on behalf of `actor`.
    pub async fn rollout(
        &self,
        tenant_id: Uuid,
        rollout_id: Uuid,
        command: RolloutCommand,
        actor: &str,
    ) -> Result<Option<Position>, CommandError<RolloutError>> {
        self.bus
            .execute::<Rollout>(
                tenant_id,
                &rollout_id.to_string(),
                command,
                (),
                CommitMetadata::by(actor),
            )
            .await
    }

    /// The rollout as its stream holds it now.
    pub async fn read_rollout(
        &self,
        tenant_id: Uuid,
        rollout_id: Uuid,
    ) -> Result<Rollout, CommandError<RolloutError>> {
        self.bus
            .read::<Rollout, _>(tenant_id, &rollout_id.to_string(), Clone::clone)
            .await
    }
}

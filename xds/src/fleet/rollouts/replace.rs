//! Replacing one container: its old container drained and removed, then its replacement launched
//! the same way with the new image. Each step is recorded before the operation it names is asked
//! for, with the same operation id: a driver that stops between the two asks again at its next
//! round, and the VM takes an id it already holds once (an agent carries an id out once), so a
//! container is neither lost nor doubled.

use chrono::Utc;
use efms_commands::CommandError;
use efms_domain::fleet::rollout::{RolloutTarget, Step};
use efms_domain::fleet::{ContainerOperation, VmError};
use efms_projections::fleet::operations::get_operation;
use uuid::Uuid;

use super::{command, DriveError, Driver};

/// How an operation a step asked for stands.
enum Asked {
    /// Not ended (or not shown yet).
    Waiting,
    /// Ended well; a launch names its container, and when it was asked for.
    Succeeded(Option<String>, chrono::DateTime<Utc>),
    /// Ended badly, in these words.
    Failed(String),
}

impl Driver<'_> {
    /// Starts replacing `target`: its removal recorded, then asked for.
    pub(super) async fn start(&self, target: &RolloutTarget) -> Result<(), DriveError> {
        let operation_id = Uuid::now_v7();
        let step = Step::Removing {
            operation_id,
            at: Utc::now(),
        };
        if !self.advance(target, step).await? {
            return Ok(());
        }
        self.ask_removal(target, operation_id).await
    }

    async fn ask_removal(
        &self,
        target: &RolloutTarget,
        operation_id: Uuid,
    ) -> Result<(), DriveError> {
        let removal = ContainerOperation::Remove {
            container_id: target.container_id.clone(),
        };
        match self.ask(target, operation_id, removal).await {
            Ok(()) => Ok(()),
            // Gone already (removed by this very operation, not shown yet, or by hand).
            Err(CommandError::Rejected(VmError::UnknownContainer(_))) => self.launch(target).await,
            // Not removed: the rollout fails (unless it ended before) and the container stays.
            Err(CommandError::Rejected(error)) => {
                let reason = format!("cannot remove the old container: {error}");
                self.fail_and_put_back(target, reason).await
            }
            Err(other) => Err(command(other)),
        }
    }

    /// Fails the rollout at `target` (unless it ended before) and takes `target` out of what is
    /// under way, so that an ended rollout stops driving it.
    async fn fail_and_put_back(
        &self,
        target: &RolloutTarget,
        reason: String,
    ) -> Result<(), DriveError> {
        if self.ended {
            tracing::warn!(rollout = %self.rollout_id, node = %target.node_id, %reason,
                "a container of an ended rollout was left as it is");
        } else {
            self.fail(target, Some(&target.container_id), reason)
                .await?;
        }
        self.advance(target, Step::Pending).await.map(|_| ())
    }

    /// Launches `target`'s replacement: recorded, then asked for.
    async fn launch(&self, target: &RolloutTarget) -> Result<(), DriveError> {
        let operation_id = Uuid::now_v7();
        let step = Step::Launching {
            operation_id,
            at: Utc::now(),
        };
        if !self.advance(target, step).await? {
            return Ok(());
        }
        self.ask_launch(target, operation_id).await
    }

    async fn ask_launch(
        &self,
        target: &RolloutTarget,
        operation_id: Uuid,
    ) -> Result<(), DriveError> {
        let mut spec = target.launch.clone();
        spec.image.clone_from(&self.image);
        let launch = ContainerOperation::Launch {
            node_id: target.node_id.clone(),
            spec,
        };
        match self.ask(target, operation_id, launch).await {
            // Taken by this very launch, done and not shown yet: seen at a later round.
            Ok(()) | Err(CommandError::Rejected(VmError::NodeIdTaken(_))) => Ok(()),
            Err(CommandError::Rejected(error)) => {
                let reason = format!("cannot launch the replacement: {error}");
                self.fail_and_put_back(target, reason).await
            }
            Err(other) => Err(command(other)),
        }
    }

    async fn ask(
        &self,
        target: &RolloutTarget,
        operation_id: Uuid,
        operation: ContainerOperation,
    ) -> Result<(), CommandError<VmError>> {
        self.fleet
            .operate(
                self.tenant_id,
                &target.vm,
                (operation_id, operation),
                &self.actor,
            )
            .await
            .map(|_| ())
    }

    /// How the operation `operation_id` stands; asked for again when it is not shown.
    async fn asked(
        &self,
        operation_id: Uuid,
        again: impl std::future::Future<Output = Result<(), DriveError>>,
    ) -> Result<Asked, DriveError> {
        let Some(row) = get_operation(self.fleet.pool(), self.tenant_id, operation_id).await?
        else {
            again.await?;
            return Ok(Asked::Waiting);
        };
        Ok(match row.state.as_str() {
            "succeeded" => Asked::Succeeded(row.container_id, row.requested_at),
            "failed" => Asked::Failed(row.error.unwrap_or_default()),
            _ => Asked::Waiting,
        })
    }

    /// Moves a container being removed on: to its replacement once removed; a removal that
    /// failed or did not end in time fails the rollout and puts the container back to pending.
    pub(super) async fn removing(
        &self,
        target: &RolloutTarget,
        (operation_id, since): (Uuid, chrono::DateTime<Utc>),
    ) -> Result<(), DriveError> {
        let again = self.ask_removal(target, operation_id);
        match self.asked(operation_id, again).await? {
            Asked::Succeeded(..) => self.launch(target).await,
            Asked::Failed(error) => {
                let reason = format!("removing the old container failed: {error}");
                self.fail_and_put_back(target, reason).await
            }
            Asked::Waiting if Utc::now() - since > self.timeout => {
                let reason = "removing the old container did not end in time".to_owned();
                self.fail_and_put_back(target, reason).await
            }
            Asked::Waiting => Ok(()),
        }
    }

    /// Moves a container being launched on: to verifying once launched.
    pub(super) async fn launching(
        &self,
        target: &RolloutTarget,
        (operation_id, since): (Uuid, chrono::DateTime<Utc>),
    ) -> Result<(), DriveError> {
        let again = self.ask_launch(target, operation_id);
        match self.asked(operation_id, again).await? {
            Asked::Succeeded(Some(container_id), asked_at) => {
                // Its proxy connects after the launch was asked for, never before.
                let step = Step::Verifying {
                    container_id,
                    since: asked_at,
                };
                self.advance(target, step).await.map(|_| ())
            }
            Asked::Succeeded(None, _) => {
                let reason = "the launch named no container".to_owned();
                self.fail_and_put_back(target, reason).await
            }
            Asked::Failed(error) => {
                let reason = format!("launching the replacement failed: {error}");
                self.fail_and_put_back(target, reason).await
            }
            Asked::Waiting if Utc::now() - since > self.timeout => {
                let reason = "launching the replacement did not end in time".to_owned();
                self.fail_and_put_back(target, reason).await
            }
            Asked::Waiting => Ok(()),
        }
    }
}

//! The rollouts' driver: the replica holding the `rollouts` lease moves every running rollout on,
//! a few times a second, from what the read models say of its containers' operations, their
//! containers' health and their proxies' sync status.
//!
//! One container of a rollout goes: the old one drained and removed (an operation on its VM), its
//! replacement launched with the same node id, admin port, limits and labels and the new image
//! (another operation), then verified: healthy, and its proxy connected since the launch and
//! SYNCED. A failed operation, an unhealthy or exited replacement, a NACK, or no success within
//! the health timeout fails the rollout, naming the container, its VM and the words of Docker,
//! Envoy or the gate; the containers not started are left as they were. Each step is an event of
//! the rollout recorded after the operation it names, so a driver that stops (or a control
//! plane killed) is followed by one that goes on from the log.

use std::time::Duration;

mod gate;
mod replace;

use gate::Verdict;

use chrono::Utc;
use efms_commands::fleet::Fleet;
use efms_commands::lease::Lease;
use efms_commands::CommandError;
use efms_domain::fleet::rollout::{
    Rollout, RolloutCommand, RolloutFailure, RolloutState, RolloutTarget, Step, VersionCheck,
};
use efms_projections::fleet::rollouts::running;
use tokio::sync::watch;
use uuid::Uuid;

/// How often the driver looks at the running rollouts.
pub const ROLLOUT_TICK: Duration = Duration::from_millis(500);

/// Drives the rollouts while this replica holds the lease, until `stopping`.
pub(crate) fn spawn(fleet: Fleet, mut stopping: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let lease = Lease::new(fleet.pool().clone(), "rollouts", ROLLOUT_TICK * 6);
        loop {
            tokio::select! {
                () = tokio::time::sleep(ROLLOUT_TICK) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            let rollouts = match running(fleet.pool()).await {
                Ok(rollouts) => rollouts,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the running rollouts");
                    continue;
                }
            };
            for (tenant_id, rollout_id) in rollouts {
                // Claimed again before each rollout: a round never outlives the lease.
                match lease.claim().await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(error) => {
                        tracing::warn!(%error, "the rollouts' lease cannot be claimed");
                        break;
                    }
                }
                if let Err(error) = drive(&fleet, tenant_id, rollout_id).await {
                    tracing::warn!(%rollout_id, %error, "a rollout could not move on");
                }
            }
        }
    });
}

/// One round of one rollout.
async fn drive(fleet: &Fleet, tenant_id: Uuid, rollout_id: Uuid) -> Result<(), DriveError> {
    let rollout = fleet
        .read_rollout(tenant_id, rollout_id)
        .await
        .map_err(command)?;
    let (Some(spec), Some(state)) = (rollout.spec(), rollout.state()) else {
        return Ok(());
    };
    let driver = Driver {
        fleet,
        tenant_id,
        rollout_id,
        actor: format!("rollout:{rollout_id}"),
        ended: state.ended(),
        image: spec.image.clone(),
        timeout: millis(spec.health_timeout_ms),
    };
    driver.step(&rollout).await
}

fn millis(ms: u64) -> chrono::TimeDelta {
    chrono::TimeDelta::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// What stopped a round of one rollout (it is tried again at the next tick).
#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Command(String),
}

// Taken by value to be passed to `map_err` as it is.
#[allow(clippy::needless_pass_by_value)]
fn command<E: std::error::Error>(error: CommandError<E>) -> DriveError {
    DriveError::Command(error.to_string())
}

/// One round of one rollout.
struct Driver<'a> {
    fleet: &'a Fleet,
    tenant_id: Uuid,
    rollout_id: Uuid,
    actor: String,
    /// It ended: only containers being removed or launched still move (through their
    /// replacement, or back).
    ended: bool,
    /// The new image.
    image: String,
    /// How long an operation, or a replacement's health and sync, may take.
    timeout: chrono::TimeDelta,
}

impl Driver<'_> {
    async fn step(&self, rollout: &Rollout) -> Result<(), DriveError> {
        for target in rollout.targets() {
            let moved = match &target.step {
                Step::Removing { operation_id, at } => {
                    self.removing(target, (*operation_id, *at)).await
                }
                Step::Launching { operation_id, at } => {
                    self.launching(target, (*operation_id, *at)).await
                }
                _ if self.ended => Ok(()),
                Step::Verifying {
                    container_id,
                    since,
                } => self.verifying(target, container_id, *since).await,
                Step::Pending | Step::Done { .. } => Ok(()),
            };
            // One container's trouble does not hold the others.
            if let Err(error) = moved {
                tracing::warn!(rollout = %self.rollout_id, node = %target.node_id, %error,
                    "a container of a rollout could not move on");
            }
        }
        if self.ended {
            return Ok(());
        }
        let rollout = self
            .fleet
            .read_rollout(self.tenant_id, self.rollout_id)
            .await
            .map_err(command)?;
        if rollout.state() == Some(RolloutState::Running) {
            match rollout.check().clone() {
                VersionCheck::Unchecked => return self.probe(&rollout).await,
                VersionCheck::Probing { operation_id } => {
                    return self.probed(&rollout, operation_id).await;
                }
                VersionCheck::Passed { .. } => {}
            }
        }
        let pause = millis(rollout.spec().map_or(0, |spec| spec.pause_between_ms));
        if rollout
            .last_done_at()
            .is_some_and(|at| Utc::now() - at < pause)
        {
            return Ok(());
        }
        for target in rollout.to_start() {
            self.start(target).await?;
        }
        Ok(())
    }

    async fn verifying(
        &self,
        target: &RolloutTarget,
        container_id: &String,
        since: chrono::DateTime<Utc>,
    ) -> Result<(), DriveError> {
        match self.verdict(target, container_id, since).await? {
            Verdict::Done => {
                let done = Step::Done {
                    container_id: container_id.clone(),
                    at: Utc::now(),
                };
                self.advance(target, done).await.map(|_| ())
            }
            Verdict::Failed(reason) => self.fail(target, Some(container_id), reason).await,
            Verdict::Wait if Utc::now() - since > self.timeout => {
                let reason = format!(
                    "not healthy and SYNCED within {} s",
                    self.timeout.num_seconds()
                );
                self.fail(target, Some(container_id), reason).await
            }
            Verdict::Wait => Ok(()),
        }
    }

    /// Records `target`'s new step; `false` when the rollout refused it (paused or ended
    /// meanwhile): then nothing is to be asked for.
    async fn advance(&self, target: &RolloutTarget, step: Step) -> Result<bool, DriveError> {
        let advance = RolloutCommand::Advance {
            node_id: target.node_id.clone(),
            step,
        };
        match self
            .fleet
            .rollout(self.tenant_id, self.rollout_id, advance, &self.actor)
            .await
        {
            Ok(_) => Ok(true),
            Err(CommandError::Rejected(refused)) => {
                tracing::info!(rollout = %self.rollout_id, node = %target.node_id, %refused,
                    "a step was not taken");
                Ok(false)
            }
            Err(other) => Err(command(other)),
        }
    }

    async fn fail(
        &self,
        target: &RolloutTarget,
        container_id: Option<&String>,
        reason: String,
    ) -> Result<(), DriveError> {
        tracing::warn!(rollout = %self.rollout_id, node = %target.node_id, %reason, "rollout failed");
        let failure = RolloutFailure {
            node_id: target.node_id.clone(),
            vm: target.vm.clone(),
            container_id: container_id.cloned(),
            reason,
        };
        self.fleet
            .rollout(
                self.tenant_id,
                self.rollout_id,
                RolloutCommand::Fail(failure),
                &self.actor,
            )
            .await
            .map_err(command)?;
        Ok(())
    }
}

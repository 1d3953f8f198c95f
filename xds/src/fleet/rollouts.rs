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

use chrono::Utc;
use efms_commands::fleet::Fleet;
use efms_commands::lease::Lease;
use efms_commands::CommandError;
use efms_domain::fleet::rollout::{
    Rollout, RolloutCommand, RolloutFailure, RolloutState, RolloutTarget, Step, VersionCheck,
};
use efms_domain::fleet::{ContainerOperation, ContainerState, Health, VmError};
use efms_projections::fleet::operations::get_operation;
use efms_projections::fleet::queries as read;
use efms_projections::fleet::rollouts::running;
use efms_projections::proxies::{self as status, SyncState};
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
            match lease.claim().await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::warn!(%error, "the rollouts' lease cannot be claimed");
                    continue;
                }
            }
            let rollouts = match running(fleet.pool()).await {
                Ok(rollouts) => rollouts,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the running rollouts");
                    continue;
                }
            };
            for (tenant_id, rollout_id) in rollouts {
                let driver = Driver {
                    fleet: &fleet,
                    tenant_id,
                    rollout_id,
                    actor: format!("rollout:{rollout_id}"),
                };
                if let Err(error) = driver.step().await {
                    tracing::warn!(%rollout_id, %error, "a rollout could not move on");
                }
            }
        }
    });
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
}

/// What the gate makes of a replacement now.
enum Verdict {
    Wait,
    Done,
    Failed(String),
}

impl Driver<'_> {
    async fn step(&self) -> Result<(), DriveError> {
        let rollout = self
            .fleet
            .read_rollout(self.tenant_id, self.rollout_id)
            .await
            .map_err(command)?;
        let Some(spec) = rollout.spec().cloned() else {
            return Ok(());
        };
        for target in rollout.targets() {
            match &target.step {
                Step::Removing { operation_id } => self.removed(target, *operation_id).await?,
                Step::Launching { operation_id } => {
                    self.launched(target, *operation_id).await?;
                }
                Step::Verifying {
                    container_id,
                    since,
                } => {
                    let timeout = chrono::TimeDelta::milliseconds(
                        i64::try_from(spec.health_timeout_ms).unwrap_or(i64::MAX),
                    );
                    let verdict = self.verdict(target, container_id, *since).await?;
                    match verdict {
                        Verdict::Done => {
                            let done = Step::Done {
                                container_id: container_id.clone(),
                                at: Utc::now(),
                            };
                            self.advance(target, done).await?;
                        }
                        Verdict::Failed(reason) => {
                            self.fail(target, Some(container_id), reason).await?;
                        }
                        Verdict::Wait if Utc::now() - *since > timeout => {
                            let reason = format!(
                                "not healthy and SYNCED within {} s",
                                spec.health_timeout_ms / 1000
                            );
                            self.fail(target, Some(container_id), reason).await?;
                        }
                        Verdict::Wait => {}
                    }
                }
                Step::Pending | Step::Done { .. } => {}
            }
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
        let pause = chrono::TimeDelta::milliseconds(
            i64::try_from(spec.pause_between_ms).unwrap_or(i64::MAX),
        );
        if rollout
            .last_done_at()
            .is_some_and(|at| Utc::now() - at < pause)
        {
            return Ok(());
        }
        for target in rollout.to_start() {
            self.remove(target).await?;
        }
        Ok(())
    }

    /// Asks the first container's VM which Envoy the new image holds.
    async fn probe(&self, rollout: &Rollout) -> Result<(), DriveError> {
        let (Some(spec), Some(first)) = (rollout.spec(), rollout.targets().first()) else {
            return Ok(());
        };
        let operation_id = Uuid::now_v7();
        let probe = ContainerOperation::Probe {
            image: spec.image.clone(),
        };
        let asked = self
            .fleet
            .operate(
                self.tenant_id,
                &first.vm,
                (operation_id, probe),
                &self.actor,
            )
            .await;
        match asked {
            Ok(_) => {
                let probing = RolloutCommand::Probe { operation_id };
                self.fleet
                    .rollout(self.tenant_id, self.rollout_id, probing, &self.actor)
                    .await
                    .map_err(command)?;
                Ok(())
            }
            Err(CommandError::Rejected(error)) => {
                let reason = format!("cannot probe the new image: {error}");
                self.fail(first, None, reason).await
            }
            Err(other) => Err(command(other)),
        }
    }

    /// Passes the rollout once the probe told the new Envoy's version, if a proxy of the tenant
    /// has accepted configuration with it (or the rollout is forced).
    async fn probed(&self, rollout: &Rollout, operation_id: Uuid) -> Result<(), DriveError> {
        let (Some(spec), Some(first)) = (rollout.spec(), rollout.targets().first()) else {
            return Ok(());
        };
        let pool = self.fleet.pool();
        let Some(row) = get_operation(pool, self.tenant_id, operation_id).await? else {
            return Ok(());
        };
        let version = match (row.state.as_str(), row.envoy_version, row.error) {
            ("succeeded", Some(version), _) => version,
            ("failed", _, error) => {
                let reason = format!(
                    "probing the new image failed: {}",
                    error.unwrap_or_default()
                );
                return self.fail(first, None, reason).await;
            }
            _ => return Ok(()),
        };
        let accepted = status::accepted_versions(pool, self.tenant_id).await?;
        if !spec.force && !accepted.contains(&version) {
            let reason = format!(
                "no proxy of the tenant has accepted configuration with Envoy {version} (they \
                 run {}): start the rollout with \"force\": true to roll out anyway",
                if accepted.is_empty() {
                    "none".to_owned()
                } else {
                    accepted.join(", ")
                }
            );
            return self.fail(first, None, reason).await;
        }
        let pass = RolloutCommand::Pass {
            envoy_version: version,
        };
        self.fleet
            .rollout(self.tenant_id, self.rollout_id, pass, &self.actor)
            .await
            .map_err(command)?;
        Ok(())
    }

    async fn advance(&self, target: &RolloutTarget, step: Step) -> Result<(), DriveError> {
        let advance = RolloutCommand::Advance {
            node_id: target.node_id.clone(),
            step,
        };
        self.fleet
            .rollout(self.tenant_id, self.rollout_id, advance, &self.actor)
            .await
            .map_err(command)?;
        Ok(())
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

    /// Starts a container's replacement: its old container drained and removed.
    async fn remove(&self, target: &RolloutTarget) -> Result<(), DriveError> {
        let operation_id = Uuid::now_v7();
        let removal = ContainerOperation::Remove {
            container_id: target.container_id.clone(),
        };
        let asked = self
            .fleet
            .operate(
                self.tenant_id,
                &target.vm,
                (operation_id, removal),
                &self.actor,
            )
            .await;
        match asked {
            Ok(_) => {
                let step = Step::Removing { operation_id };
                self.advance(target, step).await
            }
            // Gone already (removed before a restart of the driver recorded it): launch.
            Err(CommandError::Rejected(VmError::UnknownContainer(_))) => self.launch(target).await,
            Err(CommandError::Rejected(error)) => {
                let reason = format!("cannot remove the old container: {error}");
                self.fail(target, Some(&target.container_id), reason).await
            }
            Err(other) => Err(command(other)),
        }
    }

    async fn removed(&self, target: &RolloutTarget, operation_id: Uuid) -> Result<(), DriveError> {
        let Some(row) = get_operation(self.fleet.pool(), self.tenant_id, operation_id).await?
        else {
            return Ok(());
        };
        match (row.state.as_str(), row.error) {
            ("succeeded", _) => self.launch(target).await,
            ("failed", error) => {
                let reason = format!(
                    "removing the old container failed: {}",
                    error.unwrap_or_default()
                );
                self.fail(target, Some(&target.container_id), reason).await
            }
            _ => Ok(()),
        }
    }

    /// Launches a container's replacement: its node id, port, limits and labels, the new image.
    async fn launch(&self, target: &RolloutTarget) -> Result<(), DriveError> {
        let rollout = self
            .fleet
            .read_rollout(self.tenant_id, self.rollout_id)
            .await
            .map_err(command)?;
        let Some(spec) = rollout.spec() else {
            return Ok(());
        };
        let mut launch = target.launch.clone();
        launch.image.clone_from(&spec.image);
        let operation_id = Uuid::now_v7();
        let operation = ContainerOperation::Launch {
            node_id: target.node_id.clone(),
            spec: launch,
        };
        let asked = self
            .fleet
            .operate(
                self.tenant_id,
                &target.vm,
                (operation_id, operation),
                &self.actor,
            )
            .await;
        match asked {
            Ok(_) => self.advance(target, Step::Launching { operation_id }).await,
            // Launched before a restart of the driver recorded it: that container is verified.
            Err(CommandError::Rejected(VmError::NodeIdTaken(_))) => {
                let pool = self.fleet.pool();
                let row = read::container_of_proxy(pool, self.tenant_id, &target.node_id).await?;
                match row.filter(|row| row.gone_at.is_none()) {
                    Some(row) => {
                        let created = row.container.created_at.unwrap_or(row.first_seen_at);
                        let step = Step::Verifying {
                            since: created - chrono::TimeDelta::seconds(1),
                            container_id: row.container.id,
                        };
                        self.advance(target, step).await
                    }
                    // Its launch is still under way: tried again at the next tick.
                    None => Ok(()),
                }
            }
            Err(CommandError::Rejected(error)) => {
                let reason = format!("cannot launch the replacement: {error}");
                self.fail(target, None, reason).await
            }
            Err(other) => Err(command(other)),
        }
    }

    async fn launched(&self, target: &RolloutTarget, operation_id: Uuid) -> Result<(), DriveError> {
        let Some(row) = get_operation(self.fleet.pool(), self.tenant_id, operation_id).await?
        else {
            return Ok(());
        };
        match (row.state.as_str(), row.container_id, row.error) {
            // Its proxy connects after the launch was asked for, never before.
            ("succeeded", Some(container_id), _) => {
                let step = Step::Verifying {
                    container_id,
                    since: row.requested_at,
                };
                self.advance(target, step).await
            }
            ("failed", _, error) => {
                let reason = format!(
                    "launching the replacement failed: {}",
                    error.unwrap_or_default()
                );
                self.fail(target, None, reason).await
            }
            _ => Ok(()),
        }
    }

    /// Whether the replacement is healthy and its proxy connected since `since` and SYNCED.
    async fn verdict(
        &self,
        target: &RolloutTarget,
        container_id: &str,
        since: chrono::DateTime<Utc>,
    ) -> Result<Verdict, DriveError> {
        let pool = self.fleet.pool();
        let mut rows = read::find_containers(pool, self.tenant_id, container_id).await?;
        let Some(row) = rows.pop() else {
            return Ok(Verdict::Wait);
        };
        let container = &row.container;
        if row.gone_at.is_some()
            || matches!(
                container.state,
                ContainerState::Exited | ContainerState::Dead | ContainerState::Gone
            )
        {
            let exit = container
                .exit_code
                .map(|code| format!(" (exit code {code})"))
                .unwrap_or_default();
            return Ok(Verdict::Failed(format!(
                "the replacement is {}{exit}",
                container.state.as_str()
            )));
        }
        if container.health == Health::Unhealthy {
            return Ok(Verdict::Failed("the replacement is unhealthy".to_owned()));
        }
        let node = [target.node_id.clone()];
        let types = status::type_statuses(pool, self.tenant_id, &node).await?;
        let nack = types.iter().find(|(_, t)| {
            t.state() == SyncState::Nacked && t.nacked_at.is_some_and(|at| at >= since)
        });
        if let Some((_, refused)) = nack {
            return Ok(Verdict::Failed(format!(
                "its proxy NACKed {}: {}",
                refused.type_url,
                refused.error_detail.clone().unwrap_or_default()
            )));
        }
        let Some(proxy) = status::get_proxy(pool, self.tenant_id, &target.node_id).await? else {
            return Ok(Verdict::Wait);
        };
        let states: Vec<SyncState> = types.iter().map(|(_, t)| t.state()).collect();
        let fresh = proxy.streams > 0 && proxy.connected_at >= since;
        let synced = SyncState::overall(&states) == SyncState::Synced;
        Ok(if fresh && synced && container.health == Health::Healthy {
            Verdict::Done
        } else {
            Verdict::Wait
        })
    }
}

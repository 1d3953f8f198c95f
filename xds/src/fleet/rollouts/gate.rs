//! The gates of a rollout: the new image's Envoy version checked before anything is replaced,
//! and each replacement found healthy, its proxy connected since its launch and SYNCED.

use chrono::Utc;
use efms_commands::CommandError;
use efms_domain::fleet::rollout::{Rollout, RolloutCommand, RolloutTarget};
use efms_domain::fleet::{ContainerOperation, ContainerState, Health};
use efms_projections::fleet::operations::get_operation;
use efms_projections::fleet::queries as read;
use efms_projections::proxies::{self as status, SyncState};
use uuid::Uuid;

use super::{command, DriveError, Driver};

/// What the gate makes of a replacement now.
pub(super) enum Verdict {
    Wait,
    Done,
    Failed(String),
}

impl Driver<'_> {
    /// Asks the first container's VM which Envoy the new image holds.
    pub(super) async fn probe(&self, rollout: &Rollout) -> Result<(), DriveError> {
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
    pub(super) async fn probed(
        &self,
        rollout: &Rollout,
        operation_id: Uuid,
    ) -> Result<(), DriveError> {
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
            _ if Utc::now() - row.requested_at > self.timeout => {
                let reason = "probing the new image did not end in time".to_owned();
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

    /// Whether the replacement is healthy and its proxy connected since `since` and SYNCED.
    pub(super) async fn verdict(
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
        let fresh = proxy.streams > 0 && proxy.connected_at >= since;
        // The node id's status rows are the old container's until the new one's stream writes
        // them: the types sent since the launch must all have been accepted since then.
        let sent_since: Vec<_> = types
            .iter()
            .filter(|(_, t)| t.sent_at.is_some_and(|at| at >= since))
            .collect();
        let synced = !sent_since.is_empty()
            && sent_since.iter().all(|(_, t)| {
                t.state() == SyncState::Synced && t.acked_at.is_some_and(|at| at >= since)
            });
        Ok(if fresh && synced && container.health == Health::Healthy {
            Verdict::Done
        } else {
            Verdict::Wait
        })
    }
}

//! What a stream sends its agent besides answers: the VM's pending operations as orders, and
//! what it makes of the outcome the agent reports.

use efms_commands::fleet::operations::PendingOperation;
use efms_domain::fleet::reports::ReportFault;
use efms_domain::fleet::{ContainerOperation, OperationOutcome, VmCommand};
use efms_fleet_proto::{order::Action, server_message, Launch, Order, OrderDone, ServerMessage};
use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

use super::{convert, stored_or_status, Agent, FleetServer, Outcome};
use crate::fleet::BootstrapRequest;
use efms_projections::fleet::queries as read;

/// The longest failure text kept from an agent's report.
const MAX_ERROR: usize = 4_096;
/// How many launches' bootstraps a replica keeps until their operations end.
const MINTED_KEPT: usize = 1_024;

impl FleetServer {
    /// Sends the VM's pending operations this stream has not sent yet.
    pub(super) async fn send_orders(
        &self,
        agent: &mut Agent,
        sender: &mpsc::Sender<Result<ServerMessage, Status>>,
    ) -> Result<(), Status> {
        let fleet = &self.inner.fleet;
        let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.clone());
        let pending = fleet
            .pending_operations(tenant_id, &vm)
            .await
            .map_err(stored_or_status)?;
        agent
            .ordered
            .retain(|id| pending.iter().any(|p| p.operation_id == *id));
        for operation in pending {
            let operation_id = operation.operation_id;
            if agent.ordered.contains(&operation_id) {
                continue;
            }
            let action = match self.action(agent, operation).await {
                Ok(action) => action,
                Err(error) => {
                    tracing::warn!(%vm, operation = %operation_id, %error, "operation failed");
                    let outcome = OperationOutcome::Failed { error };
                    let finish = VmCommand::Finish {
                        operation_id,
                        outcome,
                    };
                    fleet
                        .report(tenant_id, &vm, finish)
                        .await
                        .map_err(stored_or_status)?;
                    continue;
                }
            };
            let order = Order {
                operation_id: operation_id.to_string(),
                action: Some(action),
            };
            if !self
                .send_or_cut(sender, server_message::Body::Order(order))
                .await?
            {
                return Err(Status::cancelled("the agent is gone"));
            }
            tracing::info!(%vm, operation = %operation_id, "order sent to the agent");
            agent.ordered.insert(operation_id);
        }
        Ok(())
    }

    /// The order of `pending`; a launch's bootstrap is minted now, for the agent alone (it is
    /// never in the log).
    async fn action(&self, agent: &Agent, pending: PendingOperation) -> Result<Action, String> {
        Ok(match pending.operation {
            ContainerOperation::Launch { node_id, spec } => {
                let bootstraps = self
                    .inner
                    .bootstraps
                    .get()
                    .ok_or("this control plane cannot mint bootstraps")?;
                let request = BootstrapRequest {
                    tenant_id: agent.joined.tenant_id,
                    tenant: agent.joined.tenant.clone(),
                    group: spec.group.clone(),
                    node_id: node_id.clone(),
                    admin_port: spec.admin_port,
                    requested_by: pending.requested_by.clone(),
                };
                let bootstrap = self
                    .minted(pending.operation_id, || bootstraps.bootstrap(request))
                    .await?;
                Action::Launch(Launch {
                    node_id,
                    group: spec.group,
                    image: spec.image,
                    memory_bytes: spec.memory_bytes,
                    cpus: spec.cpus,
                    admin_port: u32::from(spec.admin_port),
                    env: spec.env.into_iter().collect(),
                    labels: spec.labels.into_iter().collect(),
                    bootstrap,
                })
            }
            ContainerOperation::Restart { container_id } => Action::Restart(container_id),
            ContainerOperation::Stop { container_id } => Action::Stop(container_id),
            ContainerOperation::Start { container_id } => Action::Start(container_id),
            ContainerOperation::Remove { container_id } => Action::Remove(container_id),
            ContainerOperation::Probe { image } => Action::Probe(image),
        })
    }

    /// The bootstrap of a launch, minted once per operation by this replica (a resend after a
    /// reconnection sends the same one, and mints no second token).
    async fn minted<F>(
        &self,
        operation_id: Uuid,
        mint: impl FnOnce() -> F,
    ) -> Result<String, String>
    where
        F: std::future::Future<Output = Result<String, String>>,
    {
        if let Some(bootstrap) = self
            .inner
            .minted
            .lock()
            .expect("minted lock")
            .get(&operation_id)
        {
            return Ok(bootstrap.clone());
        }
        let bootstrap = mint().await?;
        let mut minted = self.inner.minted.lock().expect("minted lock");
        if minted.len() >= MINTED_KEPT {
            minted.clear();
        }
        minted.insert(operation_id, bootstrap.clone());
        Ok(bootstrap)
    }

    /// Records how an order ended, as the agent reports it. A report that names its operation
    /// but not a proper outcome is refused and fails the operation, which would otherwise wait
    /// for an outcome that will not come again.
    pub(super) async fn finish(
        &self,
        agent: &mut Agent,
        done: OrderDone,
    ) -> Result<Outcome, Status> {
        let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.as_str());
        let (outcome, refused) = match checked(&done) {
            Ok(outcome) => (outcome, None),
            Err(fault) => {
                let Ok(operation_id) = done.operation_id.parse::<Uuid>() else {
                    return Ok(Outcome::Refused(fault));
                };
                let error = format!(
                    "the agent's report was refused: {}: {}",
                    fault.field, fault.problem
                );
                (
                    (operation_id, OperationOutcome::Failed { error }),
                    Some(fault),
                )
            }
        };
        self.inner
            .minted
            .lock()
            .expect("minted lock")
            .remove(&outcome.0);
        let removed = self.removed_container(agent, &outcome).await?;
        self.inner
            .fleet
            .report(
                tenant_id,
                vm,
                VmCommand::Finish {
                    operation_id: outcome.0,
                    outcome: outcome.1,
                },
            )
            .await
            .map_err(stored_or_status)?;
        agent.ordered.remove(&outcome.0);
        if let Some(container_id) = removed {
            self.retire(agent, &container_id).await;
        }
        Ok(match refused {
            Some(fault) => Outcome::Refused(fault),
            None => Outcome::Stored {
                last_event_nanos: None,
                recorded: false,
            },
        })
    }
}

impl FleetServer {
    /// The container a pending removal `outcome` reports removed.
    async fn removed_container(
        &self,
        agent: &Agent,
        (operation_id, outcome): &(Uuid, OperationOutcome),
    ) -> Result<Option<String>, Status> {
        if !matches!(outcome, OperationOutcome::Succeeded { .. }) {
            return Ok(None);
        }
        let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.as_str());
        let pending = self
            .inner
            .fleet
            .pending_operations(tenant_id, vm)
            .await
            .map_err(stored_or_status)?;
        Ok(pending.into_iter().find_map(|p| match p.operation {
            ContainerOperation::Remove { container_id } if p.operation_id == *operation_id => {
                Some(container_id)
            }
            _ => None,
        }))
    }

    /// Revokes the proxy tokens of the proxy a removed container was: a token must not outlive
    /// its container (a replacement gets its own). Failures are logged: the removal stands.
    async fn retire(&self, agent: &Agent, container_id: &str) {
        let tenant_id = agent.joined.tenant_id;
        let pool = self.inner.fleet.pool();
        let node_id = match read::find_containers(pool, tenant_id, container_id).await {
            Ok(mut rows) => rows.pop().and_then(|row| row.container.node_id),
            Err(error) => {
                tracing::warn!(%error, container = %container_id, "cannot find a removed container's proxy");
                None
            }
        };
        let (Some(node_id), Some(bootstraps)) = (node_id, self.inner.bootstraps.get()) else {
            return;
        };
        match bootstraps.retire(tenant_id, node_id.clone()).await {
            Ok(revoked) => {
                tracing::info!(node = %node_id, revoked, "a removed proxy's tokens revoked");
            }
            Err(error) => {
                tracing::warn!(node = %node_id, %error, "cannot revoke a removed proxy's tokens");
            }
        }
    }
}

/// The operation and outcome `done` reports, or the field that is wrong.
fn checked(done: &OrderDone) -> Result<(Uuid, OperationOutcome), ReportFault> {
    let operation_id = done.operation_id.parse::<Uuid>().map_err(|_| ReportFault {
        field: "done.operation_id".into(),
        problem: "not an operation id".into(),
    })?;
    if !done.error.is_empty() {
        // The engine's words, without the control characters a record cannot hold.
        let mut error: String = done
            .error
            .chars()
            .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
            .collect();
        if error.len() > MAX_ERROR {
            let mut end = MAX_ERROR;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
        }
        return Ok((operation_id, OperationOutcome::Failed { error }));
    }
    if !done.envoy_version.is_empty() {
        convert::text("done.envoy_version", &done.envoy_version, 64)?;
        convert::text("done.image_id", &done.image_id, 128)?;
        return Ok((
            operation_id,
            OperationOutcome::Probed {
                image_id: done.image_id.clone(),
                envoy_version: done.envoy_version.clone(),
            },
        ));
    }
    let full_id = done.container_id.len() == 64
        && done
            .container_id
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if !full_id {
        return Err(ReportFault {
            field: "done.container_id".into(),
            problem: "a success names the container's full id (64 hexadecimal digits)".into(),
        });
    }
    Ok((
        operation_id,
        OperationOutcome::Succeeded {
            container_id: done.container_id.clone(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_names_its_operation_and_a_success_its_full_container_id() {
        let id = Uuid::from_u128(5).to_string();
        let done = |container: &str, error: &str| OrderDone {
            operation_id: id.clone(),
            container_id: container.into(),
            error: error.into(),
            ..OrderDone::default()
        };
        assert!(matches!(
            checked(&done(&"a".repeat(64), "")),
            Ok((_, OperationOutcome::Succeeded { .. }))
        ));
        assert_eq!(
            checked(&done("abc", "")).unwrap_err().field,
            "done.container_id"
        );
        assert!(matches!(
            checked(&done("", &"é".repeat(5000))),
            Ok((_, OperationOutcome::Failed { error })) if error.len() <= MAX_ERROR
        ));
        assert!(matches!(
            checked(&done("", "no\0such\u{1b}image")),
            Ok((_, OperationOutcome::Failed { error })) if error == "no such image"
        ));
        let probed = OrderDone {
            envoy_version: "1.40.0".into(),
            image_id: "sha256:1".into(),
            ..done("", "")
        };
        assert!(matches!(
            checked(&probed),
            Ok((_, OperationOutcome::Probed { envoy_version, .. })) if envoy_version == "1.40.0"
        ));
        let mut bad = done("", "x");
        bad.operation_id = "nope".into();
        assert_eq!(checked(&bad).unwrap_err().field, "done.operation_id");
    }
}

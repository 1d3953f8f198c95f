//! Operations on a VM's containers (launch, restart, stop, start, remove): asked through the API
//! as a command on the VM, told to the replica holding the VM's agent stream by a notification
//! ([`ORDERS_CHANNEL`]), finished when the agent reports the outcome.

use sqlx::PgPool;
use uuid::Uuid;

use efms_domain::fleet::{ContainerOperation, Vm, VmCommand};

use super::{Fleet, FleetError};
use crate::Position;

/// The channel that tells every replica a VM has an operation to send to its agent; the payload
/// is [`orders_payload`].
pub const ORDERS_CHANNEL: &str = "efms_vm_orders";

/// An operation asked for and not finished.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingOperation {
    /// Its id (its job's).
    pub operation_id: Uuid,
    /// What.
    pub operation: ContainerOperation,
    /// Who asked.
    pub requested_by: String,
}

/// The notification's payload naming a VM: its tenant's id and its name.
pub fn orders_payload(tenant_id: Uuid, vm: &str) -> String {
    format!("{tenant_id} {vm}")
}

/// The VM a notification names, if it is one.
pub fn parse_orders_payload(payload: &str) -> Option<(Uuid, &str)> {
    let (tenant, vm) = payload.split_once(' ')?;
    Some((tenant.parse().ok()?, vm))
}

impl Fleet {
    /// Asks the VM's agent to carry out `operation` as `operation_id` on behalf of `actor`, and
    /// tells the replicas so; refused unless the VM is ready (see [`VmCommand::Operate`]).
    pub async fn operate(
        &self,
        tenant_id: Uuid,
        vm: &str,
        (operation_id, operation): (Uuid, ContainerOperation),
        actor: &str,
    ) -> Result<Option<Position>, FleetError> {
        let command = VmCommand::Operate {
            operation_id,
            operation,
            requested_by: actor.to_owned(),
        };
        let position = self.execute(tenant_id, vm, command, actor).await?;
        // Recorded: a stream that is not told now reads it when it next opens.
        if let Err(error) = notify(&self.pool, tenant_id, vm).await {
            tracing::warn!(%error, %vm, operation = %operation_id,
                "could not notify the replicas of an operation");
        }
        Ok(position)
    }

    /// The VM's operations not finished yet, oldest first.
    pub async fn pending_operations(
        &self,
        tenant_id: Uuid,
        vm: &str,
    ) -> Result<Vec<PendingOperation>, FleetError> {
        self.bus
            .read::<Vm, _>(tenant_id, vm, |vm| {
                vm.pending_operations()
                    .map(|(operation_id, operation, by)| PendingOperation {
                        operation_id,
                        operation: operation.clone(),
                        requested_by: by.to_owned(),
                    })
                    .collect()
            })
            .await
    }
}

/// Tells every replica that the VM has an operation for its agent.
async fn notify(pool: &PgPool, tenant_id: Uuid, vm: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(ORDERS_CHANNEL)
        .bind(orders_payload(tenant_id, vm))
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_its_vm_and_nothing_else_parses() {
        let tenant = Uuid::from_u128(7);
        let payload = orders_payload(tenant, "vm-1");
        assert_eq!(parse_orders_payload(&payload), Some((tenant, "vm-1")));
        assert_eq!(parse_orders_payload("vm-1"), None);
        assert_eq!(parse_orders_payload("not-a-uuid vm-1"), None);
    }
}

//! The fleet's read models (ADR 0011): `vms`, `containers` and `container_history`, kept from the
//! VM streams of the log by [`FleetProjection`], and the reads the API answers from them and from
//! the presence and sample tables ([`queries`]).

mod container_writes;
pub use container_writes::{BUMP_VERSIONS, COUNT_LIVE};
pub mod operations;
pub mod queries;
pub mod rollouts;

use efms_commands::RecordedEvent;
use efms_domain::fleet::{Vm, VmEvent, VmPlacement, VmState};
use sqlx::PgConnection;
use uuid::Uuid;

use cqrs_es::Aggregate as _;

use container_writes::ContainerWrites;

use crate::projector::{payload_of, Projection, ProjectionError};

/// Keeps the fleet's read models from the VM streams.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetProjection;

impl Projection for FleetProjection {
    const NAME: &'static str = "fleet";
    const AGGREGATE_TYPE: &'static str = Vm::TYPE;
    const TABLES: &'static [&'static str] = &[
        "container_operations",
        "container_history",
        "containers",
        "vms",
    ];
    type Replaying = ();

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        self.apply_all(tx, std::slice::from_ref(event)).await
    }

    /// Container events are written a run at a time ([`container_writes`]); the VM's own
    /// events (rare) one by one, after the run before them.
    async fn apply_all(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut decoded = Vec::with_capacity(events.len());
        for event in events {
            if let Some(payload) = payload_of::<VmEvent>(event, Vm::TYPE)? {
                decoded.push((event, payload));
            }
        }
        let mut writes = ContainerWrites::load(tx, &decoded).await?;
        for (event, payload) in decoded {
            if writes.take(event, &payload)? {
                continue;
            }
            writes.flush(tx).await?;
            apply_vm_event(tx, event, payload).await?;
        }
        writes.flush(tx).await
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query!("DELETE FROM container_operations")
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM container_history")
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM containers")
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM vms").execute(&mut *tx).await?;
        Ok(())
    }

    async fn reset_tenant(
        &self,
        tx: &mut PgConnection,
        tenant_id: uuid::Uuid,
    ) -> Result<(), ProjectionError> {
        sqlx::query!(
            "DELETE FROM container_operations WHERE tenant_id = $1",
            tenant_id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            "DELETE FROM container_history WHERE tenant_id = $1",
            tenant_id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("DELETE FROM containers WHERE tenant_id = $1", tenant_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query!("DELETE FROM vms WHERE tenant_id = $1", tenant_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// Applies one of the VM's own events (not a container's).
async fn apply_vm_event(
    tx: &mut PgConnection,
    event: &RecordedEvent,
    payload: VmEvent,
) -> Result<(), ProjectionError> {
    let (tenant, vm) = (event.tenant_id, event.aggregate_id.as_str());
    if let VmEvent::Registered { name, placement } = &payload {
        return register(tx, event, name.as_str(), placement).await;
    }
    sqlx::query!(
        "UPDATE vms SET version = $3, updated_at = $4 WHERE tenant_id = $1 AND name = $2",
        tenant,
        vm,
        event.sequence,
        event.recorded_at,
    )
    .execute(&mut *tx)
    .await?;
    match payload {
        VmEvent::Placed { placement } => place(tx, (tenant, vm), &placement).await?,
        VmEvent::FactsChanged { facts } => {
            sqlx::query!(
                "UPDATE vms SET facts = $3 WHERE tenant_id = $1 AND name = $2",
                tenant,
                vm,
                serde_json::to_value(&facts)?,
            )
            .execute(&mut *tx)
            .await?;
        }
        VmEvent::StateChanged { to, reason, .. } => {
            set_state(tx, event, to, &reason).await?;
        }
        VmEvent::Removed => {
            sqlx::query!(
                r#"UPDATE vms SET removed_at = $3, removed_by = $4
                   WHERE tenant_id = $1 AND name = $2"#,
                tenant,
                vm,
                event.recorded_at,
                event.actor,
            )
            .execute(&mut *tx)
            .await?;
            set_state(tx, event, VmState::Removed, "removed").await?;
        }
        VmEvent::OperationRequested {
            operation_id,
            operation,
            requested_by,
        } => {
            operations::requested(tx, event, operation_id, &operation, &requested_by).await?;
        }
        VmEvent::OperationFinished {
            operation_id,
            outcome,
            ..
        } => operations::finished(tx, event, operation_id, &outcome).await?,
        VmEvent::Registered { .. }
        | VmEvent::TokenIssued { .. }
        | VmEvent::ContainerObserved { .. }
        | VmEvent::ContainerLifecycle { .. }
        | VmEvent::ContainerGone { .. } => {}
    }
    Ok(())
}

/// A VM's first row.
async fn register(
    tx: &mut PgConnection,
    event: &RecordedEvent,
    name: &str,
    placement: &VmPlacement,
) -> Result<(), ProjectionError> {
    sqlx::query!(
        r#"INSERT INTO vms (tenant_id, name, labels, region, zone, watch_images, state,
                            state_since, registered_at, registered_by, version, updated_at)
           VALUES ($1, $2, $3, $4, $5, $9, 'down', $6, $6, $7, $8, $6)"#,
        event.tenant_id,
        name,
        serde_json::to_value(&placement.labels)?,
        placement.region,
        placement.zone,
        event.recorded_at,
        event.actor,
        event.sequence,
        serde_json::to_value(&placement.watch_images)?,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A VM's new placement.
async fn place(
    tx: &mut PgConnection,
    (tenant, vm): (Uuid, &str),
    placement: &VmPlacement,
) -> Result<(), ProjectionError> {
    sqlx::query!(
        r#"UPDATE vms SET labels = $3, region = $4, zone = $5, watch_images = $6
           WHERE tenant_id = $1 AND name = $2"#,
        tenant,
        vm,
        serde_json::to_value(&placement.labels)?,
        placement.region,
        placement.zone,
        serde_json::to_value(&placement.watch_images)?,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn set_state(
    tx: &mut PgConnection,
    event: &RecordedEvent,
    to: VmState,
    reason: &str,
) -> Result<(), ProjectionError> {
    sqlx::query!(
        r#"UPDATE vms SET state = $3, state_reason = $4, state_since = $5
           WHERE tenant_id = $1 AND name = $2"#,
        event.tenant_id,
        event.aggregate_id,
        to.as_str(),
        reason,
        event.recorded_at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

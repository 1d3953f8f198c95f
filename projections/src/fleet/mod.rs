//! The fleet's read models (ADR 0011): `vms`, `containers` and `container_history`, kept from the
//! VM streams of the log by [`FleetProjection`], and the reads the API answers from them and from
//! the presence and sample tables ([`queries`]).

pub mod queries;

use chrono::{DateTime, Utc};
use efms_commands::RecordedEvent;
use efms_domain::fleet::{
    Container, ContainerState, LifecycleEvent, Vm, VmEvent, VmPlacement, VmState,
};
use sqlx::PgConnection;
use uuid::Uuid;

use cqrs_es::Aggregate as _;

use crate::projector::{payload_of, Projection, ProjectionError};

/// Keeps the fleet's read models from the VM streams.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetProjection;

/// What one change did to a container, for its history row.
struct Change<'a> {
    kind: &'a str,
    at: DateTime<Utc>,
    exit_code: Option<i64>,
    signal: Option<&'a str>,
    health: Option<&'a str>,
    reason: Option<&'a str>,
}

impl Projection for FleetProjection {
    const NAME: &'static str = "fleet";

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let Some(payload) = payload_of::<VmEvent>(event, Vm::TYPE)? else {
            return Ok(());
        };
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
            VmEvent::Registered { .. } | VmEvent::TokenIssued { .. } => {}
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
            VmEvent::ContainerObserved { container } => {
                let change = Change {
                    kind: "observed",
                    at: event.recorded_at,
                    exit_code: None,
                    signal: None,
                    health: None,
                    reason: None,
                };
                write_container(tx, event, &container, &change).await?;
            }
            VmEvent::ContainerLifecycle { event: lifecycle } => {
                let before = current(tx, tenant, &lifecycle.container_id).await?;
                let after = lifecycle.applied_to(before.as_ref());
                let change = lifecycle_change(&lifecycle);
                write_container(tx, event, &after, &change).await?;
            }
            VmEvent::ContainerGone {
                container_id,
                reason,
            } => {
                if let Some(mut container) = current(tx, tenant, &container_id).await? {
                    container.state = ContainerState::Gone;
                    let change = Change {
                        kind: "gone",
                        at: event.recorded_at,
                        exit_code: None,
                        signal: None,
                        health: None,
                        reason: Some(&reason),
                    };
                    write_container(tx, event, &container, &change).await?;
                }
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
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

fn lifecycle_change(event: &LifecycleEvent) -> Change<'_> {
    Change {
        kind: event.kind.as_str(),
        at: event.at(),
        exit_code: event.exit_code,
        signal: event.signal.as_deref(),
        health: event.health.map(efms_domain::fleet::Health::as_str),
        reason: None,
    }
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

/// The container as the read model has it.
async fn current(
    tx: &mut PgConnection,
    tenant: Uuid,
    container_id: &str,
) -> Result<Option<Container>, ProjectionError> {
    let document = sqlx::query_scalar!(
        "SELECT document FROM containers WHERE tenant_id = $1 AND container_id = $2",
        tenant,
        container_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    Ok(document.map(serde_json::from_value).transpose()?)
}

/// Writes the container as `change` left it, and the change to its history.
async fn write_container(
    tx: &mut PgConnection,
    event: &RecordedEvent,
    container: &Container,
    change: &Change<'_>,
) -> Result<(), ProjectionError> {
    let document = serde_json::to_value(container)?;
    let gone = container.state == ContainerState::Gone;
    sqlx::query!(
        r#"INSERT INTO containers (tenant_id, container_id, vm_name, name, image, image_id, node_id,
               state, health, restart_count, exit_code, oom_killed, created_at, started_at,
               finished_at, limits, ports, labels, first_seen_at, updated_at, gone_at, gone_reason,
               document)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                   $19, $19, CASE WHEN $20 THEN $19::timestamptz END, $21, $22)
           ON CONFLICT (tenant_id, container_id) DO UPDATE SET
               vm_name = excluded.vm_name, name = excluded.name, image = excluded.image,
               image_id = excluded.image_id, node_id = excluded.node_id, state = excluded.state,
               health = excluded.health, restart_count = excluded.restart_count,
               exit_code = excluded.exit_code, oom_killed = excluded.oom_killed,
               created_at = excluded.created_at, started_at = excluded.started_at,
               finished_at = excluded.finished_at, limits = excluded.limits,
               ports = excluded.ports, labels = excluded.labels, updated_at = excluded.updated_at,
               gone_at = CASE WHEN $20 THEN coalesce(containers.gone_at, excluded.updated_at) END,
               gone_reason = excluded.gone_reason, document = excluded.document"#,
        event.tenant_id,
        container.id,
        event.aggregate_id,
        container.name,
        container.image,
        container.image_id,
        container.node_id,
        container.state.as_str(),
        container.health.as_str(),
        i64::try_from(container.restart_count).unwrap_or(i64::MAX),
        container.exit_code,
        container.oom_killed,
        container.created_at,
        container.started_at,
        container.finished_at,
        serde_json::to_value(&container.limits)?,
        serde_json::to_value(&container.ports)?,
        serde_json::to_value(&container.labels)?,
        event.recorded_at,
        gone,
        change.reason.filter(|_| gone),
        document,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        r#"INSERT INTO container_history (tenant_id, container_id, vm_name, seq, recorded_at, change,
               at, exit_code, signal, health, reason, container)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"#,
        event.tenant_id,
        container.id,
        event.aggregate_id,
        event.sequence,
        event.recorded_at,
        change.kind,
        change.at,
        change.exit_code,
        change.signal,
        change.health,
        change.reason,
        serde_json::to_value(container)?,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

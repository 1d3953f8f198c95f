//! The read model of operations on containers (`container_operations`): one row per operation,
//! `running` from its request until the agent reports, then `succeeded` or `failed`. Each is a
//! job of the API (`GET /jobs/{id}`).

use chrono::{DateTime, Utc};
use efms_commands::{RecordedEvent, Scope};
use efms_domain::fleet::{ContainerOperation, OperationOutcome};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projector::ProjectionError;

/// An operation as the read model has it.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationRow {
    /// Its id (its job's).
    pub operation_id: Uuid,
    /// The VM it is for.
    pub vm_name: String,
    /// `launch`, `restart`, `stop`, `start` or `remove`.
    pub action: String,
    /// The container acted on; for a launch, the one made once it is.
    pub container_id: Option<String>,
    /// The proxy a launch starts.
    pub node_id: Option<String>,
    /// What was asked, whole (JSON).
    pub operation: serde_json::Value,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// The engine's (or the control plane's) words when it failed.
    pub error: Option<String>,
    /// A probe's answer: the image's id.
    pub image_id: Option<String>,
    /// A probe's answer: its Envoy's version.
    pub envoy_version: Option<String>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Records an operation asked for.
pub(super) async fn requested(
    tx: &mut PgConnection,
    event: &RecordedEvent,
    operation_id: Uuid,
    operation: &ContainerOperation,
    requested_by: &str,
) -> Result<(), ProjectionError> {
    let node_id = match operation {
        ContainerOperation::Launch { node_id, .. } => Some(node_id.as_str()),
        _ => None,
    };
    sqlx::query!(
        r#"INSERT INTO container_operations (tenant_id, operation_id, vm_name, action,
               container_id, node_id, operation, requested_by, requested_at, state)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'running')
           ON CONFLICT (tenant_id, operation_id) DO NOTHING"#,
        event.tenant_id,
        operation_id,
        event.aggregate_id,
        operation.action(),
        operation.container_id(),
        node_id,
        serde_json::to_value(operation)?,
        requested_by,
        event.recorded_at,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records how an operation ended.
pub(super) async fn finished(
    tx: &mut PgConnection,
    event: &RecordedEvent,
    operation_id: Uuid,
    outcome: &OperationOutcome,
) -> Result<(), ProjectionError> {
    let (mut container_id, mut error, mut probed) = (None, None, (None, None));
    let state = match outcome {
        OperationOutcome::Succeeded { container_id: id } => {
            container_id = Some(id.as_str());
            "succeeded"
        }
        OperationOutcome::Probed {
            image_id,
            envoy_version,
        } => {
            probed = (Some(image_id.as_str()), Some(envoy_version.as_str()));
            "succeeded"
        }
        OperationOutcome::Failed { error: words } => {
            error = Some(words.as_str());
            "failed"
        }
    };
    sqlx::query!(
        r#"UPDATE container_operations
           SET state = $3, container_id = COALESCE($4, container_id), error = $5,
               finished_at = $6, image_id = $7, envoy_version = $8
           WHERE tenant_id = $1 AND operation_id = $2"#,
        event.tenant_id,
        operation_id,
        state,
        container_id,
        error,
        event.recorded_at,
        probed.0,
        probed.1,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One operation of the tenant.
pub async fn get_operation(
    pool: &PgPool,
    tenant_id: Uuid,
    operation_id: Uuid,
) -> Result<Option<OperationRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let row = sqlx::query_as!(
        OperationRow,
        r#"SELECT operation_id, vm_name, action, container_id, node_id, operation, requested_by,
                  requested_at, state, error, image_id, envoy_version, finished_at
           FROM container_operations WHERE tenant_id = $1 AND operation_id = $2"#,
        tenant_id,
        operation_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// The VM where a launch of proxy `node_id` is under way, if one is.
pub async fn launching(
    pool: &PgPool,
    tenant_id: Uuid,
    node_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let vm = sqlx::query_scalar!(
        r#"SELECT vm_name FROM container_operations
           WHERE tenant_id = $1 AND node_id = $2 AND state = 'running' AND action = 'launch'
           LIMIT 1"#,
        tenant_id,
        node_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(vm)
}

/// The launch that made container `container_id`, if it was launched through the API.
pub async fn launch_of(
    pool: &PgPool,
    tenant_id: Uuid,
    container_id: &str,
) -> Result<Option<OperationRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let row = sqlx::query_as!(
        OperationRow,
        r#"SELECT operation_id, vm_name, action, container_id, node_id, operation, requested_by,
                  requested_at, state, error, image_id, envoy_version, finished_at
           FROM container_operations
           WHERE tenant_id = $1 AND container_id = $2 AND action = 'launch' AND state = 'succeeded'
           ORDER BY requested_at DESC LIMIT 1"#,
        tenant_id,
        container_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

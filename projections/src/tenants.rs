//! The tenant registry read model (`tenants` table) and its queries (FR-MT-001).

use chrono::{DateTime, Utc};
use efms_commands::{RecordedEvent, Scope};
use efms_domain::{Tenant, TenantEvent};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use cqrs_es::Aggregate as _;

use crate::projector::{payload_of, Projection, ProjectionError};

/// Keeps the `tenants` table from the tenant aggregates' events.
#[derive(Debug, Clone, Copy, Default)]
pub struct TenantsProjection;

impl Projection for TenantsProjection {
    const NAME: &'static str = "tenants";
    const AGGREGATE_TYPE: &'static str = Tenant::TYPE;
    const TABLES: &'static [&'static str] = &["tenants"];
    type Replaying = ();

    async fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let Some(payload) = payload_of::<TenantEvent>(event, Tenant::TYPE)? else {
            return Ok(());
        };
        match payload {
            TenantEvent::TenantCreated { slug, name } => {
                sqlx::query!(
                    r#"INSERT INTO tenants (tenant_id, slug, name, version, created_at, created_by, updated_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $5)"#,
                    event.tenant_id,
                    slug.as_str(),
                    name.as_str(),
                    event.sequence,
                    event.recorded_at,
                    event.actor,
                )
                .execute(&mut *tx)
                .await?;
            }
            TenantEvent::TenantRenamed { name } => {
                sqlx::query!(
                    "UPDATE tenants SET name = $2, version = $3, updated_at = $4 WHERE tenant_id = $1",
                    event.tenant_id,
                    name.as_str(),
                    event.sequence,
                    event.recorded_at,
                )
                .execute(&mut *tx)
                .await?;
            }
            TenantEvent::TenantSuspended { reason } => {
                sqlx::query(
                    "UPDATE tenants SET suspended_at = $2, suspended_by = $3, suspension_reason = $4,
                            version = $5, updated_at = $2
                     WHERE tenant_id = $1",
                )
                .bind(event.tenant_id)
                .bind(event.recorded_at)
                .bind(&event.actor)
                .bind(reason.as_str())
                .bind(event.sequence)
                .execute(&mut *tx)
                .await?;
            }
            TenantEvent::TenantDeleted { purge_after } => {
                sqlx::query(
                    "UPDATE tenants SET deleted_at = $2, deleted_by = $3, purge_after = $4,
                            version = $5, updated_at = $2
                     WHERE tenant_id = $1",
                )
                .bind(event.tenant_id)
                .bind(event.recorded_at)
                .bind(&event.actor)
                .bind(purge_after)
                .bind(event.sequence)
                .execute(&mut *tx)
                .await?;
            }
            TenantEvent::TenantRestored => {
                sqlx::query(
                    "UPDATE tenants SET deleted_at = NULL, deleted_by = NULL, purge_after = NULL,
                            version = $2, updated_at = $3
                     WHERE tenant_id = $1",
                )
                .bind(event.tenant_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(&mut *tx)
                .await?;
            }
            TenantEvent::TenantResumed => {
                sqlx::query(
                    "UPDATE tenants SET suspended_at = NULL, suspended_by = NULL,
                            suspension_reason = NULL, version = $2, updated_at = $3
                     WHERE tenant_id = $1",
                )
                .bind(event.tenant_id)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgConnection) -> Result<(), ProjectionError> {
        sqlx::query!("DELETE FROM tenants")
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    async fn reset_tenant(
        &self,
        tx: &mut PgConnection,
        tenant_id: uuid::Uuid,
    ) -> Result<(), ProjectionError> {
        sqlx::query!("DELETE FROM tenants WHERE tenant_id = $1", tenant_id)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

/// A tenant as the registry shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TenantRow {
    /// Internal id (derived from the slug).
    pub tenant_id: Uuid,
    /// The slug that addresses the tenant.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// The tenant stream's sequence at the last change (its ETag).
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was suspended, while it is.
    pub suspended_at: Option<DateTime<Utc>>,
    /// Who suspended it, while it is.
    pub suspended_by: Option<String>,
    /// Why, while it is.
    pub suspension_reason: Option<String>,
    /// When it was deleted, while it is (until restored or purged).
    pub deleted_at: Option<DateTime<Utc>>,
    /// Who deleted it, while it is.
    pub deleted_by: Option<String>,
    /// When its grace period ends and the purge may begin, while it is deleted.
    pub purge_after: Option<DateTime<Utc>>,
}

/// The columns of a [`TenantRow`].
const TENANT_COLUMNS: &str = "tenant_id, slug, name, version, created_at, created_by, updated_at,
    suspended_at, suspended_by, suspension_reason, deleted_at, deleted_by, purge_after";

/// Lists tenants in slug order after `after_slug`, at most `limit`, as `scope` may see them: every
/// tenant for the system scope, only its own for a tenant scope (row-level security decides).
/// Deleted tenants (in their grace period) are listed only when `include_deleted`.
pub async fn list_tenants(
    pool: &PgPool,
    scope: Scope,
    after_slug: Option<&str>,
    limit: i64,
    include_deleted: bool,
) -> Result<Vec<TenantRow>, sqlx::Error> {
    let mut tx = scope.begin(pool).await?;
    let rows = sqlx::query_as::<_, TenantRow>(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants
         WHERE ($1::text IS NULL OR slug > $1) AND ($3 OR deleted_at IS NULL)
         ORDER BY slug
         LIMIT $2"
    ))
    .bind(after_slug)
    .bind(limit)
    .bind(include_deleted)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// One tenant by slug, if `scope` may see it (deleted or not).
pub async fn get_tenant(
    pool: &PgPool,
    scope: Scope,
    slug: &str,
) -> Result<Option<TenantRow>, sqlx::Error> {
    let mut tx = scope.begin(pool).await?;
    let row = sqlx::query_as::<_, TenantRow>(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = $1"
    ))
    .bind(slug)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// Why the tenant `tenant_id` is suspended, read in its own scope: `None` when it is not (or does
/// not exist).
pub async fn suspension(pool: &PgPool, tenant_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT suspension_reason FROM tenants WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(row.and_then(|(reason,)| reason))
}

/// One event of a tenant's own stream: its creation, renames, suspensions and resumptions.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantHistoryEntry {
    /// Its place in the tenant's stream.
    pub sequence: i64,
    /// `TenantCreated`, `TenantRenamed`, ….
    pub event_type: String,
    /// The event as recorded.
    pub payload: serde_json::Value,
    /// Who caused it.
    pub actor: String,
    /// When.
    pub recorded_at: DateTime<Utc>,
}

/// Every event of the tenant `slug`'s own stream, oldest first.
pub async fn tenant_history(
    pool: &PgPool,
    tenant_id: Uuid,
    slug: &str,
) -> Result<Vec<TenantHistoryEntry>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as::<_, TenantHistoryEntry>(
        "SELECT sequence, event_type, payload, actor, recorded_at
         FROM events
         WHERE tenant_id = $1 AND aggregate_type = 'tenant' AND aggregate_id = $2
         ORDER BY sequence",
    )
    .bind(tenant_id)
    .bind(slug)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// What remains of a purged tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TenantDeletionRow {
    /// The slug it had, never given to another tenant.
    pub slug: String,
    /// When it was deleted.
    pub deleted_at: DateTime<Utc>,
    /// Who deleted it.
    pub deleted_by: String,
    /// When it was purged.
    pub purged_at: DateTime<Utc>,
    /// How many rows of each table the purge removed.
    pub purged_rows: serde_json::Value,
}

/// The columns of a [`TenantDeletionRow`].
const DELETION_COLUMNS: &str = "slug, deleted_at, deleted_by, purged_at, purged_rows";

/// The records of purged tenants in slug order after `after_slug`, at most `limit` (the system's
/// read).
pub async fn list_tenant_deletions(
    pool: &PgPool,
    after_slug: Option<&str>,
    limit: i64,
) -> Result<Vec<TenantDeletionRow>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let rows = sqlx::query_as::<_, TenantDeletionRow>(&format!(
        "SELECT {DELETION_COLUMNS} FROM tenant_deletions
         WHERE $1::text IS NULL OR slug > $1
         ORDER BY slug LIMIT $2"
    ))
    .bind(after_slug)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// The record of the purged tenant `slug`, if one was purged under it.
pub async fn tenant_deletion(
    pool: &PgPool,
    slug: &str,
) -> Result<Option<TenantDeletionRow>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let row = sqlx::query_as::<_, TenantDeletionRow>(&format!(
        "SELECT {DELETION_COLUMNS} FROM tenant_deletions WHERE slug = $1"
    ))
    .bind(slug)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

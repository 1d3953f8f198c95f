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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
}

/// Lists tenants in slug order after `after_slug`, at most `limit`, as `scope` may see them: every
/// tenant for the system scope, only its own for a tenant scope (row-level security decides).
pub async fn list_tenants(
    pool: &PgPool,
    scope: Scope,
    after_slug: Option<&str>,
    limit: i64,
) -> Result<Vec<TenantRow>, sqlx::Error> {
    let mut tx = scope.begin(pool).await?;
    let rows = sqlx::query_as!(
        TenantRow,
        r#"SELECT tenant_id, slug, name, version, created_at, created_by, updated_at
           FROM tenants
           WHERE $1::text IS NULL OR slug > $1
           ORDER BY slug
           LIMIT $2"#,
        after_slug,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// One tenant by slug, if `scope` may see it.
pub async fn get_tenant(
    pool: &PgPool,
    scope: Scope,
    slug: &str,
) -> Result<Option<TenantRow>, sqlx::Error> {
    let mut tx = scope.begin(pool).await?;
    let row = sqlx::query_as!(
        TenantRow,
        r#"SELECT tenant_id, slug, name, version, created_at, created_by, updated_at
           FROM tenants WHERE slug = $1"#,
        slug,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

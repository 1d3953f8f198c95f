//! Per-tenant quotas (FR-MT-004): resources per kind (on each branch), configuration writes per
//! minute and connected proxies, set by the system role, readable with usage by the tenant. A
//! write over a quota is refused before anything is committed: 403 naming the count quota, or 429
//! with `Retry-After` for the rate. A proxy over the proxies quota gets 403 for its bootstrap and
//! `RESOURCE_EXHAUSTED` for its xDS stream.
//!
//! Counts are read before the commit, so two writers racing past the last free slot can both
//! land; the next write is then refused until the count is back under the limit.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use efms_commands::Scope;
use efms_domain::Role;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{tenant_access, Access};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// A tenant's limits; `null` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The most resources of one kind on one branch.
    #[serde(default)]
    pub resources_per_kind: Option<u32>,
    /// The most configuration commits in any minute.
    #[serde(default)]
    pub writes_per_minute: Option<u32>,
    /// The most proxies connected at once.
    #[serde(default)]
    pub proxies: Option<u32>,
}

/// What a tenant uses.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// Resources per kind on `main`.
    resources: BTreeMap<String, i64>,
    /// Configuration commits in the last minute, all branches.
    writes_last_minute: i64,
    /// Proxies connected now.
    proxies_connected: i64,
}

/// A tenant's quotas and usage.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuotaView {
    limits: Limits,
    usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_by: Option<String>,
}

/// `GET /api/v1/tenants/{tenant}/quotas`: limits and usage.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/quotas", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "Limits and usage", body = QuotaView),
        (status = 404, description = "No such tenant", body = crate::openapi::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path(tenant): Path<String>,
) -> Result<Json<QuotaView>, ApiError> {
    let tenant = tenant_access(&state, &actor, &tenant, Access::Read).await?;
    Ok(Json(view(&state, tenant.tenant_id).await?))
}

/// `PUT /api/v1/tenants/{tenant}/quotas`: sets the limits (system role only).
#[utoipa::path(put, path = "/api/v1/tenants/{tenant}/quotas", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = Limits,
    responses((status = 200, description = "The new limits and the usage", body = QuotaView),
        (status = 403, description = "Only the system role sets quotas", body = crate::openapi::Problem),
        (status = 404, description = "No such tenant", body = crate::openapi::Problem)))]
pub async fn put(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path(tenant): Path<String>,
    ApiJson(limits): ApiJson<Limits>,
) -> Result<Json<QuotaView>, ApiError> {
    let tenant = tenant_access(&state, &actor, &tenant, Access::Read).await?;
    if actor.role != Role::System {
        return Err(ApiError::Forbidden(format!(
            "quotas are set by the `system` role; this token has `{}`",
            actor.role
        )));
    }
    let mut tx = Scope::System.begin(&state.pool).await?;
    sqlx::query!(
        r#"INSERT INTO tenant_quotas (tenant_id, resources_per_kind, writes_per_minute, proxies,
                                      updated_by)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id) DO UPDATE
           SET resources_per_kind = EXCLUDED.resources_per_kind,
               writes_per_minute = EXCLUDED.writes_per_minute,
               proxies = EXCLUDED.proxies,
               updated_at = now(), updated_by = EXCLUDED.updated_by"#,
        tenant.tenant_id,
        limits
            .resources_per_kind
            .map(i64::from)
            .and_then(|n| i32::try_from(n).ok()),
        limits
            .writes_per_minute
            .map(i64::from)
            .and_then(|n| i32::try_from(n).ok()),
        limits
            .proxies
            .map(i64::from)
            .and_then(|n| i32::try_from(n).ok()),
        actor.audit_name(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(view(&state, tenant.tenant_id).await?))
}

async fn view(state: &AppState, tenant_id: Uuid) -> Result<QuotaView, ApiError> {
    let mut tx = Scope::Tenant(tenant_id).begin(&state.pool).await?;
    let row = sqlx::query!(
        r#"SELECT resources_per_kind, writes_per_minute, proxies, updated_at, updated_by
           FROM tenant_quotas WHERE tenant_id = $1"#,
        tenant_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let resources = sqlx::query!(
        r#"SELECT kind, count(*) AS "count!" FROM config_resources
           WHERE tenant_id = $1 AND branch = 'main' GROUP BY kind ORDER BY kind"#,
        tenant_id,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| (row.kind, row.count))
    .collect();
    let writes_last_minute =
        efms_commands::configuration::quotas::recent_writes(&mut tx, tenant_id).await?;
    let proxies_connected = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM proxies WHERE tenant_id = $1 AND streams > 0"#,
        tenant_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let to_u32 = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok());
    Ok(QuotaView {
        limits: Limits {
            resources_per_kind: to_u32(row.as_ref().and_then(|r| r.resources_per_kind)),
            writes_per_minute: to_u32(row.as_ref().and_then(|r| r.writes_per_minute)),
            proxies: to_u32(row.as_ref().and_then(|r| r.proxies)),
        },
        usage: Usage {
            resources,
            writes_last_minute,
            proxies_connected,
        },
        updated_at: row.as_ref().map(|r| r.updated_at),
        updated_by: row.map(|r| r.updated_by),
    })
}

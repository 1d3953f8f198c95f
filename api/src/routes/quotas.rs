//! Per-tenant quotas (FR-MT-004): resources per kind (on each branch), configuration writes per
//! minute and connected proxies, set by the system role, readable with usage by the tenant. A
//! write over a quota is refused before anything is committed: 403 naming the count quota, or 429
//! with `Retry-After` for the rate. A proxy over the proxies quota gets 403 for its bootstrap and
//! `RESOURCE_EXHAUSTED` for its xDS stream.
//!
//! Counts are read before the commit, so two writers racing past the last free slot can both
//! land; the next write is then refused until the count is back under the limit.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{ReadConfig, SetQuotas, Tenant};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::store::quotas as store;

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
        (status = 404, description = "No such tenant", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
) -> Result<Json<QuotaView>, ApiError> {
    Ok(Json(view(&state, tenant.tenant_id).await?))
}

/// `PUT /api/v1/tenants/{tenant}/quotas`: sets the limits (system role only).
#[utoipa::path(put, path = "/api/v1/tenants/{tenant}/quotas", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = Limits,
    responses((status = 200, description = "The new limits and the usage", body = QuotaView),
        (status = 403, description = "Only the system role sets quotas", body = crate::problem::Problem),
        (status = 404, description = "No such tenant", body = crate::problem::Problem)))]
pub async fn put(
    State(state): State<AppState>,
    tenant: Tenant<SetQuotas>,
    ApiJson(limits): ApiJson<Limits>,
) -> Result<Json<QuotaView>, ApiError> {
    let stored = |limit: Option<u32>| limit.and_then(|n| i32::try_from(n).ok());
    let limits = store::StoredLimits {
        resources_per_kind: stored(limits.resources_per_kind),
        writes_per_minute: stored(limits.writes_per_minute),
        proxies: stored(limits.proxies),
    };
    store::set(
        &state.pool,
        tenant.tenant_id,
        limits,
        &tenant.actor().audit_name(),
    )
    .await?;
    Ok(Json(view(&state, tenant.tenant_id).await?))
}

async fn view(state: &AppState, tenant_id: Uuid) -> Result<QuotaView, ApiError> {
    let (set, usage) = store::limits_and_usage(&state.pool, tenant_id).await?;
    let to_u32 = |n: Option<i32>| n.and_then(|n| u32::try_from(n).ok());
    let limits = set.as_ref().map(|set| set.limits).unwrap_or_default();
    Ok(QuotaView {
        limits: Limits {
            resources_per_kind: to_u32(limits.resources_per_kind),
            writes_per_minute: to_u32(limits.writes_per_minute),
            proxies: to_u32(limits.proxies),
        },
        usage: Usage {
            resources: usage.resources,
            writes_last_minute: usage.writes_last_minute,
            proxies_connected: usage.proxies_connected,
        },
        updated_at: set.as_ref().map(|set| set.updated_at),
        updated_by: set.map(|set| set.updated_by),
    })
}

/// The quotas' route.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/tenants/{tenant}/quotas", axum::routing::get(get).put(put))
}

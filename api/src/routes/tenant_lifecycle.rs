//! A tenant's lifecycle beyond its registration: suspension and its end, deletion and restoration
//! (the `system` role), and the tenant's own history (creation, renames, suspensions, deletions),
//! each an event of the tenant's stream with who did it and why.
//!
//! A suspended tenant's own callers may read everything they could, and are refused every change
//! (403, `urn:efms:problem:tenant-suspended`, see [`crate::access`]); its new proxy streams are
//! refused while its running proxies keep the configuration they have; its rollouts wait.

use axum::extract::State;
use axum::response::Response;
use axum::Json;
use efms_domain::{SuspensionReason, TenantCommand};
use efms_projections::tenants::tenant_history;
use serde::{Deserialize, Serialize};

use super::tenants::answer;
use crate::access::{DeleteTenants, ReadConfig, SuspendTenants, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, CommitMeta};
use crate::state::AppState;
use crate::store::grants::{hold_grantees, referrers_of};

/// Body of `POST /api/v1/tenants/{slug}/suspend`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Suspend {
    /// Why: 1 to 500 characters, kept in the tenant's history and shown on the tenant.
    pub reason: String,
}

/// `POST /api/v1/tenants/{slug}/suspend`: suspends the tenant (`system` role). Its own callers keep
/// reading and are refused every change; its running proxies keep their configuration, new proxy
/// streams are refused; its rollouts wait; its webhooks, alerts and agents carry on.
#[utoipa::path(post, path = "/api/v1/tenants/{slug}/suspend", tag = "tenants", request_body = Suspend,
    params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "Suspended", body = super::tenants::TenantView),
        (status = 403, description = "Not the system role", body = crate::problem::Problem),
        (status = 404, description = "No such tenant", body = crate::problem::Problem),
        (status = 409, description = "Suspended already", body = crate::problem::Problem),
        (status = 422, description = "Missing or invalid reason", body = crate::problem::Problem)))]
pub async fn suspend(
    State(state): State<AppState>,
    tenant: Tenant<SuspendTenants>,
    meta: CommitMeta,
    ApiJson(body): ApiJson<Suspend>,
) -> Result<Response, ApiError> {
    let reason = SuspensionReason::parse(body.reason).map_err(|error| {
        ApiError::Validation(vec![FieldError::at("/reason", error.to_string())])
    })?;
    answer(&state, &tenant, &meta, TenantCommand::Suspend { reason }).await
}

/// `POST /api/v1/tenants/{slug}/resume`: ends the tenant's suspension (`system` role); writes,
/// new proxy streams and rollouts go on from there.
#[utoipa::path(post, path = "/api/v1/tenants/{slug}/resume", tag = "tenants",
    params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "Resumed", body = super::tenants::TenantView),
        (status = 403, description = "Not the system role", body = crate::problem::Problem),
        (status = 404, description = "No such tenant", body = crate::problem::Problem),
        (status = 409, description = "Not suspended", body = crate::problem::Problem)))]
pub async fn resume(
    State(state): State<AppState>,
    tenant: Tenant<SuspendTenants>,
    meta: CommitMeta,
) -> Result<Response, ApiError> {
    answer(&state, &tenant, &meta, TenantCommand::Resume).await
}

/// `DELETE /api/v1/tenants/{slug}`: deletes the tenant (`system` role). From then on everything of
/// it is refused (410), its proxies' and agents' streams are cut and its tokens withdrawn; it is
/// kept whole for the grace period (`EFMS_TENANT_PURGE_GRACE`, seven days unless set), within
/// which `POST …/restore` undoes the deletion, and then purged for good. Refused (409, naming
/// them) while other tenants' resources refer to what it shares with them.
#[utoipa::path(delete, path = "/api/v1/tenants/{slug}", tag = "tenants",
    params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "Deleted: the tenant, in its grace period", body = super::tenants::TenantView),
        (status = 403, description = "Not the system role", body = crate::problem::Problem),
        (status = 404, description = "No such tenant", body = crate::problem::Problem),
        (status = 409, description = "Deleted already, or other tenants refer to what it shares", body = crate::problem::Problem),
        (status = 410, description = "Purged already", body = crate::problem::Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant<DeleteTenants>,
    meta: CommitMeta,
) -> Result<Response, ApiError> {
    // The tenants it shares with cannot come to refer to it while this is decided: their commits
    // in flight are waited for, their next ones wait, and see it deleted.
    let held = hold_grantees(&state.pool, tenant.tenant_id).await?;
    let referrers = referrers_of(&state.pool, tenant.tenant_id).await?;
    if !referrers.is_empty() {
        let listed = referrers
            .iter()
            .map(|r| {
                format!(
                    "tenant `{}`: {} `{}` on branch `{}` refers to `{}`",
                    r.tenant, r.kind, r.name, r.branch, r.reference
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ApiError::Conflict(format!(
            "other tenants refer to what tenant `{}` shares with them, so it cannot be deleted: {listed}",
            tenant.slug
        )));
    }
    let grace = state.tenant_purge.borrow().grace;
    let purge_after =
        chrono::Utc::now() + chrono::Duration::from_std(grace).map_err(ApiError::internal)?;
    let answered = answer(
        &state,
        &tenant,
        &meta,
        TenantCommand::Delete { purge_after },
    )
    .await;
    held.rollback().await?;
    // This replica refuses it at once; the others within their tenants' period.
    state.known_tenants.forget(tenant.tenant_id);
    state.xds.recheck_credentials();
    answered
}

/// `POST /api/v1/tenants/{slug}/restore`: undoes the tenant's deletion within its grace period
/// (`system` role): everything is back as it was, and its proxies and agents connect again.
#[utoipa::path(post, path = "/api/v1/tenants/{slug}/restore", tag = "tenants",
    params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "Restored", body = super::tenants::TenantView),
        (status = 403, description = "Not the system role", body = crate::problem::Problem),
        (status = 404, description = "No such tenant", body = crate::problem::Problem),
        (status = 409, description = "Not deleted", body = crate::problem::Problem),
        (status = 410, description = "Purged: nothing remains to restore", body = crate::problem::Problem)))]
pub async fn restore(
    State(state): State<AppState>,
    tenant: Tenant<DeleteTenants>,
    meta: CommitMeta,
) -> Result<Response, ApiError> {
    answer(&state, &tenant, &meta, TenantCommand::Restore).await
}

/// The tenant's own history, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantHistory {
    items: Vec<TenantHistoryEntry>,
}

/// One event of a tenant's own stream.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantHistoryEntry {
    /// Its place in the tenant's stream (the tenant's `version` after it).
    sequence: i64,
    /// `TenantCreated`, `TenantRenamed`, `TenantSuspended` or `TenantResumed`.
    #[serde(rename = "type")]
    kind: String,
    /// What it recorded: the name, the reason.
    #[schema(value_type = Object)]
    data: serde_json::Value,
    /// Who did it.
    actor: String,
    /// When.
    at: chrono::DateTime<chrono::Utc>,
}

/// `GET /api/v1/tenants/{slug}/history`: every event of the tenant's own stream, oldest first
/// (any of the tenant's roles).
#[utoipa::path(get, path = "/api/v1/tenants/{slug}/history", tag = "tenants",
    params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The tenant's history", body = TenantHistory),
        (status = 404, description = "No such tenant (or not yours)", body = crate::problem::Problem)))]
pub async fn history(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
) -> Result<Json<TenantHistory>, ApiError> {
    let entries = tenant_history(&state.pool, tenant.tenant_id, tenant.slug.as_str()).await?;
    Ok(Json(TenantHistory {
        items: entries
            .into_iter()
            .map(|entry| TenantHistoryEntry {
                sequence: entry.sequence,
                data: event_data(&entry.event_type, entry.payload),
                kind: entry.event_type,
                actor: entry.actor,
                at: entry.recorded_at,
            })
            .collect(),
    }))
}

/// An event's fields, out of the enum's envelope (`{"TenantRenamed": {"name": …}}` gives
/// `{"name": …}`; a variant without fields gives `{}`).
fn event_data(event_type: &str, payload: serde_json::Value) -> serde_json::Value {
    match payload {
        serde_json::Value::Object(mut envelope) => envelope
            .remove(event_type)
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| serde_json::json!({})),
        _ => serde_json::json!({}),
    }
}

/// The lifecycle's routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing;
    axum::Router::new()
        .route("/tenants/{tenant}/suspend", routing::post(suspend))
        .route("/tenants/{tenant}/resume", routing::post(resume))
        .route("/tenants/{tenant}/restore", routing::post(restore))
        .route("/tenants/{tenant}/history", routing::get(history))
}

#[cfg(test)]
mod tests {
    use super::event_data;
    use serde_json::json;

    #[test]
    fn an_events_data_is_its_fields_without_the_envelope() {
        assert_eq!(
            event_data("TenantRenamed", json!({"TenantRenamed": {"name": "Acme"}})),
            json!({"name": "Acme"})
        );
        assert_eq!(
            event_data("TenantResumed", json!("TenantResumed")),
            json!({})
        );
    }
}

//! `/api/v1/tenants/{tenant}/alerts` (NFR-OB-005, ADR 0016): the alerts the tenant's rules
//! raised, pending, firing or resolved, and their acknowledgement.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use efms_notify::alerts::store::{self, Alert};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{ManageAlerts, ReadFleet, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::state::AppState;

/// The `{id}` of an alert route.
#[derive(Debug, Deserialize)]
pub struct AlertId {
    id: String,
}

/// `?state=&limit=` of the alert list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AlertsParams {
    /// Only alerts in this state: `pending`, `firing` or `resolved`.
    state: Option<String>,
    /// At most this many, 1 to 500 (default 50), the newest first.
    limit: Option<u32>,
}

/// An alert.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertView {
    id: Uuid,
    /// The rule that raised it: its id, name and kind.
    rule_id: Uuid,
    rule: String,
    kind: String,
    /// What it is about: `proxy/{node}`, `vm/{name}` or `container/{id}`.
    subject: String,
    /// `pending`, `firing` or `resolved`.
    state: String,
    /// What is wrong.
    summary: String,
    /// Since when its condition held.
    pending_since: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fired_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_by: Option<String>,
}

impl From<Alert> for AlertView {
    fn from(alert: Alert) -> Self {
        Self {
            id: alert.id,
            rule_id: alert.rule_id,
            rule: alert.rule,
            kind: alert.kind,
            subject: alert.subject,
            state: alert.state,
            summary: alert.summary,
            pending_since: alert.pending_since,
            fired_at: alert.fired_at,
            resolved_at: alert.resolved_at,
            acked_at: alert.acked_at,
            acked_by: alert.acked_by,
        }
    }
}

/// A page of alerts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertsPage {
    items: Vec<AlertView>,
}

/// `GET /api/v1/tenants/{tenant}/alerts?state=&limit=`: the latest alerts.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/alerts", tag = "alerts",
    params(("tenant" = String, Path, description = "Tenant slug"), AlertsParams),
    responses((status = 200, description = "The alerts, the newest first", body = AlertsPage),
        (status = 422, description = "Bad state or limit", body = crate::problem::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<AlertsParams>,
    tenant: Tenant<ReadFleet>,
) -> Result<Json<AlertsPage>, ApiError> {
    let page = super::PageSize::from_param(params.limit)?;
    if let Some(wanted) = params.state.as_deref() {
        if !["pending", "firing", "resolved"].contains(&wanted) {
            return Err(ApiError::Validation(vec![FieldError::parameter(
                "state",
                "is `pending`, `firing` or `resolved`",
            )]));
        }
    }
    let alerts = store::alerts(
        &state.pool,
        tenant.tenant_id,
        params.state.as_deref(),
        page.size(),
    )
    .await?;
    Ok(Json(AlertsPage {
        items: alerts.into_iter().map(Into::into).collect(),
    }))
}

/// `POST /api/v1/tenants/{tenant}/alerts/{id}/ack`: someone is on it (the first
/// acknowledgement stands).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/alerts/{id}/ack", tag = "alerts",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The alert's id")),
    responses((status = 204, description = "Acknowledged"),
        (status = 404, description = "No such alert", body = crate::problem::Problem)))]
pub async fn acknowledge(
    State(state): State<AppState>,
    tenant: Tenant<ManageAlerts>,
    Path(AlertId { id }): Path<AlertId>,
) -> Result<StatusCode, ApiError> {
    let missing = || ApiError::NotFound(format!("there is no alert `{id}`"));
    let alert_id = Uuid::parse_str(&id).map_err(|_| missing())?;
    if store::acknowledge(
        &state.pool,
        tenant.tenant_id,
        alert_id,
        &tenant.actor().audit_name(),
    )
    .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing())
    }
}

/// The alerts' routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/tenants/{tenant}/alerts", get(list))
        .route("/tenants/{tenant}/alerts/{id}/ack", post(acknowledge))
}

//! `GET /api/v1/tenants/{tenant}/drift`: every proxy not on what it should run (NFR-OB-004), since
//! when and why: a refusal with Envoy's words, a disconnection, or a version sent and not
//! accepted in time.

use std::collections::BTreeMap;

use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use efms_projections::drift::{drift, DriftState};
use efms_projections::proxies::{self as status, TypeStatusRow};
use serde::{Deserialize, Serialize};

use crate::access::{ReadConfig, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::read_replica::Reads;
use crate::routes::fleet_health::duration_param;
use crate::state::AppState;

/// The most proxies one read looks at.
const MOST: i64 = 10_000;

/// `?group=&behind_after=` of a drift read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DriftParams {
    /// Only this group's proxies.
    group: Option<String>,
    /// How long a proxy may take to accept what it was sent before it is `BEHIND`, such as
    /// `10s` (default; 1s to 1h).
    behind_after: Option<String>,
}

/// A proxy not on what it should run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Drifting {
    node_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// `BEHIND`, `NACKED`, `DIVERGED` (its `config_dump` holds another version than it
    /// accepted) or `DISCONNECTED`.
    #[schema(value_type = String)]
    state: DriftState,
    /// Since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<DateTime<Utc>>,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<String>,
}

/// The proxies not on what they should run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DriftPage {
    items: Vec<Drifting>,
    /// How many proxies were looked at.
    proxies: usize,
}

/// `GET /api/v1/tenants/{tenant}/drift`: the proxies not on their group's head.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/drift", tag = "proxies",
    params(("tenant" = String, Path, description = "Tenant slug"), DriftParams),
    responses((status = 200, description = "The drifting proxies", body = DriftPage),
        (status = 422, description = "Bad group or duration", body = crate::problem::Problem)))]
pub async fn list(
    ApiQuery(params): ApiQuery<DriftParams>,
    tenant: Tenant<ReadConfig>,
    Reads(reads): Reads,
) -> Result<Json<DriftPage>, ApiError> {
    let mut errors = Vec::new();
    let behind = duration_param(
        "behind_after",
        params.behind_after.as_deref(),
        10,
        &mut errors,
    );
    if let Some(Err(problem)) = params.group.as_deref().map(efms_domain::envoy::check_name) {
        errors.push(FieldError::parameter("group", problem));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let rows = status::list_proxies(
        &reads,
        tenant.tenant_id,
        params.group.as_deref(),
        None,
        MOST,
    )
    .await?;
    let ids: Vec<String> = rows.iter().map(|row| row.node_id.clone()).collect();
    let mut types: BTreeMap<String, Vec<TypeStatusRow>> = BTreeMap::new();
    for (node, row) in status::type_statuses(&reads, tenant.tenant_id, &ids).await? {
        types.entry(node).or_default().push(row);
    }
    let now = Utc::now();
    let proxies = rows.len();
    let items = rows
        .into_iter()
        .filter_map(|row| {
            let node_types = types.get(&row.node_id).map_or(&[][..], Vec::as_slice);
            let drift = drift(&row, node_types, now, TimeDelta::seconds(behind));
            (drift.state != DriftState::InSync).then_some(Drifting {
                node_id: row.node_id,
                group: row.group_name,
                state: drift.state,
                since: drift.since,
                why: drift.why,
            })
        })
        .collect();
    Ok(Json(DriftPage { items, proxies }))
}

/// The drift route.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/tenants/{tenant}/drift", axum::routing::get(list))
}

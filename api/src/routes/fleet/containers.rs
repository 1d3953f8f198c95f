//! `/tenants/{tenant}/containers`: the Envoy containers the agents report, joined with the proxy
//! each one is (label `efms.node_id`), now or as of a moment, and their lifecycle history.

use axum::extract::{Path, State};
use axum::Json;
use efms_domain::fleet::reports::check_container_id;
use efms_projections::fleet::queries::{self as read, ContainerFilter};
use efms_projections::proxies as status;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::views::{Container, ContainerEvent};
use super::{limit, AtQuery};
use crate::access::{ReadFleet, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::read_replica::Reads;
use crate::state::AppState;

/// The `{id}` of a container route.
#[derive(Debug, Deserialize)]
pub struct ContainerPath {
    pub(super) id: String,
}

/// Filters of `GET /containers`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContainerListQuery {
    /// The VM they are on.
    vm: Option<String>,
    /// `created`, `running`, `paused`, `restarting`, `removing`, `exited`, `dead` or `gone`.
    state: Option<String>,
    /// `none`, `starting`, `healthy` or `unhealthy`.
    health: Option<String>,
    /// The group of their proxy.
    group: Option<String>,
    /// At most this many (1 to 1000, default 100).
    limit: Option<i64>,
}

/// A page of containers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContainerPage {
    items: Vec<Container>,
}

/// A container's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContainerEvents {
    items: Vec<ContainerEvent>,
}

const STATES: [&str; 8] = [
    "created",
    "running",
    "paused",
    "restarting",
    "removing",
    "exited",
    "dead",
    "gone",
];
const HEALTHS: [&str; 4] = ["none", "starting", "healthy", "unhealthy"];

/// The container `{id}` names: its full id, or a unique prefix of 12 or more hex digits.
pub(super) async fn find(
    state: &AppState,
    tenant_id: uuid::Uuid,
    id: &str,
) -> Result<efms_projections::fleet::queries::ContainerRow, ApiError> {
    let missing = || ApiError::NotFound(format!("there is no container `{id}`"));
    let hex = id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if id.len() < 12 || id.len() > 64 || !hex {
        return Err(missing());
    }
    let mut rows = read::find_containers(&state.pool, tenant_id, id).await?;
    match rows.len() {
        0 => Err(missing()),
        1 => Ok(rows.remove(0)),
        _ => Err(ApiError::Conflict(format!(
            "`{id}` is the start of several containers' ids: give more of it"
        ))),
    }
}

/// `GET /api/v1/tenants/{tenant}/containers`: the containers, by VM then name.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/containers", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ContainerListQuery),
    responses((status = 200, description = "The containers", body = ContainerPage),
        (status = 400, description = "Malformed query", body = crate::problem::Problem),
        (status = 404, description = "No such tenant", body = crate::problem::Problem),
        (status = 422, description = "Bad filter", body = crate::problem::Problem)))]
pub async fn list(
    tenant: Tenant<ReadFleet>,
    ApiQuery(query): ApiQuery<ContainerListQuery>,
    Reads(reads): Reads,
) -> Result<Json<ContainerPage>, ApiError> {
    let mut errors = Vec::new();
    if query.state.as_deref().is_some_and(|s| !STATES.contains(&s)) {
        errors.push(FieldError::parameter("state", STATES.join(", ")));
    }
    if query
        .health
        .as_deref()
        .is_some_and(|h| !HEALTHS.contains(&h))
    {
        errors.push(FieldError::parameter("health", HEALTHS.join(", ")));
    }
    let limit = limit(query.limit).unwrap_or_else(|error| {
        errors.push(error);
        0
    });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = ContainerFilter {
        vm: query.vm,
        state: query.state,
        health: query.health,
        group: query.group,
        live_only: false,
        limit,
    };
    let rows = read::list_containers(&reads, tenant.tenant_id, &filter).await?;
    Ok(Json(ContainerPage {
        items: rows.into_iter().map(Container::from_row).collect(),
    }))
}

/// `GET /api/v1/tenants/{tenant}/containers/{id}`: a container (its full id, or a unique prefix
/// of 12 or more characters) with the sync status of the proxy it is; with `?at=`, as it was then.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/containers/{id}", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "Container id or a unique prefix of 12+ characters"), AtQuery),
    responses((status = 200, description = "The container", body = Container),
        (status = 400, description = "Malformed query", body = crate::problem::Problem),
        (status = 404, description = "No such container (then)", body = crate::problem::Problem),
        (status = 409, description = "The prefix names several containers", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ReadFleet>,
    Path(ContainerPath { id }): Path<ContainerPath>,
    ApiQuery(query): ApiQuery<AtQuery>,
    Reads(reads): Reads,
) -> Result<Json<Container>, ApiError> {
    let row = find(&state, tenant.tenant_id, &id).await?;
    if let Some(at) = query.at {
        let vm = row.vm.clone();
        let then = read::container_at(&reads, tenant.tenant_id, &row.container.id, at)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("container `{id}` was not known at {at}")))?;
        return Ok(Json(Container::as_of(then, Some(at)).on(vm)));
    }
    let container = Container::from_row(row);
    let proxy = match container.node_id() {
        None => None,
        Some(node_id) => proxy_status(&state, tenant.tenant_id, node_id).await?,
    };
    Ok(Json(container.with_proxy(proxy)))
}

/// The proxy `node_id`'s connection and sync status, when it ever connected.
async fn proxy_status(
    state: &AppState,
    tenant_id: uuid::Uuid,
    node_id: &str,
) -> Result<Option<serde_json::Value>, ApiError> {
    let Some(proxy) = status::get_proxy(&state.pool, tenant_id, node_id).await? else {
        return Ok(Some(
            json!({ "node_id": node_id, "connected": false, "status": "NEVER_CONNECTED" }),
        ));
    };
    let types = status::type_statuses(&state.pool, tenant_id, &[node_id.to_owned()]).await?;
    let states: Vec<status::SyncState> = types.iter().map(|(_, t)| t.state()).collect();
    Ok(Some(json!({
        "node_id": proxy.node_id,
        "group": proxy.group_name,
        "connected": proxy.streams > 0,
        "status": status::SyncState::overall(&states),
        "last_seen_at": proxy.last_seen_at,
    })))
}

/// `GET /api/v1/tenants/{tenant}/containers/{id}/events`: the container's history, oldest first:
/// when it was observed, its lifecycle events (with exit codes, signals, health), when it went.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/containers/{id}/events", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "Container id or a unique prefix of 12+ characters")),
    responses((status = 200, description = "The container's history", body = ContainerEvents),
        (status = 404, description = "No such container", body = crate::problem::Problem),
        (status = 409, description = "The prefix names several containers", body = crate::problem::Problem)))]
pub async fn events(
    State(state): State<AppState>,
    tenant: Tenant<ReadFleet>,
    Path(ContainerPath { id }): Path<ContainerPath>,
    Reads(reads): Reads,
) -> Result<Json<ContainerEvents>, ApiError> {
    let row = find(&state, tenant.tenant_id, &id).await?;
    debug_assert!(check_container_id("id", &row.container.id).is_ok());
    let changes =
        read::container_changes(&reads, tenant.tenant_id, &row.vm, &row.container.id).await?;
    Ok(Json(ContainerEvents {
        items: changes.into_iter().map(ContainerEvent::from).collect(),
    }))
}

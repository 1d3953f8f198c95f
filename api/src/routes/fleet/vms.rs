//! `/tenants/{tenant}/vms`: registering VMs (each answered once with its join token), reading
//! them now or as of a moment, their history and utilisation, removing them. Changing their
//! placement is `placement.rs`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use efms_commands::CommandError;
use efms_domain::fleet::{VmError, VmName, VmPlacement};
use efms_projections::fleet::queries::{self as read, ContainerFilter, VmFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::views::{Container, UtilisationStep, Vm, VmHistoryEntry};
use super::{limit, AtQuery, VmPath, READ_YOUR_WRITES_TIMEOUT};
use crate::access::{ManageVms, ReadFleet, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery};
use crate::read_replica::Reads;
use crate::state::AppState;

/// A VM to register.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVm {
    /// Its name: a slug, unique in the tenant, never reused after removal.
    name: String,
    /// Its labels (`{"k": "v"}`).
    #[serde(default)]
    labels: BTreeMap<String, String>,
    region: Option<String>,
    zone: Option<String>,
    /// Images whose containers its agent reports besides those labelled `efms.node_id`
    /// (`envoyproxy/envoy` watches every tag of it).
    #[serde(default)]
    watch_images: Vec<String>,
}

/// A registered VM and its join token, shown only now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Registered {
    /// The VM.
    vm: Vm,
    /// What `efms agent --token-file` reads: keep it secret; it is not shown again.
    join_token: String,
}

/// A new join token, shown only now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    /// The VM's name.
    vm: String,
    /// The token; the one before it is revoked.
    join_token: String,
}

/// A page of VMs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VmPage {
    items: Vec<Vm>,
}

/// A VM's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VmHistory {
    items: Vec<VmHistoryEntry>,
}

/// A VM's utilisation over time.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Utilisation {
    /// The step, in seconds.
    step_seconds: i64,
    items: Vec<UtilisationStep>,
}

/// Filters and order of `GET /vms`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VmListQuery {
    /// Labels the VMs carry: `k=v`, several separated by commas.
    label: Option<String>,
    region: Option<String>,
    zone: Option<String>,
    /// `down`, `ready`, `docker_unreachable` or `removed`.
    state: Option<String>,
    /// `name` (default), `state`, `region`, `last_heartbeat`; `-` before for descending.
    sort: Option<String>,
    /// At most this many (1 to 1000, default 100).
    limit: Option<i64>,
}

/// `?from=&to=&step=` of utilisation.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UtilisationQuery {
    /// From (RFC 3339; default an hour before `to`).
    from: Option<DateTime<Utc>>,
    /// To (RFC 3339; default now).
    to: Option<DateTime<Utc>>,
    /// The step in seconds (10 to 86400; default 60). A step of whole minutes starts on whole
    /// minutes and is answered from the one-minute rollups (kept 90 days by default) where the raw
    /// samples (7 days) are gone; a shorter step reads the raw samples.
    step: Option<i64>,
}

fn placement(new: &NewVm) -> Result<VmPlacement, ApiError> {
    let placement = VmPlacement {
        labels: new.labels.clone(),
        region: new.region.clone(),
        zone: new.zone.clone(),
        watch_images: new.watch_images.clone(),
    };
    super::placement::check(&placement)?;
    Ok(placement)
}

pub(super) fn vm_error(name: &VmName, error: CommandError<VmError>) -> ApiError {
    match error {
        CommandError::Rejected(VmError::NotFound | VmError::Removed) => {
            ApiError::NotFound(format!("there is no VM `{name}`"))
        }
        other => other.into(),
    }
}

pub(super) async fn read_vm(
    state: &AppState,
    tenant_id: uuid::Uuid,
    name: &VmName,
) -> Result<Vm, ApiError> {
    let row = read::get_vm(&state.pool, tenant_id, name.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no VM `{name}`")))?;
    let filter = ContainerFilter {
        vm: Some(name.to_string()),
        live_only: true,
        limit: 10_000,
        ..ContainerFilter::default()
    };
    let containers = read::list_containers(&state.pool, tenant_id, &filter)
        .await?
        .into_iter()
        .map(Container::from_row)
        .collect();
    Ok(Vm::from_row(row, Some(containers)))
}

pub(super) async fn wait(state: &AppState, position: Option<efms_commands::Position>) {
    if let Some(position) = position {
        if !state
            .fleet_view
            .wait_for(position, READ_YOUR_WRITES_TIMEOUT)
            .await
        {
            tracing::warn!(?position, "the fleet's read models lag behind a commit");
        }
    }
}

/// `POST /api/v1/tenants/{tenant}/vms`: registers a VM; the answer carries its join token, shown
/// only once.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/vms", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = NewVm,
    responses((status = 201, description = "Registered", body = Registered),
        (status = 400, description = "Malformed body", body = crate::problem::Problem),
        (status = 403, description = "The role may not register VMs", body = crate::problem::Problem),
        (status = 404, description = "No such tenant", body = crate::problem::Problem),
        (status = 409, description = "The name is taken, or was a removed VM's", body = crate::problem::Problem),
        (status = 422, description = "Invalid name, labels, region or zone", body = crate::problem::Problem)))]
pub async fn register(
    State(state): State<AppState>,
    tenant: Tenant<ManageVms>,
    ApiJson(new): ApiJson<NewVm>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let name = VmName::parse(new.name.as_str())
        .map_err(|invalid| ApiError::Validation(vec![FieldError::at("/name", invalid.0)]))?;
    let placement = placement(&new)?;
    let actor = tenant.actor().audit_name();
    let (token, position) = state
        .fleet
        .register(tenant.tenant_id, name.clone(), placement, &actor)
        .await?;
    wait(&state, position).await;
    let vm = read_vm(&state, tenant.tenant_id, &name).await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            vm,
            join_token: token.reveal().to_owned(),
        }),
    ))
}

/// `GET /api/v1/tenants/{tenant}/vms`: the VMs, filtered by labels, region, zone and state.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/vms", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), VmListQuery),
    responses((status = 200, description = "The VMs", body = VmPage),
        (status = 400, description = "Malformed query", body = crate::problem::Problem),
        (status = 404, description = "No such tenant", body = crate::problem::Problem),
        (status = 422, description = "Bad filter", body = crate::problem::Problem)))]
pub async fn list(
    tenant: Tenant<ReadFleet>,
    ApiQuery(query): ApiQuery<VmListQuery>,
    Reads(reads): Reads,
) -> Result<Json<VmPage>, ApiError> {
    let mut errors = Vec::new();
    let labels = match query.label.as_deref() {
        None => None,
        Some(text) => {
            let mut labels = serde_json::Map::new();
            for pair in text.split(',') {
                match pair.split_once('=') {
                    Some((k, v)) if !k.is_empty() => {
                        labels.insert(k.to_owned(), Value::String(v.to_owned()));
                    }
                    _ => errors.push(FieldError::parameter(
                        "label",
                        "`k=v`, several separated by commas",
                    )),
                }
            }
            Some(Value::Object(labels))
        }
    };
    if let Some(state) = query.state.as_deref() {
        if efms_domain::fleet::VmState::parse(state).is_none() {
            errors.push(FieldError::parameter(
                "state",
                "one of down, ready, docker_unreachable, removed",
            ));
        }
    }
    if let Some(sort) = query.sort.as_deref() {
        if !["name", "state", "region", "last_heartbeat"].contains(&sort.trim_start_matches('-')) {
            errors.push(FieldError::parameter(
                "sort",
                "one of name, state, region, last_heartbeat, with `-` before for descending",
            ));
        }
    }
    let limit = limit(query.limit).unwrap_or_else(|error| {
        errors.push(error);
        0
    });
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = VmFilter {
        name: None,
        labels,
        region: query.region,
        zone: query.zone,
        state: query.state,
        sort: query.sort,
        limit,
    };
    let rows = read::list_vms(&reads, tenant.tenant_id, &filter).await?;
    Ok(Json(VmPage {
        items: rows
            .into_iter()
            .map(|row| Vm::from_row(row, None))
            .collect(),
    }))
}

/// `GET /api/v1/tenants/{tenant}/vms/{name}`: a VM with its facts, state, last heartbeat,
/// utilisation and containers; with `?at=`, as its history says it was then.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/vms/{name}", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "VM name"), AtQuery),
    responses((status = 200, description = "The VM", body = Vm),
        (status = 400, description = "Malformed query", body = crate::problem::Problem),
        (status = 404, description = "No such VM (then)", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ReadFleet>,
    Path(path): Path<VmPath>,
    ApiQuery(query): ApiQuery<AtQuery>,
    Reads(reads): Reads,
) -> Result<Json<Vm>, ApiError> {
    let name = path.name()?;
    let Some(at) = query.at else {
        return Ok(Json(read_vm(&state, tenant.tenant_id, &name).await?));
    };
    let Some((vm, version)) = read::vm_at(&reads, tenant.tenant_id, name.as_str(), at).await?
    else {
        return Err(ApiError::NotFound(format!(
            "there was no VM `{name}` at {at}"
        )));
    };
    Ok(Json(
        Vm::as_of(&vm, version, at).map_err(ApiError::internal)?,
    ))
}

/// `DELETE /api/v1/tenants/{tenant}/vms/{name}`: removes a VM: its join token is revoked and its
/// agent's stream cut, its containers are shown gone with it, its history stays. Its name is
/// not reused.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/vms/{name}", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "VM name")),
    responses((status = 204, description = "Removed"),
        (status = 403, description = "The role may not remove VMs", body = crate::problem::Problem),
        (status = 404, description = "No such VM", body = crate::problem::Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    tenant: Tenant<ManageVms>,
    Path(path): Path<VmPath>,
) -> Result<StatusCode, ApiError> {
    let name = path.name()?;
    let actor = tenant.actor().audit_name();
    let position = state
        .fleet
        .remove(tenant.tenant_id, &name, &actor)
        .await
        .map_err(|error| vm_error(&name, error))?;
    if let Some(fleet) = state.xds.fleet() {
        fleet.recheck_now();
    }
    wait(&state, position).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/tenants/{tenant}/vms/{name}/token`: a new join token for the VM, shown only now;
/// the one before it is revoked (its agent's stream is cut).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/vms/{name}/token", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "VM name")),
    responses((status = 201, description = "Issued", body = NewToken),
        (status = 403, description = "The role may not issue join tokens", body = crate::problem::Problem),
        (status = 404, description = "No such VM", body = crate::problem::Problem)))]
pub async fn new_token(
    State(state): State<AppState>,
    tenant: Tenant<ManageVms>,
    Path(path): Path<VmPath>,
) -> Result<(StatusCode, Json<NewToken>), ApiError> {
    let name = path.name()?;
    let actor = tenant.actor().audit_name();
    let (token, position) = state
        .fleet
        .issue_token(tenant.tenant_id, &name, &actor)
        .await
        .map_err(|error| vm_error(&name, error))?;
    if let Some(fleet) = state.xds.fleet() {
        fleet.recheck_now();
    }
    wait(&state, position).await;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            vm: name.to_string(),
            join_token: token.reveal().to_owned(),
        }),
    ))
}

/// `GET /api/v1/tenants/{tenant}/vms/{name}/history`: every event of the VM, oldest first:
/// registration, tokens, facts, state changes, its containers' observations and lifecycle events.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/vms/{name}/history", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "VM name")),
    responses((status = 200, description = "The VM's history", body = VmHistory),
        (status = 404, description = "No such VM", body = crate::problem::Problem)))]
pub async fn history(
    tenant: Tenant<ReadFleet>,
    Path(path): Path<VmPath>,
    Reads(reads): Reads,
) -> Result<Json<VmHistory>, ApiError> {
    let name = path.name()?;
    let entries = read::vm_history(&reads, tenant.tenant_id, name.as_str(), None).await?;
    if entries.is_empty() {
        return Err(ApiError::NotFound(format!("there is no VM `{name}`")));
    }
    Ok(Json(VmHistory {
        items: entries.into_iter().map(VmHistoryEntry::from).collect(),
    }))
}

/// `GET /api/v1/tenants/{tenant}/vms/{name}/utilisation`: CPU, load, memory and network of the
/// VM from its heartbeats, averaged (and the highest) per step.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/vms/{name}/utilisation", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "VM name"), UtilisationQuery),
    responses((status = 200, description = "Utilisation per step", body = Utilisation),
        (status = 400, description = "Malformed query", body = crate::problem::Problem),
        (status = 404, description = "No such VM", body = crate::problem::Problem),
        (status = 422, description = "Bad range or step", body = crate::problem::Problem)))]
pub async fn utilisation(
    tenant: Tenant<ReadFleet>,
    Path(path): Path<VmPath>,
    ApiQuery(query): ApiQuery<UtilisationQuery>,
    Reads(reads): Reads,
) -> Result<Json<Utilisation>, ApiError> {
    let name = path.name()?;
    let to = query.to.unwrap_or_else(Utc::now);
    let from = query.from.unwrap_or(to - chrono::TimeDelta::hours(1));
    let step = query.step.unwrap_or(60);
    let mut errors = Vec::new();
    if from >= to {
        errors.push(FieldError::parameter("from", "before `to`"));
    }
    if !(10..=86_400).contains(&step) {
        errors.push(FieldError::parameter("step", "10 to 86400 seconds"));
    } else if (to - from).num_seconds() / step > 10_000 {
        errors.push(FieldError::parameter(
            "step",
            "at most 10,000 steps between `from` and `to`",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if read::get_vm(&reads, tenant.tenant_id, name.as_str())
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("there is no VM `{name}`")));
    }
    let buckets =
        read::utilisation(&reads, tenant.tenant_id, name.as_str(), from, to, step).await?;
    Ok(Json(Utilisation {
        step_seconds: step,
        items: buckets.into_iter().map(UtilisationStep::from).collect(),
    }))
}

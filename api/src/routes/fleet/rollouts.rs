//! Rollouts (ADR 0012): `POST /groups/{group}/rollouts` replaces the group's containers by
//! containers of a new image, a batch at a time, each done once healthy and SYNCED; `GET` shows
//! its progress per container; `pause`, `resume` and `abort` steer it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use efms_commands::CommandError;
use efms_domain::envoy::ResourceKind;
use efms_domain::fleet::check_image;
use efms_domain::fleet::rollout::{
    Rollout, RolloutCommand, RolloutError, RolloutSpec, RolloutState, RolloutTarget, Step,
};
use efms_domain::fleet::{ContainerOperation, ContainerState};
use efms_projections::fleet::operations::launch_of;
use efms_projections::fleet::queries::{self as read, ContainerFilter};
use efms_projections::fleet::rollouts::{active_of_group, get_rollout, RolloutRow};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::access::{ManageVms, ReadFleet, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::routes::proxies::existing_group;
use crate::state::AppState;
use crate::ttl::parse_ttl;

/// The most containers one rollout replaces.
const MAX_TARGETS: i64 = 1_000;

/// `POST /groups/{group}/rollouts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The image the group's containers are replaced by (one every VM's engine holds).
    image: String,
    /// How many containers are replaced at once (default 1; at most the group's count).
    max_unavailable: Option<u32>,
    /// How long a replacement may take to be healthy and SYNCED (default `60s`).
    health_timeout: Option<String>,
    /// How long to wait after a container is replaced before the next (default `0s`).
    pause_between: Option<String>,
    /// Roll out even when no proxy of the tenant has accepted configuration with the new image's
    /// Envoy version (default false).
    force: Option<bool>,
}

/// The path of a group's rollouts.
#[derive(Debug, Deserialize)]
pub struct GroupPath {
    kind: String,
    name: String,
}

/// The path of one rollout, or of an action on it.
#[derive(Debug, Deserialize)]
pub struct RolloutPath {
    kind: String,
    name: String,
    id: String,
    action: Option<String>,
}

fn group_of(kind: &str, name: &str) -> Result<String, ApiError> {
    if kind == ResourceKind::Group.collection() {
        Ok(name.to_owned())
    } else {
        Err(ApiError::NotFound(format!(
            "only groups have rollouts, not {kind}"
        )))
    }
}

fn view(row: &RolloutRow) -> Value {
    let rollout = &row.rollout;
    json!({
        "id": row.rollout_id,
        "state": rollout.state().map(RolloutState::as_str),
        "spec": rollout.spec(),
        "requested_by": rollout.requested_by(),
        "started_at": row.started_at,
        "updated_at": row.updated_at,
        "failure": rollout.failure(),
        "version_check": rollout.check(),
        "containers": rollout.targets().iter().map(|target| json!({
            "vm": target.vm,
            "node_id": target.node_id,
            "replaced_container_id": target.container_id,
            "progress": target.step,
        })).collect::<Vec<_>>(),
    })
}

fn duration_ms(field: &'static str, text: Option<&str>, default: u64) -> Result<u64, FieldError> {
    let Some(text) = text else {
        return Ok(default);
    };
    // Zero (`0s`) is a duration too here: no pause.
    let zero = text.trim().trim_start_matches('0');
    if text.trim().starts_with('0') && matches!(zero, "s" | "m" | "h" | "d") {
        return Ok(0);
    }
    parse_ttl(text)
        .map(|duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
        .map_err(|problem| FieldError::at(format!("/{field}"), problem))
}

/// The group's containers, each with the launch that made it (its replacement repeats it).
async fn targets(
    state: &AppState,
    tenant_id: Uuid,
    group: &str,
) -> Result<Vec<RolloutTarget>, ApiError> {
    let filter = ContainerFilter {
        group: Some(group.to_owned()),
        live_only: true,
        limit: MAX_TARGETS + 1,
        ..ContainerFilter::default()
    };
    let rows = read::list_containers(&state.pool, tenant_id, &filter).await?;
    if rows.len() > usize::try_from(MAX_TARGETS).unwrap_or(usize::MAX) {
        return Err(ApiError::Conflict(format!(
            "group `{group}` has more than {MAX_TARGETS} containers: one rollout replaces at most \
             that many"
        )));
    }
    let mut targets = Vec::new();
    for row in rows {
        if row.container.state == ContainerState::Gone {
            continue;
        }
        let id = row.container.id.clone();
        let launch = launch_of(&state.pool, tenant_id, &id).await?;
        let operation = launch
            .map(|launch| serde_json::from_value::<ContainerOperation>(launch.operation))
            .transpose()
            .map_err(ApiError::internal)?;
        let Some(ContainerOperation::Launch { node_id, spec }) = operation else {
            return Err(ApiError::Conflict(format!(
                "container `{id}` on VM `{}` was not launched through the API: a rollout \
                 cannot launch its replacement",
                row.vm
            )));
        };
        targets.push(RolloutTarget {
            vm: row.vm,
            node_id,
            container_id: id,
            launch: spec,
            step: Step::Pending,
        });
    }
    Ok(targets)
}

/// `POST /api/v1/tenants/{tenant}/groups/{group}/rollouts`: starts replacing the group's
/// containers by containers of `image`.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/{kind}/{name}/rollouts", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "groups"),
        ("name" = String, Path, description = "The group's name")),
    request_body = RolloutRequest,
    responses((status = 201, description = "The rollout", body = Object),
        (status = 403, description = "The role may not manage VMs", body = crate::problem::Problem),
        (status = 404, description = "No such group", body = crate::problem::Problem),
        (status = 409, description = "A rollout of the group is under way, or a container was not launched through the API", body = crate::problem::Problem),
        (status = 422, description = "Invalid image, max_unavailable or durations", body = crate::problem::Problem)))]
pub async fn start(
    State(state): State<AppState>,
    tenant: Tenant<ManageVms>,
    Path(GroupPath { kind, name }): Path<GroupPath>,
    ApiJson(request): ApiJson<RolloutRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let group = group_of(&kind, &name)?;
    let mut errors = Vec::new();
    if let Err(problem) = check_image(&request.image) {
        errors.push(FieldError::at("/image", problem));
    }
    let health = duration_ms("health_timeout", request.health_timeout.as_deref(), 60_000);
    let pause = duration_ms("pause_between", request.pause_between.as_deref(), 0);
    let (health_timeout_ms, pause_between_ms) = match (health, pause) {
        (Ok(health), Ok(pause)) => (health, pause),
        (health, pause) => {
            errors.extend(health.err());
            errors.extend(pause.err());
            (0, 0)
        }
    };
    if request.health_timeout.is_some() && health_timeout_ms == 0 {
        errors.push(FieldError::at("/health_timeout", "longer than zero"));
    }
    let max_unavailable = request.max_unavailable.unwrap_or(1);
    if max_unavailable == 0 {
        errors.push(FieldError::at("/max_unavailable", "at least 1"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let tenant_id = tenant.tenant_id;
    existing_group(&state.pool, tenant_id, &group).await?;
    // One start of a group's rollout at a time, across replicas, until the read model shows it.
    let mut exclusive = state.pool.begin().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("rollout {tenant_id} {group}"))
            .fetch_one(&mut *exclusive)
            .await?;
    if !locked {
        return Err(ApiError::Conflict(format!(
            "a rollout of group `{group}` is being started: retry once it is"
        )));
    }
    if let Some(running) = active_of_group(&state.pool, tenant_id, &group).await? {
        return Err(ApiError::Conflict(format!(
            "rollout `{running}` of group `{group}` is under way (or paused): let it finish or \
             abort it first"
        )));
    }
    let targets = targets(&state, tenant_id, &group).await?;
    if targets.is_empty() || usize::try_from(max_unavailable).unwrap_or(usize::MAX) > targets.len()
    {
        return Err(ApiError::Validation(vec![FieldError::at(
            "/max_unavailable",
            format!(
                "from 1 to the group's {} containers launched through the API",
                targets.len()
            ),
        )]));
    }
    let spec = RolloutSpec {
        group,
        image: request.image,
        max_unavailable,
        health_timeout_ms,
        pause_between_ms,
        force: request.force.unwrap_or(false),
    };
    let rollout_id = Uuid::now_v7();
    let command = RolloutCommand::Start {
        spec,
        targets,
        requested_by: tenant.actor().audit_name(),
    };
    let row = steer(&state, &tenant, rollout_id, command).await?;
    exclusive.commit().await?;
    Ok((StatusCode::CREATED, Json(view(&row))))
}

/// Runs `command` on the rollout and answers it as the read model then shows it.
async fn steer(
    state: &AppState,
    tenant: &Tenant<ManageVms>,
    rollout_id: Uuid,
    command: RolloutCommand,
) -> Result<RolloutRow, ApiError> {
    let actor = tenant.actor().audit_name();
    let position = state
        .fleet
        .rollout(tenant.tenant_id, rollout_id, command, &actor)
        .await
        .map_err(|error| match error {
            CommandError::Rejected(RolloutError::NotFound) => {
                ApiError::NotFound(format!("there is no rollout `{rollout_id}`"))
            }
            CommandError::Rejected(refused) => ApiError::Conflict(refused.to_string()),
            other => other.into(),
        })?;
    if let Some(position) = position {
        let _ = state
            .rollout_view
            .wait_for(position, std::time::Duration::from_secs(5))
            .await;
    }
    if let Some(row) = get_rollout(&state.pool, tenant.tenant_id, rollout_id).await? {
        return Ok(row);
    }
    // Recorded, not shown yet: as the log holds it.
    let rollout: Rollout = state
        .fleet
        .read_rollout(tenant.tenant_id, rollout_id)
        .await
        .map_err(|error| ApiError::internal(error.to_string()))?;
    let now = chrono::Utc::now();
    Ok(RolloutRow {
        rollout_id,
        rollout,
        started_at: now,
        updated_at: now,
    })
}

async fn of_group(
    state: &AppState,
    tenant_id: Uuid,
    (kind, name, id): (&str, &str, &str),
) -> Result<RolloutRow, ApiError> {
    let group = group_of(kind, name)?;
    let missing = || ApiError::NotFound(format!("group `{group}` has no rollout `{id}`"));
    let rollout_id = Uuid::parse_str(id).map_err(|_| missing())?;
    get_rollout(&state.pool, tenant_id, rollout_id)
        .await?
        .filter(|row| row.rollout.spec().is_some_and(|spec| spec.group == group))
        .ok_or_else(missing)
}

/// `GET /api/v1/tenants/{tenant}/groups/{group}/rollouts/{id}`: the rollout and each container's
/// progress.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}/{name}/rollouts/{id}", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "groups"),
        ("name" = String, Path, description = "The group's name"), ("id" = String, Path, description = "The rollout's id")),
    responses((status = 200, description = "The rollout", body = Object),
        (status = 404, description = "No such rollout of the group", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ReadFleet>,
    Path(RolloutPath { kind, name, id, .. }): Path<RolloutPath>,
) -> Result<Json<Value>, ApiError> {
    let row = of_group(&state, tenant.tenant_id, (&kind, &name, &id)).await?;
    Ok(Json(view(&row)))
}

/// `POST /api/v1/tenants/{tenant}/groups/{group}/rollouts/{id}/{action}`: `pause` (what is under
/// way finishes, nothing new starts), `resume`, or `abort` (for good; nothing is undone).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/{kind}/{name}/rollouts/{id}/{action}", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "groups"),
        ("name" = String, Path, description = "The group's name"), ("id" = String, Path, description = "The rollout's id"),
        ("action" = String, Path, description = "`pause`, `resume` or `abort`")),
    responses((status = 200, description = "The rollout", body = Object),
        (status = 403, description = "The role may not manage VMs", body = crate::problem::Problem),
        (status = 404, description = "No such rollout or action", body = crate::problem::Problem),
        (status = 409, description = "The rollout has ended", body = crate::problem::Problem)))]
pub async fn act(
    State(state): State<AppState>,
    tenant: Tenant<ManageVms>,
    Path(RolloutPath {
        kind,
        name,
        id,
        action,
    }): Path<RolloutPath>,
) -> Result<Json<Value>, ApiError> {
    let row = of_group(&state, tenant.tenant_id, (&kind, &name, &id)).await?;
    let command = match action.as_deref() {
        Some("pause") => RolloutCommand::Pause,
        Some("resume") => RolloutCommand::Resume,
        Some("abort") => RolloutCommand::Abort,
        other => {
            return Err(ApiError::NotFound(format!(
                "rollouts have no action `{}`: pause, resume or abort",
                other.unwrap_or_default()
            )))
        }
    };
    let row = steer(&state, &tenant, row.rollout_id, command).await?;
    Ok(Json(view(&row)))
}

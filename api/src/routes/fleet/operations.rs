//! Operations on Envoy containers, carried out by the VM's agent through the Docker API: launch
//! one for a group (`POST /vms/{name}/containers`), restart, stop or start one
//! (`POST /containers/{id}/{action}`), remove one (`DELETE /containers/{id}`). Each is recorded
//! in the VM's history with who asked, then its outcome, and answers 202 with its job.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::Response;
use efms_commands::fleet::presence;
use efms_commands::CommandError;
use efms_domain::envoy::check_name;
use efms_domain::fleet::operations::{check_launch, check_launch_node_id};
use efms_domain::fleet::{ContainerOperation, LaunchSpec, VmError, VmName};
use efms_projections::fleet::operations::{launching, OperationRow};
use efms_projections::fleet::queries as read;
use serde::Deserialize;
use uuid::Uuid;

use super::containers::{find, ContainerPath};
use super::VmPath;
use crate::access::{ManageVms, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::routes::jobs;
use crate::routes::proxies::existing_group;
use crate::state::AppState;

/// `POST /vms/{name}/containers`: an Envoy container to start for a group.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// The group whose configuration the proxy runs.
    group: String,
    /// Its proxy's node id (default `{vm}-{group}-{n}`, the lowest free `n` from 1).
    node_id: Option<String>,
    /// The image (one the VM's engine holds: nothing is pulled).
    image: String,
    /// Its memory limit: bytes, or a number with `k`, `m` or `g` (powers of 1024).
    #[schema(value_type = Option<String>)]
    memory: Option<serde_json::Value>,
    /// How many CPUs it may use (such as 0.5).
    cpus: Option<f64>,
    /// The port of Envoy's admin interface on the host's 127.0.0.1 (default: the lowest free
    /// from 9901 on the VM); its health check asks `/ready` there.
    admin_port: Option<u16>,
    /// Environment variables (not for secrets: `docker inspect` shows them).
    env: Option<BTreeMap<String, String>>,
    /// Labels besides `efms.node_id`, `efms.group` and `efms.operation`.
    labels: Option<BTreeMap<String, String>>,
}

/// `{action}` of `POST /containers/{id}/{action}`.
#[derive(Debug, Deserialize)]
pub struct ActionPath {
    id: String,
    action: String,
}

/// A memory size: bytes, or a number with `k`, `m` or `g` (`b`, `kib`, `mb`… spellings too).
fn memory_bytes(value: &serde_json::Value) -> Option<u64> {
    if let Some(bytes) = value.as_u64() {
        return Some(bytes);
    }
    let text = value.as_str()?.trim().to_ascii_lowercase();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

/// What the API makes of an agent's refusal to act.
fn refused(vm: &VmName, error: CommandError<VmError>) -> ApiError {
    match error {
        CommandError::Rejected(
            VmError::NotReady(_) | VmError::NodeIdTaken(_) | VmError::AdminPortTaken(_),
        ) => ApiError::Conflict(error.to_string().replace("refused: ", "")),
        CommandError::Rejected(VmError::UnknownContainer(id)) => {
            ApiError::NotFound(format!("there is no container `{id}` on VM `{vm}`"))
        }
        other => super::vms::vm_error(vm, other),
    }
}

/// Asks the VM's agent to carry out `operation` and answers 202 with its job; 409 when the
/// VM's agent is not connected or the VM is not ready.
async fn operate(
    state: &AppState,
    tenant: &Tenant<ManageVms>,
    vm: &VmName,
    operation: ContainerOperation,
) -> Result<Response, ApiError> {
    let connected = presence::is_connected(&state.pool, tenant.tenant_id, vm.as_str()).await?;
    if !connected {
        return Err(ApiError::Conflict(format!(
            "the agent of VM `{vm}` is not connected: nothing can be carried out there now"
        )));
    }
    let operation_id = Uuid::now_v7();
    let actor = tenant.actor().audit_name();
    let asked = OperationRow {
        operation_id,
        vm_name: vm.to_string(),
        action: operation.action().to_owned(),
        container_id: operation.container_id().map(str::to_owned),
        node_id: None,
        operation: serde_json::to_value(&operation).map_err(ApiError::internal)?,
        requested_by: actor.clone(),
        requested_at: chrono::Utc::now(),
        state: "running".to_owned(),
        error: None,
        image_id: None,
        envoy_version: None,
        finished_at: None,
    };
    let position = state
        .fleet
        .operate(
            tenant.tenant_id,
            vm.as_str(),
            (operation_id, operation),
            &actor,
        )
        .await
        .map_err(|error| refused(vm, error))?;
    super::vms::wait(state, position).await;
    let view = match jobs::load(state, tenant.tenant_id, operation_id).await {
        Ok(view) => view,
        // Recorded, and not shown yet by a lagging read model: the job as it was asked.
        Err(ApiError::NotFound(_)) => jobs::operation_view(asked),
        Err(error) => return Err(error),
    };
    jobs::accepted(view, tenant.slug.as_str())
}

/// `POST /api/v1/tenants/{tenant}/vms/{name}/containers`: starts an Envoy container for a group
/// on the VM. The agent is handed the proxy's bootstrap (with its token) as a file; the container
/// shares the host's network, is health-checked on the admin `/ready`, restarts unless stopped.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/vms/{name}/containers", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "VM name")),
    request_body = LaunchRequest,
    responses((status = 202, description = "The operation's job", body = jobs::JobView),
        (status = 403, description = "The role may not manage VMs", body = crate::problem::Problem),
        (status = 404, description = "No such VM or group", body = crate::problem::Problem),
        (status = 409, description = "The VM's agent is not connected, or the node id is taken", body = crate::problem::Problem),
        (status = 422, description = "Invalid group, node id, image, limits, env or labels", body = crate::problem::Problem)))]
pub async fn launch(
    State(state): State<AppState>,
    tenant: Tenant<ManageVms>,
    Path(path): Path<VmPath>,
    ApiJson(request): ApiJson<LaunchRequest>,
) -> Result<Response, ApiError> {
    let vm = path.name()?;
    let mut errors = Vec::new();
    if let Err(problem) = check_name(&request.group) {
        errors.push(FieldError::at("/group", problem));
    }
    // Without one, the node id is `{vm}-{group}-{n}`, which must name a container too.
    let node_id = request
        .node_id
        .clone()
        .unwrap_or_else(|| format!("{vm}-{}-{}", request.group, u32::MAX));
    if let Err(problem) = check_launch_node_id(&node_id) {
        let problem = if request.node_id.is_some() {
            problem
        } else {
            "required: the default node id `{vm}-{group}-{n}` cannot name a container with \
             this group's name"
                .to_owned()
        };
        errors.push(FieldError::at("/node_id", problem));
    }
    let memory_bytes = match &request.memory {
        None => None,
        Some(value) => {
            let bytes = memory_bytes(value);
            if bytes.is_none() {
                errors.push(FieldError::at(
                    "/memory",
                    "bytes, or a number with `k`, `m` or `g`",
                ));
            }
            bytes
        }
    };
    let spec = LaunchSpec {
        group: request.group,
        image: request.image,
        memory_bytes,
        cpus: request.cpus,
        admin_port: request.admin_port.unwrap_or(0),
        env: request.env.unwrap_or_default(),
        labels: request.labels.unwrap_or_default(),
    };
    if let Err((pointer, problem)) = check_launch(&spec) {
        errors.push(FieldError::at(pointer, problem));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    read::get_vm(&state.pool, tenant.tenant_id, vm.as_str())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no VM `{vm}`")))?;
    existing_group(&state.pool, tenant.tenant_id, &spec.group).await?;
    let node_id = request.node_id.unwrap_or_default();
    if !node_id.is_empty() {
        let running = read::container_of_proxy(&state.pool, tenant.tenant_id, &node_id).await?;
        if let Some(other) = running.filter(|row| row.gone_at.is_none()) {
            return Err(ApiError::Conflict(format!(
                "node id `{node_id}` is container `{}` on VM `{}`",
                other.container.id, other.vm
            )));
        }
        if let Some(other) = launching(&state.pool, tenant.tenant_id, &node_id).await? {
            return Err(ApiError::Conflict(format!(
                "node id `{node_id}` is being launched on VM `{other}`"
            )));
        }
    }
    let operation = ContainerOperation::Launch { node_id, spec };
    operate(&state, &tenant, &vm, operation).await
}

/// `POST /api/v1/tenants/{tenant}/containers/{id}/{action}`: `restart`, `stop` or `start` a
/// container, through its VM's agent.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/containers/{id}/{action}", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"),
        ("id" = String, Path, description = "Docker's container id (a unique prefix of 12 or more characters)"),
        ("action" = String, Path, description = "`restart`, `stop` or `start`")),
    responses((status = 202, description = "The operation's job", body = jobs::JobView),
        (status = 403, description = "The role may not manage VMs", body = crate::problem::Problem),
        (status = 404, description = "No such container or action", body = crate::problem::Problem),
        (status = 409, description = "The VM's agent is not connected, or the container is gone", body = crate::problem::Problem)))]
pub async fn act(
    State(state): State<AppState>,
    tenant: Tenant<ManageVms>,
    Path(ActionPath { id, action }): Path<ActionPath>,
) -> Result<Response, ApiError> {
    let make: fn(String) -> ContainerOperation = match action.as_str() {
        "restart" => |container_id| ContainerOperation::Restart { container_id },
        "stop" => |container_id| ContainerOperation::Stop { container_id },
        "start" => |container_id| ContainerOperation::Start { container_id },
        _ => {
            return Err(ApiError::NotFound(format!(
                "containers have no action `{action}`: restart, stop or start"
            )))
        }
    };
    on_container(&state, &tenant, &id, make).await
}

/// `DELETE /api/v1/tenants/{tenant}/containers/{id}`: stops and removes a container, through its
/// VM's agent (its history stays).
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/containers/{id}", tag = "fleet",
    params(("tenant" = String, Path, description = "Tenant slug"),
        ("id" = String, Path, description = "Docker's container id (a unique prefix of 12 or more characters)")),
    responses((status = 202, description = "The operation's job", body = jobs::JobView),
        (status = 403, description = "The role may not manage VMs", body = crate::problem::Problem),
        (status = 404, description = "No such container", body = crate::problem::Problem),
        (status = 409, description = "The VM's agent is not connected, or the container is gone", body = crate::problem::Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    tenant: Tenant<ManageVms>,
    Path(ContainerPath { id }): Path<ContainerPath>,
) -> Result<Response, ApiError> {
    let make = |container_id| ContainerOperation::Remove { container_id };
    on_container(&state, &tenant, &id, make).await
}

/// Asks for `make` of the container `id` names, on its VM.
async fn on_container(
    state: &AppState,
    tenant: &Tenant<ManageVms>,
    id: &str,
    make: fn(String) -> ContainerOperation,
) -> Result<Response, ApiError> {
    let row = find(state, tenant.tenant_id, id).await?;
    if row.gone_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "container `{}` is gone from VM `{}`",
            row.container.id, row.vm
        )));
    }
    let vm = VmName::parse(row.vm.as_str()).map_err(ApiError::internal)?;
    operate(state, tenant, &vm, make(row.container.id)).await
}

#[cfg(test)]
mod tests {
    use super::memory_bytes;
    use serde_json::json;

    #[test]
    fn a_memory_size_is_bytes_or_a_number_with_a_binary_unit() {
        assert_eq!(memory_bytes(&json!(1024)), Some(1024));
        assert_eq!(memory_bytes(&json!("64m")), Some(64 << 20));
        assert_eq!(memory_bytes(&json!("1GiB")), Some(1 << 30));
        assert_eq!(memory_bytes(&json!("12 kb")), Some(12 << 10));
        assert_eq!(memory_bytes(&json!("lots")), None);
        assert_eq!(memory_bytes(&json!("5t")), None);
        assert_eq!(memory_bytes(&json!(-1)), None);
    }
}

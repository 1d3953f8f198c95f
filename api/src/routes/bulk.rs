//! Bulk changes (API-BK-001, API-BK-002): up to 10,000 operations across kinds in one commit, or
//! none of them and a report of every operation at fault.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use efms_domain::config::{Change, Expect, Operation};
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, AsOf};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::resources::{branch_of, commit, BranchParams};
use crate::access::{tenant_access, Access};
use crate::app::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery};

/// How long a bulk request waits for the read models to apply its commit.
const BULK_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The most operations one bulk request may carry.
pub const MAX_OPERATIONS: usize = 10_000;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkOp {
    /// Create `resource` (it must not exist).
    Create,
    /// Replace the resource named in `resource` (it must exist).
    Replace,
    /// Apply `patch` (RFC 6902) or `merge_patch` (RFC 7396) to `name`.
    Patch,
    /// Delete `name`.
    Delete,
}

/// One operation of a bulk request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkOperation {
    /// `create`, `replace`, `patch` or `delete`.
    op: BulkOp,
    /// The collection: `clusters`, `endpoints`, `listeners`, `routes`, `secrets` or `groups`.
    kind: String,
    /// The resource's name (patch and delete).
    name: Option<String>,
    /// The Envoy resource (create and replace).
    #[schema(value_type = Option<Object>)]
    resource: Option<Value>,
    /// An RFC 6902 JSON Patch (patch).
    #[schema(value_type = Option<Vec<Object>>)]
    patch: Option<Value>,
    /// An RFC 7396 merge patch (patch).
    #[schema(value_type = Option<Object>)]
    merge_patch: Option<Value>,
    /// The version the resource must be at (replace, patch, delete).
    if_match: Option<u64>,
}

/// A bulk request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// The commit message.
    message: Option<String>,
    /// The operations, applied in order, all or none.
    operations: Vec<BulkOperation>,
}

/// What a bulk request did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkResult {
    /// The revision the operations landed in (`null` when they changed nothing).
    revision: Option<i64>,
    /// How many operations were applied.
    operations: usize,
}

/// `POST /api/v1/tenants/{tenant}/bulk`: every operation in one revision, or none and a 422
/// naming each operation at fault by its index (`/operations/{i}/…`).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/bulk", tag = "configuration",
    params(("tenant" = String, Path, description = "Tenant slug"), BranchParams),
    request_body(content = BulkRequest, description = "Up to 10,000 operations"),
    responses((status = 200, description = "All operations landed in one revision", body = BulkResult),
        (status = 404, description = "No such tenant, or a resource to patch or delete is missing", body = crate::openapi::Problem),
        (status = 409, description = "A create found the resource, or a delete is still referenced", body = crate::openapi::Problem),
        (status = 412, description = "An `if_match` is stale", body = crate::openapi::Problem),
        (status = 422, description = "Operations at fault, each named by its pointer; nothing changed", body = crate::openapi::Problem),
        (status = 503, description = "Committed, but the read models have not applied it within two minutes", body = crate::openapi::Problem)))]
pub async fn bulk(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path(tenant): Path<String>,
    ApiQuery(params): ApiQuery<BranchParams>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<BulkRequest>,
) -> Result<Json<BulkResult>, ApiError> {
    let tenant = tenant_access(&state, &actor, &tenant, Access::Write).await?;
    let branch = branch_of(&state, &tenant, params.branch).await?;
    if request.operations.len() > MAX_OPERATIONS {
        return Err(ApiError::Validation(vec![FieldError::at(
            "/operations",
            format!("at most {MAX_OPERATIONS} operations per request"),
        )]));
    }
    let mut changes = Vec::with_capacity(request.operations.len());
    let mut keys = Vec::with_capacity(request.operations.len());
    let mut errors = Vec::new();
    for (index, operation) in request.operations.iter().enumerate() {
        match change_of(&state, (tenant.tenant_id, &branch), operation).await {
            Ok(change) => {
                keys.push(key_of(&change));
                changes.push(change);
            }
            Err(faults) => errors.extend(faults.into_iter().map(|(pointer, detail)| {
                FieldError::at(format!("/operations/{index}{pointer}"), detail)
            })),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let count = changes.len();
    let mut headers = headers;
    if let Some(message) = &request.message {
        let value = message.trim().parse().map_err(|_| {
            ApiError::Validation(vec![FieldError::at(
                "/message",
                "a commit message is visible ASCII text",
            )])
        })?;
        headers.insert(super::resources::COMMIT_MESSAGE_HEADER, value);
    }
    let before = read::head_revision(&state.pool, tenant.tenant_id, &branch).await?;
    let position = commit(
        &state,
        &actor,
        &headers,
        (&tenant, &branch),
        Operation::Bulk,
        changes,
    )
    .await
    .map_err(|error| at_operation(error, &keys))?;
    if let Some(position) = position {
        // A large commit takes the read models a while: the answer names its revision, so it
        // waits for them (longer than single writes do).
        if !state.config.wait_for(position, BULK_READ_TIMEOUT).await {
            return Err(ApiError::Unavailable(
                "the changes are committed; the read models are still applying them".to_owned(),
            ));
        }
    }
    let after = read::head_revision(&state.pool, tenant.tenant_id, &branch).await?;
    Ok(Json(BulkResult {
        revision: (after != before).then_some(after),
        operations: count,
    }))
}

/// The resource a change touches.
fn key_of(change: &Change) -> (ResourceKind, String) {
    match change {
        Change::Put { kind, name, .. } | Change::Delete { kind, name, .. } => (*kind, name.clone()),
    }
}

/// Names the operation a refused commit is about, by its index, where the refusal names one.
fn at_operation(error: ApiError, keys: &[(ResourceKind, String)]) -> ApiError {
    // The detail names the resource; it is prefixed with the first operation on it.
    let prefixed = |detail: String| {
        let prefix = keys
            .iter()
            .position(|(kind, name)| detail.contains(&format!("{kind} `{name}`")))
            .map_or_else(String::new, |index| format!("operation {index}: "));
        format!("{prefix}{detail}")
    };
    match error {
        ApiError::Conflict(detail) => ApiError::Conflict(prefixed(detail)),
        ApiError::NotFound(detail) => ApiError::NotFound(prefixed(detail)),
        ApiError::PreconditionFailed(detail) => ApiError::PreconditionFailed(prefixed(detail)),
        other => other,
    }
}

type Faults = Vec<(String, String)>;

/// The change one operation asks for, or what is wrong with it (pointers within the operation).
async fn change_of(
    state: &AppState,
    (tenant_id, branch): (uuid::Uuid, &str),
    operation: &BulkOperation,
) -> Result<Change, Faults> {
    let fault = |pointer: &str, detail: String| vec![(pointer.to_owned(), detail)];
    let kind = ResourceKind::from_collection(&operation.kind).ok_or_else(|| {
        fault(
            "/kind",
            format!(
                "`{}` is not a collection: clusters, endpoints, listeners, routes, secrets or groups",
                operation.kind
            ),
        )
    })?;
    let present = operation.if_match.map_or(Expect::Present, Expect::Version);
    let put = |json: &Value, expect: Expect, at: &str| {
        Change::put(kind, json, expect).map_err(|violations| {
            violations
                .into_iter()
                .map(|v| (format!("{at}{}", v.pointer), v.message))
                .collect::<Faults>()
        })
    };
    match operation.op {
        BulkOp::Create | BulkOp::Replace => {
            let resource = operation.resource.as_ref().ok_or_else(|| {
                fault(
                    "/resource",
                    "a create or replace needs `resource`".to_owned(),
                )
            })?;
            let expect = if operation.op == BulkOp::Create {
                Expect::Absent
            } else {
                present
            };
            put(resource, expect, "/resource")
        }
        BulkOp::Delete => {
            let name = operation
                .name
                .clone()
                .ok_or_else(|| fault("/name", "a delete needs `name`".to_owned()))?;
            Ok(Change::Delete {
                kind,
                name,
                expect: present,
            })
        }
        BulkOp::Patch => {
            let name = operation
                .name
                .as_deref()
                .ok_or_else(|| fault("/name", "a patch needs `name`".to_owned()))?;
            let current = read::get_resource(&state.pool, tenant_id, branch, kind, name, AsOf::Now)
                .await
                .map_err(|error| fault("", format!("cannot read the resource: {error}")))?
                .ok_or_else(|| fault("/name", format!("there is no {kind} `{name}`")))?;
            let mut document = current.document;
            match (&operation.patch, &operation.merge_patch) {
                (Some(patch), None) => {
                    let patch: json_patch::Patch =
                        serde_json::from_value(patch.clone()).map_err(|error| {
                            fault("/patch", format!("not an RFC 6902 patch: {error}"))
                        })?;
                    json_patch::patch(&mut document, &patch).map_err(|error| {
                        fault(
                            &format!("/patch/{}", error.operation),
                            format!("the patch does not apply: {error}"),
                        )
                    })?;
                }
                (None, Some(merge)) => json_patch::merge(&mut document, merge),
                _ => {
                    return Err(fault(
                        "",
                        "a patch needs exactly one of `patch` and `merge_patch`".to_owned(),
                    ))
                }
            }
            let expect = Expect::Version(
                operation
                    .if_match
                    .unwrap_or_else(|| u64::try_from(current.version).unwrap_or_default()),
            );
            let change = put(&document, expect, "/patch")?;
            if key_of(&change).1 != name {
                return Err(fault(
                    "/patch",
                    "a patch may not rename the resource".to_owned(),
                ));
            }
            Ok(change)
        }
    }
}

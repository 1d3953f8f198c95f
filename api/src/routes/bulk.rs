//! Bulk changes (API-BK-001, API-BK-002): up to 10,000 operations across kinds in one commit, or
//! none of them and a report of every operation at fault.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use efms_domain::config::limits;
use efms_domain::config::{Change, Expect, Operation};
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, AsOf};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::jobs;
use super::patching::{check_written, refusal_at};
use super::resources::{change_of, commit, effective_attachments, BranchParams};
use crate::access::{Tenant, TenantBranch, WriteConfig};
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery, CommitMeta};
use crate::state::AppState;

/// How long a request whose commit is as large as the tenant (a bulk, a new branch) waits for the
/// read models to apply it.
pub(crate) const BULK_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The most operations one bulk request may carry.
pub const MAX_OPERATIONS: usize = 10_000;
/// The most bytes of documents one bulk request may write in all: each patch of a group's
/// resources writes one document per resource, so a small request can ask for much more.
pub const MAX_WRITTEN_BYTES: usize = 64 * 1024 * 1024;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BulkOp {
    /// Create `resource` (it must not exist).
    Create,
    /// Replace the resource named in `resource` (it must exist).
    Replace,
    /// Apply `patch` (RFC 6902) or `merge_patch` (RFC 7396) to `name`, or to every resource of
    /// the kind that `group` attaches, its own and its ancestors' (FR-CL-003).
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
    /// The collection: `clusters`, `endpoints`, `listeners`, `routes`, `secrets`, `groups` or
    /// `templates`.
    kind: String,
    /// The resource's name (patch and delete).
    name: Option<String>,
    /// Patch every resource of `kind` this group attaches (instead of `name`).
    group: Option<String>,
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
    pub(crate) operations: Vec<BulkOperation>,
}

/// What a bulk request did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BulkResult {
    /// The revision the operations landed in (`null` when they changed nothing).
    pub revision: Option<i64>,
    /// How many changes were applied (a patch of a group counts one per resource).
    pub operations: usize,
}

/// `POST /api/v1/tenants/{tenant}/bulk`: every operation in one revision, or none and a 422
/// naming each operation at fault by its index (`/operations/{i}/…`).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/bulk", tag = "configuration",
    params(("tenant" = String, Path, description = "Tenant slug"), BranchParams),
    request_body(content = BulkRequest, description = "Up to 10,000 operations; more than 1,000 run as a job"),
    responses((status = 200, description = "All operations landed in one revision", body = BulkResult),
        (status = 202, description = "More than 1,000 operations: a job was started (`Location`: the job)", body = super::jobs::JobView),
        (status = 404, description = "No such tenant, or a resource to patch or delete is missing", body = crate::problem::Problem),
        (status = 409, description = "A create found the resource, or a delete is still referenced", body = crate::problem::Problem),
        (status = 412, description = "An `if_match` is stale", body = crate::problem::Problem),
        (status = 422, description = "Operations at fault, each named by its pointer (a patch past the document or operation limits among them); nothing changed", body = crate::problem::Problem),
        (status = 429, description = "More than 1,000 operations while the tenant runs as many bulk jobs as it may (`Retry-After`)", body = crate::problem::Problem),
        (status = 503, description = "Committed, but the read models have not applied it within two minutes", body = crate::problem::Problem)))]
pub async fn bulk(
    State(state): State<AppState>,
    ApiQuery(_): ApiQuery<BranchParams>,
    TenantBranch { tenant, branch }: TenantBranch<WriteConfig>,
    meta: CommitMeta,
    ApiJson(request): ApiJson<BulkRequest>,
) -> Result<Response, ApiError> {
    if request.operations.len() > MAX_OPERATIONS {
        return Err(ApiError::Validation(vec![FieldError::at(
            "/operations",
            format!("at most {MAX_OPERATIONS} operations per request"),
        )]));
    }
    if request.operations.len() > jobs::SYNC_LIMIT {
        let total = request.operations.len();
        let job = (state.clone(), tenant.clone(), branch.clone());
        let work = move |progress: std::sync::Arc<jobs::Progress>| async move {
            let (state, tenant, branch) = job;
            let result = apply(&state, meta, (&tenant, &branch), &request, Some(&progress)).await?;
            Ok(jobs::JobDone {
                applied: result.operations,
                revision: result.revision,
            })
        };
        return jobs::start(state, &tenant, &branch, total, work).await;
    }
    let result = apply(&state, meta, (&tenant, &branch), &request, None).await?;
    Ok(Json(result).into_response())
}

/// Validates and commits a bulk request; `progress`, when given, follows a job's way through it.
pub(crate) async fn apply(
    state: &AppState,
    meta: CommitMeta,
    (tenant, branch): (&Tenant<WriteConfig>, &str),
    request: &BulkRequest,
    progress: Option<&jobs::Progress>,
) -> Result<BulkResult, ApiError> {
    let mut changes = Vec::with_capacity(request.operations.len());
    // Each change's resource and the operation it comes from.
    let mut keys = Vec::with_capacity(request.operations.len());
    let mut errors = Vec::new();
    let mut written = 0;
    for (index, operation) in request.operations.iter().enumerate() {
        if let Some(progress) = progress {
            progress.validated(index);
        }
        match operation_changes(state, (tenant, branch), operation).await {
            Ok(expanded) => {
                for change in expanded {
                    if let Change::Put { document, .. } = &change {
                        written += limits::json_size(document);
                    }
                    keys.push((key_of(&change), index));
                    changes.push(change);
                }
                if written > MAX_WRITTEN_BYTES {
                    return Err(ApiError::Validation(vec![FieldError::at(
                        format!("/operations/{index}"),
                        format!(
                            "the operations up to this one write more than {MAX_WRITTEN_BYTES} \
                             bytes of documents, the limit of a bulk request; split it"
                        ),
                    )]));
                }
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
    let meta = match &request.message {
        Some(message) => {
            let message = message.trim();
            if !message
                .chars()
                .all(|c| c == '\t' || (' '..='~').contains(&c))
            {
                return Err(ApiError::Validation(vec![FieldError::at(
                    "/message",
                    "a commit message is visible ASCII text",
                )]));
            }
            meta.with_message(Some(message.to_owned()).filter(|text| !text.is_empty()))
        }
        None => meta,
    };
    if let Some(progress) = progress {
        progress.committing(request.operations.len());
    }
    let before = read::head_revision(&state.pool, tenant.tenant_id, branch).await?;
    let position = commit(state, &meta, (tenant, branch), Operation::Bulk, changes)
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
    let after = read::head_revision(&state.pool, tenant.tenant_id, branch).await?;
    Ok(BulkResult {
        revision: (after != before).then_some(after),
        operations: count,
    })
}

/// The resource a change touches.
fn key_of(change: &Change) -> (ResourceKind, String) {
    let (kind, name) = change.key();
    (kind, name.to_owned())
}

/// Names the operation a refused commit is about, by its index, where the refusal names one.
fn at_operation(error: ApiError, keys: &[((ResourceKind, String), usize)]) -> ApiError {
    // The detail names the resource; it is prefixed with the first operation on it.
    let index_of = |detail: &str| {
        keys.iter()
            .find(|((kind, name), _)| detail.contains(&format!("{kind} `{name}`")))
            .map(|(_, index)| *index)
    };
    let prefixed = |detail: String| {
        let prefix =
            index_of(&detail).map_or_else(String::new, |index| format!("operation {index}: "));
        format!("{prefix}{detail}")
    };
    match error {
        // A resource declared from a template that does not render: its operation's resource.
        ApiError::Validation(errors) => ApiError::Validation(
            errors
                .into_iter()
                .map(|error| match (index_of(&error.detail), error.pointer) {
                    (Some(index), Some(pointer)) if !pointer.is_empty() => FieldError::at(
                        format!("/operations/{index}/resource{pointer}"),
                        error.detail,
                    ),
                    (_, pointer) => FieldError {
                        pointer,
                        ..FieldError::at("", prefixed(error.detail.clone()))
                    },
                })
                .collect(),
        ),
        ApiError::Conflict(detail) => ApiError::Conflict(prefixed(detail)),
        ApiError::NotFound(detail) => ApiError::NotFound(prefixed(detail)),
        ApiError::PreconditionFailed(detail) => ApiError::PreconditionFailed(prefixed(detail)),
        other => other,
    }
}

type Faults = Vec<(String, String)>;

/// The changes one operation asks for (several for a patch of a group's resources), or what is
/// wrong with it (pointers within the operation).
async fn operation_changes(
    state: &AppState,
    (tenant, branch): (&crate::access::TenantAccess, &str),
    operation: &BulkOperation,
) -> Result<Vec<Change>, Faults> {
    let kind = ResourceKind::from_collection(&operation.kind).ok_or_else(|| {
        fault(
            "/kind",
            format!(
                "`{}` is not a collection: clusters, endpoints, listeners, routes, secrets, groups or templates",
                operation.kind
            ),
        )
    })?;
    let present = operation.if_match.map_or(Expect::Present, Expect::Version);
    let scope = (tenant.tenant_id, branch);
    match (operation.op, &operation.name, &operation.group) {
        (BulkOp::Patch, None, Some(group)) => {
            let attached = effective_attachments(state, tenant, branch, group, AsOf::Now)
                .await
                .map_err(|error| fault("/group", error.to_string()))?;
            let mut changes = Vec::new();
            for item in attached.into_iter().filter(|item| item.kind == kind) {
                changes.push(patch_change(state, scope, kind, &item.name, operation).await?);
            }
            Ok(changes)
        }
        (_, _, Some(_)) => Err(fault(
            "/group",
            "`group` goes with a patch, instead of `name`".to_owned(),
        )),
        (BulkOp::Create | BulkOp::Replace, _, None) => {
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
            check_written(resource, &state.limits.commit)
                .map_err(|error| faults_under("/resource", error))?;
            Ok(vec![put(kind, resource, expect, "/resource")?])
        }
        (BulkOp::Delete, name, None) => {
            let name = name
                .clone()
                .ok_or_else(|| fault("/name", "a delete needs `name`".to_owned()))?;
            Ok(vec![Change::Delete {
                kind,
                name,
                expect: present,
            }])
        }
        (BulkOp::Patch, name, None) => {
            let name = name
                .as_deref()
                .ok_or_else(|| fault("/name", "a patch needs `name` or `group`".to_owned()))?;
            Ok(vec![
                patch_change(state, scope, kind, name, operation).await?,
            ])
        }
    }
}

fn fault(pointer: &str, detail: String) -> Faults {
    vec![(pointer.to_owned(), detail)]
}

/// A create or replace of `json` (pointers under `at`).
fn put(kind: ResourceKind, json: &Value, expect: Expect, at: &str) -> Result<Change, Faults> {
    change_of(kind, json, expect, None).map_err(|error| faults_under(at, error))
}

/// An error's problems as faults, their pointers under `at`.
fn faults_under(at: &str, error: ApiError) -> Faults {
    match error {
        ApiError::Validation(errors) => errors
            .into_iter()
            .map(|e| (format!("{at}{}", e.pointer.unwrap_or_default()), e.detail))
            .collect::<Faults>(),
        other => vec![(at.to_owned(), other.to_string())],
    }
}

/// The operation's patch applied to the resource `name` as it is now.
async fn patch_change(
    state: &AppState,
    (tenant_id, branch): (uuid::Uuid, &str),
    kind: ResourceKind,
    name: &str,
    operation: &BulkOperation,
) -> Result<Change, Faults> {
    let current = read::get_resource(&state.pool, tenant_id, branch, kind, name, AsOf::Now)
        .await
        .map_err(|error| fault("", format!("cannot read the resource: {error}")))?
        .ok_or_else(|| fault("/name", format!("there is no {kind} `{name}`")))?;
    let declared = read::derivation_of(&state.pool, tenant_id, branch, kind, name)
        .await
        .map_err(|error| fault("", format!("cannot read the resource: {error}")))?;
    if declared.is_some() {
        return Err(fault(
            "/name",
            format!("{kind} `{name}` is declared from a template: replace its declaration instead"),
        ));
    }
    let mut document = current.document;
    let limits = &state.limits.commit;
    let applied = match (&operation.patch, &operation.merge_patch) {
        (Some(patch), None) => {
            let patch: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|error| fault("/patch", format!("not an RFC 6902 patch: {error}")))?;
            limits::apply_patch(&mut document, &patch.0, limits).map_err(|r| (r, "/patch"))
        }
        (None, Some(merge)) => limits::apply_merge_patch(&mut document, merge, limits)
            .map_err(|refusal| (refusal, "/merge_patch")),
        _ => {
            return Err(fault(
                "",
                "a patch needs exactly one of `patch` and `merge_patch`".to_owned(),
            ))
        }
    };
    applied.map_err(|(refusal, at)| {
        let (pointer, detail) = refusal_at(&refusal, kind, name, at);
        vec![(pointer, detail)]
    })?;
    let expect = Expect::Version(
        operation
            .if_match
            .unwrap_or_else(|| u64::try_from(current.version).unwrap_or_default()),
    );
    let change = put(kind, &document, expect, "/patch")?;
    if key_of(&change).1 != name {
        return Err(fault(
            "/patch",
            "a patch may not rename the resource".to_owned(),
        ));
    }
    Ok(change)
}

/// The largest bulk request body: 10,000 operations of up to three kilobytes each. A job holds its
/// request until it ends, so this bounds what each running job keeps.
pub const BULK_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The bulk route, with its own body limit.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/tenants/{tenant}/bulk",
        axum::routing::post(bulk).layer(axum::extract::DefaultBodyLimit::max(BULK_BODY_LIMIT)),
    )
}

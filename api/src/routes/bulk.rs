//! Bulk changes (API-BK-001, API-BK-002): up to 10,000 operations across kinds in one commit, or
//! none of them and a report of every operation at fault.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use efms_commands::configuration::bulk::{BulkError, BulkProgress, OperationFault};
use efms_domain::config::bulk::{self as planned, Problem};
use efms_domain::config::Key;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::jobs;
use super::patching::{refusal_detail, too_large_detail};
use super::resources::{commit_request, BranchParams};
use crate::access::{Tenant, TenantBranch, WriteConfig};
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery, CommitMeta};
use crate::state::AppState;

/// The most operations one bulk request may carry.
pub const MAX_OPERATIONS: usize = 10_000;

/// One operation of a bulk request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkOperation {
    /// `create` (`resource`, which must not exist), `replace` (`resource`, which must exist),
    /// `patch` (`patch`, RFC 6902, or `merge_patch`, RFC 7396, applied to `name`, or to every
    /// resource of the kind that `group` attaches, its own and its ancestors': FR-CL-003) or
    /// `delete` (`name`).
    #[schema(value_type = String, pattern = "^(create|replace|patch|delete)$")]
    op: planned::BulkOp,
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
            let result = apply(&state, meta, (&tenant, &branch), request, Some(&progress)).await?;
            Ok(jobs::JobDone {
                applied: result.operations,
                revision: result.revision,
            })
        };
        return jobs::start(state, &tenant, &branch, total, work).await;
    }
    let result = apply(&state, meta, (&tenant, &branch), request, None).await?;
    Ok(Json(result).into_response())
}

/// Validates and commits a bulk request through the configuration service; `progress`, when
/// given, follows a job's way through it.
pub(crate) async fn apply(
    state: &AppState,
    meta: CommitMeta,
    (tenant, branch): (&Tenant<WriteConfig>, &str),
    request: BulkRequest,
    progress: Option<&jobs::Progress>,
) -> Result<BulkResult, ApiError> {
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
    let operations: Vec<planned::BulkOperation> =
        request.operations.into_iter().map(Into::into).collect();
    let request = commit_request(&meta, (tenant, branch));
    let progress = progress.map(|progress| progress as &dyn BulkProgress);
    let outcome = state
        .configuration
        .bulk(&request, &operations, progress)
        .await
        .map_err(bulk_error)?;
    Ok(BulkResult {
        revision: outcome.revision,
        operations: outcome.changes,
    })
}

impl From<BulkOperation> for planned::BulkOperation {
    fn from(operation: BulkOperation) -> Self {
        Self {
            op: operation.op,
            kind: operation.kind,
            name: operation.name,
            group: operation.group,
            resource: operation.resource,
            patch: operation.patch,
            merge_patch: operation.merge_patch,
            if_match: operation.if_match,
        }
    }
}

/// How a bulk write that did not land is answered: faults by their operation's pointer, a
/// refused commit traced to the operation whose resource it names.
fn bulk_error(error: BulkError) -> ApiError {
    match error {
        BulkError::Faults(faults) => {
            ApiError::Validation(faults.into_iter().map(field_error).collect())
        }
        error @ BulkError::TooMuchWritten { operation } => {
            ApiError::Validation(vec![FieldError::at(
                format!("/operations/{operation}"),
                error.to_string(),
            )])
        }
        BulkError::Refused { error, changes } => at_operation(error.into(), &changes),
        BulkError::Read(error) => error.into(),
        error @ BulkError::ReadModelsBehind => ApiError::Unavailable(error.to_string()),
    }
}

/// One operation's fault, its pointer under the operation's.
fn field_error(OperationFault { operation, fault }: OperationFault) -> FieldError {
    let detail = match fault.problem {
        Problem::Said(detail) => detail,
        Problem::DocumentTooLarge { limit } => too_large_detail(limit),
        Problem::Patch {
            kind,
            name,
            refusal,
        } => refusal_detail(&refusal, kind, &name),
    };
    FieldError::at(format!("/operations/{operation}{}", fault.pointer), detail)
}

/// Names the operation a refused commit is about, by its index, where the refusal names one.
fn at_operation(error: ApiError, keys: &[(Key, usize)]) -> ApiError {
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

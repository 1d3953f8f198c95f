//! The branch handlers: create, list, show, delete, diff against the base, and merge.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use efms_commands::configuration::ConfigServiceError;
use efms_domain::config::plans::BranchState;
use efms_domain::config::{valid_branch_name, BranchPoint, ConfigCommand, Expect, MAIN_BRANCH};
use efms_projections::config::{self as read, BranchRow};

use super::merging::{conflict_views, merge_inputs};
use super::params::BranchName;
use super::params::{BranchDiffParams, CreateBranch, ListBranches, MergeRequest};
use super::responses::{BranchView, MergeResult, MergedChange};
use crate::access::{live_branch, ReadConfig, Tenant, TenantAccess, WriteConfig};
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery, CommitMeta};
use crate::routes::resources::{commit_request, execute, restore};
use crate::routes::versions::{diff_states, Diff};
use crate::state::AppState;

/// `POST /api/v1/tenants/{tenant}/branches`: a new branch, a copy of its base at a revision.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/branches", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = CreateBranch,
    responses((status = 201, description = "Created", body = BranchView),
        (status = 404, description = "No such tenant, base branch or revision", body = crate::problem::Problem),
        (status = 409, description = "The name is taken (deleted branches keep theirs)", body = crate::problem::Problem),
        (status = 422, description = "Bad name", body = crate::problem::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    tenant: Tenant<WriteConfig>,
    meta: CommitMeta,
    ApiJson(body): ApiJson<CreateBranch>,
) -> Result<Response, ApiError> {
    valid_branch_name(&body.name)
        .map_err(|detail| ApiError::Validation(vec![FieldError::at("/name", detail)]))?;
    let base_spec = body.base.unwrap_or_default();
    let base_branch = live_branch(&state, &tenant, base_spec.branch).await?;
    let head = read::head_revision(&state.pool, tenant.tenant_id, &base_branch).await?;
    let base_revision = base_spec.revision.unwrap_or(head);
    if base_revision < 0 || base_revision > head {
        return Err(ApiError::NotFound(format!(
            "`{base_branch}` has no revision {base_revision}; its latest is {head}"
        )));
    }
    let declared =
        read::derivations_at(&state.pool, tenant.tenant_id, &base_branch, base_revision).await?;
    let resources = read::resources_at(&state.pool, tenant.tenant_id, &base_branch, base_revision)
        .await?
        .into_iter()
        .map(|row| {
            let declaration = declared.get(&(row.kind, row.name.clone()));
            restore(row.kind, &row.document, declaration, Expect::Absent)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let message = body.message.or_else(|| {
        Some(format!(
            "branch `{}` from `{base_branch}` at revision {base_revision}",
            body.name
        ))
    });
    let command = ConfigCommand::Fork {
        message: message.clone(),
        base: BranchPoint {
            branch: base_branch,
            revision: u64::try_from(base_revision).map_err(ApiError::internal)?,
        },
        resources,
    };
    let position = execute(
        &state,
        &meta.clone().with_message(message),
        (&tenant, &body.name),
        command,
    )
    .await?;
    // A new branch copies every resource of its base: the read models take as long as for a
    // bulk of that size, so the answer waits as long as a bulk's does.
    if let Some(position) = position {
        state
            .config
            .wait_for(
                position,
                efms_commands::configuration::bulk::BULK_READ_TIMEOUT,
            )
            .await;
    }
    let row = read::get_branch(&state.pool, tenant.tenant_id, &body.name)
        .await?
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "branch `{}` is committed but not readable yet",
                body.name
            ))
        })?;
    let location = format!("/api/v1/tenants/{}/branches/{}", tenant.slug, body.name);
    let mut response = (StatusCode::CREATED, Json(BranchView::from(row))).into_response();
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// `GET /api/v1/tenants/{tenant}/branches`: the branches, in name order (`main` is implicit).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/branches", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug"), ListBranches),
    responses((status = 200, description = "The branches", body = Vec<BranchView>),
        (status = 404, description = "No such tenant", body = crate::problem::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
    ApiQuery(params): ApiQuery<ListBranches>,
) -> Result<Json<Vec<BranchView>>, ApiError> {
    let rows = read::list_branches(
        &state.pool,
        tenant.tenant_id,
        None,
        params.include_deleted.unwrap_or(false),
    )
    .await?;
    Ok(Json(rows.into_iter().map(BranchView::from).collect()))
}

/// `GET /api/v1/tenants/{tenant}/branches/{name}` (deleted branches too).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/branches/{name}", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "Branch name")),
    responses((status = 200, description = "The branch", body = BranchView),
        (status = 404, description = "No such branch", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
    Path(BranchName { name }): Path<BranchName>,
) -> Result<Json<BranchView>, ApiError> {
    Ok(Json(BranchView::from(
        branch_row(&state, &tenant, &name, true).await?,
    )))
}

/// `DELETE /api/v1/tenants/{tenant}/branches/{name}`: closes the branch; its events and history
/// stay.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/branches/{name}", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "Branch name")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such branch, or deleted already", body = crate::problem::Problem),
        (status = 409, description = "A group's proxies follow it", body = crate::problem::Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant<WriteConfig>,
    Path(BranchName { name }): Path<BranchName>,
    meta: CommitMeta,
) -> Result<StatusCode, ApiError> {
    branch_row(&state, &tenant, &name, false).await?;
    let pinned = read::groups_pinned_to(&state.pool, tenant.tenant_id, &name).await?;
    if !pinned.is_empty() {
        return Err(ApiError::Conflict(format!(
            "branch `{name}` is followed by the proxies of group(s) {}; unpin them first",
            pinned
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    execute(&state, &meta, (&tenant, &name), ConfigCommand::DeleteBranch).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A branch of the tenant (404 when it never existed, or is deleted and `deleted` is false).
async fn branch_row(
    state: &AppState,
    tenant: &TenantAccess,
    name: &str,
    deleted: bool,
) -> Result<BranchRow, ApiError> {
    match read::get_branch(&state.pool, tenant.tenant_id, name).await? {
        Some(row) if deleted || row.deleted_at.is_none() => Ok(row),
        Some(_) => Err(ApiError::NotFound(format!("branch `{name}` was deleted"))),
        None if name == MAIN_BRANCH => Err(ApiError::NotFound(
            "`main` is every tenant's trunk; it has no base to show or merge into".to_owned(),
        )),
        None => Err(ApiError::NotFound(format!("there is no branch `{name}`"))),
    }
}

/// `GET /api/v1/tenants/{tenant}/branches/{name}/diff`: the branch against its base.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/branches/{name}/diff", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "Branch name"), BranchDiffParams),
    responses((status = 200, description = "`from` is the branch's revision compared with (`changes`), or the base's head (`base`); `to` the branch's head", body = Diff),
        (status = 404, description = "No such branch", body = crate::problem::Problem),
        (status = 422, description = "Unknown `against`", body = crate::problem::Problem)))]
pub async fn diff(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
    Path(BranchName { name }): Path<BranchName>,
    ApiQuery(params): ApiQuery<BranchDiffParams>,
) -> Result<Json<Diff>, ApiError> {
    let branch = branch_row(&state, &tenant, &name, true).await?;
    let read = merge_inputs(&state, &tenant, &branch).await?;
    let documents = |state: BranchState| {
        state
            .resources
            .into_iter()
            .map(|(key, resource)| (key, resource.document))
            .collect::<BTreeMap<_, _>>()
    };
    let (from_revision, from) = match params.against.as_deref() {
        None | Some("changes") => (read.ancestor_revision, documents(read.inputs.ancestor)),
        Some("base") => (
            read::head_revision(&state.pool, tenant.tenant_id, &branch.base_branch).await?,
            documents(read.inputs.ours),
        ),
        Some(other) => {
            return Err(ApiError::Validation(vec![FieldError::parameter(
                "against",
                format!("`{other}` is not `changes` or `base`"),
            )]))
        }
    };
    Ok(Json(diff_states(
        from_revision,
        read.theirs_revision,
        from,
        documents(read.inputs.theirs),
    )))
}

/// `POST /api/v1/tenants/{tenant}/branches/{name}/merge`: merges the branch into its base as one
/// revision, or answers 409 with every conflict and changes nothing.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/branches/{name}/merge", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "Branch name")),
    request_body = MergeRequest,
    responses((status = 200, description = "Merged (or nothing to merge)", body = MergeResult),
        (status = 404, description = "No such branch", body = crate::problem::Problem),
        (status = 409, description = "Conflicts (listed in `conflicts`), or the base moved during the merge; nothing changed", body = crate::problem::Problem),
        (status = 422, description = "The merged configuration is invalid; nothing changed", body = crate::problem::Problem)))]
pub async fn merge(
    State(state): State<AppState>,
    tenant: Tenant<WriteConfig>,
    Path(BranchName { name }): Path<BranchName>,
    meta: CommitMeta,
    ApiJson(body): ApiJson<MergeRequest>,
) -> Result<Json<MergeResult>, ApiError> {
    let branch = branch_row(&state, &tenant, &name, false).await?;
    let read = merge_inputs(&state, &tenant, &branch).await?;
    let message = body.message.or_else(|| {
        Some(format!(
            "merge `{}` at revision {} into `{}`",
            branch.name, read.theirs_revision, branch.base_branch
        ))
    });
    let source = BranchPoint {
        branch: branch.name.clone(),
        revision: u64::try_from(read.theirs_revision).map_err(ApiError::internal)?,
    };
    let request = commit_request(
        &meta.clone().with_message(message),
        (&tenant, &branch.base_branch),
    );
    let outcome = match state
        .configuration
        .merge(&request, source, &read.inputs)
        .await
    {
        Ok(outcome) => outcome,
        Err(ConfigServiceError::MergeConflicts(conflicts)) => {
            return Err(ApiError::MergeConflict {
                detail: format!(
                    "{} value(s) changed on both `{}` and `{}`; nothing was merged",
                    conflicts.len(),
                    branch.base_branch,
                    branch.name
                ),
                conflicts: serde_json::to_value(conflict_views(conflicts))
                    .map_err(ApiError::internal)?,
            })
        }
        Err(error) => {
            return Err(match ApiError::from(error) {
                ApiError::PreconditionFailed(detail) => ApiError::Conflict(format!(
                    "`{}` changed while merging ({detail}); merge again",
                    branch.base_branch
                )),
                other => other,
            })
        }
    };
    let revision = match outcome.position {
        Some(_) => {
            Some(read::head_revision(&state.pool, tenant.tenant_id, &branch.base_branch).await?)
        }
        None => None,
    };
    Ok(Json(MergeResult {
        into: branch.base_branch,
        revision,
        merged_revision: read.theirs_revision,
        changes: outcome
            .report
            .into_iter()
            .map(|((kind, name), merged)| MergedChange {
                kind,
                name,
                change: merged.as_str().to_owned(),
            })
            .collect(),
    }))
}

//! Versions for auditors (FR-VC-001..004): a resource's history, the revisions of a tenant's
//! configuration, the diff between two revisions, and rollback (a new revision equal to an old one;
//! history is never rewritten).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use efms_domain::config::{Change, Expect, Operation};
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, AsOf};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::branches::merging::branch_state;
use super::resources::{
    commit, commit_request, redact, resource_response, restore, BranchParams, ResourcePath,
};
use crate::access::{ReadConfig, TenantBranch, WriteConfig};
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery, CommitMeta};
use crate::read_replica::Reads;
use crate::state::AppState;

/// One entry of a resource's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    revision: i64,
    recorded_at: DateTime<Utc>,
    actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    operation: String,
    change: String,
}

/// `GET .../{kind}/{name}/history`: every change of one resource, newest first.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}/{name}/history", tag = "versions", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ("name" = String, Path, description = "The resource's Envoy name"), BranchParams),
    responses((status = 200, description = "The changes, newest first", body = Vec<HistoryEntry>),
        (status = 404, description = "Never existed", body = crate::problem::Problem)))]
pub async fn history(
    ResourcePath { kind, name }: ResourcePath,
    ApiQuery(_): ApiQuery<BranchParams>,
    TenantBranch { tenant, branch }: TenantBranch<ReadConfig>,
    Reads(reads): Reads,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let rows = read::resource_history(&reads, tenant.tenant_id, &branch, kind, &name).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(format!(
            "there is no {kind} `{name}`, now or before"
        )));
    }
    Ok(Json(
        rows.into_iter()
            .map(|row| HistoryEntry {
                revision: row.revision,
                recorded_at: row.recorded_at,
                actor: row.actor,
                message: row.message,
                operation: row.operation,
                change: row.change,
            })
            .collect(),
    ))
}

/// Query of the revisions list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RevisionsParams {
    limit: Option<u32>,
    /// The `next_cursor` of the previous page (a revision number).
    cursor: Option<i64>,
    /// The branch (default `main`).
    pub branch: Option<String>,
}

/// One commit.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevisionEntry {
    revision: i64,
    recorded_at: DateTime<Utc>,
    actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    operation: String,
    changes: i32,
}

/// A page of revisions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevisionsPage {
    items: Vec<RevisionEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<i64>,
}

/// `GET /api/v1/tenants/{tenant}/revisions`: the commits, newest first.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/revisions", tag = "versions", params(("tenant" = String, Path, description = "Tenant slug"), RevisionsParams),
    responses((status = 200, description = "A page of commits", body = RevisionsPage),
        (status = 422, description = "Bad paging", body = crate::problem::Problem)))]
pub async fn revisions(
    ApiQuery(params): ApiQuery<RevisionsParams>,
    TenantBranch { tenant, branch }: TenantBranch<ReadConfig>,
    Reads(reads): Reads,
) -> Result<Json<RevisionsPage>, ApiError> {
    let page = super::PageSize::from_param(params.limit)?;
    let mut rows = read::list_revisions(
        &reads,
        tenant.tenant_id,
        &branch,
        params.cursor,
        page.fetch(),
    )
    .await?;
    let next_cursor = page.cut(&mut rows, |row| row.revision);
    let items = rows
        .into_iter()
        .map(|row| RevisionEntry {
            revision: row.revision,
            recorded_at: row.recorded_at,
            actor: row.actor,
            message: row.message,
            operation: row.operation,
            changes: row.changes,
        })
        .collect();
    Ok(Json(RevisionsPage { items, next_cursor }))
}

/// Query of a diff.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffParams {
    from: i64,
    to: i64,
    /// The branch (default `main`).
    pub branch: Option<String>,
}

/// A resource named in a diff.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, utoipa::ToSchema)]
pub struct DiffKey {
    #[schema(value_type = String)]
    kind: ResourceKind,
    name: String,
}

/// An added resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Added {
    #[schema(value_type = String)]
    kind: ResourceKind,
    name: String,
    #[schema(value_type = Object)]
    resource: Value,
}

/// A changed resource and the RFC 6902 patch from its `from` to its `to` document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Changed {
    #[schema(value_type = String)]
    kind: ResourceKind,
    name: String,
    /// RFC 6902 operations.
    #[schema(value_type = Vec<Object>)]
    patch: json_patch::Patch,
}

/// The difference between two revisions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Diff {
    from: i64,
    to: i64,
    added: Vec<Added>,
    removed: Vec<DiffKey>,
    changed: Vec<Changed>,
}

/// `GET /api/v1/tenants/{tenant}/diff?from=N&to=M`.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/diff", tag = "versions", params(("tenant" = String, Path, description = "Tenant slug"), DiffParams),
    responses((status = 200, description = "What changed from `from` to `to`", body = Diff),
        (status = 422, description = "No such revision", body = crate::problem::Problem)))]
pub async fn diff(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<DiffParams>,
    TenantBranch { tenant, branch }: TenantBranch<ReadConfig>,
    Reads(reads): Reads,
) -> Result<Json<Diff>, ApiError> {
    let head = read::head_revision(&reads, tenant.tenant_id, &branch).await?;
    for (parameter, revision) in [("from", params.from), ("to", params.to)] {
        if revision < 0 || revision > head {
            return Err(ApiError::Validation(vec![FieldError::parameter(
                parameter,
                format!(
                    "revision {revision} does not exist; revisions run from 0 (empty) to {head}"
                ),
            )]));
        }
    }
    let from = state_map(&state, tenant.tenant_id, &branch, params.from).await?;
    let to = state_map(&state, tenant.tenant_id, &branch, params.to).await?;
    Ok(Json(diff_states(params.from, params.to, from, to)))
}

/// What changed from one state to another (secrets redacted).
pub fn diff_states(
    from_revision: i64,
    to_revision: i64,
    from: BTreeMap<(ResourceKind, String), Value>,
    mut to: BTreeMap<(ResourceKind, String), Value>,
) -> Diff {
    let mut diff = Diff {
        from: from_revision,
        to: to_revision,
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
    };
    for ((kind, name), before) in from {
        match to.remove(&(kind, name.clone())) {
            None => diff.removed.push(DiffKey { kind, name }),
            Some(after) if after != before => {
                let patch = json_patch::diff(&redact(kind, before), &redact(kind, after));
                diff.changed.push(Changed { kind, name, patch });
            }
            Some(_) => {}
        }
    }
    for ((kind, name), resource) in to {
        let resource = redact(kind, resource);
        diff.added.push(Added {
            kind,
            name,
            resource,
        });
    }
    diff
}

/// Every resource of `branch` at `revision`, by kind and name.
pub async fn state_map(
    state: &AppState,
    tenant_id: uuid::Uuid,
    branch: &str,
    revision: i64,
) -> Result<BTreeMap<(ResourceKind, String), Value>, ApiError> {
    Ok(read::state_at(&state.pool, tenant_id, branch, revision)
        .await?
        .into_iter()
        .map(|(kind, name, document)| ((kind, name), document))
        .collect())
}

/// Body of a rollback.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// The revision whose state to restore.
    to_revision: i64,
}

/// `POST /api/v1/tenants/{tenant}/rollback`: a new revision whose state equals `to_revision`.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/rollback", tag = "versions", params(("tenant" = String, Path, description = "Tenant slug"), BranchParams), request_body = RollbackBody,
    responses((status = 200, description = "The new revision"),
        (status = 422, description = "No such revision, or the restored state is refused", body = crate::problem::Problem)))]
pub async fn rollback(
    State(state): State<AppState>,
    ApiQuery(_): ApiQuery<BranchParams>,
    TenantBranch { tenant, branch }: TenantBranch<WriteConfig>,
    meta: CommitMeta,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Response, ApiError> {
    let head = read::head_revision(&state.pool, tenant.tenant_id, &branch).await?;
    check_target(body.to_revision, head)?;
    let target = branch_state(&state, &tenant, &branch, body.to_revision).await?;
    let current = branch_state(&state, &tenant, &branch, head).await?;
    let request = commit_request(&meta, (&tenant, &branch));
    let (_, count) = state
        .configuration
        .rollback(&request, &target, &current)
        .await?;
    let revision = read::head_revision(&state.pool, tenant.tenant_id, &branch).await?;
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({ "revision": revision, "restored": body.to_revision, "changes": count })),
    )
        .into_response())
}

#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/{kind}/{name}/rollback", tag = "versions", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ("name" = String, Path, description = "The resource's Envoy name"), BranchParams), request_body = RollbackBody,
    responses((status = 200, description = "The restored resource", body = Object), (status = 204, description = "Deleted: it did not exist then"),
        (status = 409, description = "Deleting it would break a reference", body = crate::problem::Problem),
        (status = 422, description = "No such revision", body = crate::problem::Problem)))]
/// `POST .../{kind}/{name}/rollback`: one resource back to its state at `to_revision` (deleted if it
/// did not exist then).
pub async fn rollback_resource(
    State(state): State<AppState>,
    ResourcePath { kind, name }: ResourcePath,
    ApiQuery(_): ApiQuery<BranchParams>,
    TenantBranch { tenant, branch }: TenantBranch<WriteConfig>,
    meta: CommitMeta,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Response, ApiError> {
    let head = read::head_revision(&state.pool, tenant.tenant_id, &branch).await?;
    check_target(body.to_revision, head)?;
    let then = read::get_resource(
        &state.pool,
        tenant.tenant_id,
        &branch,
        kind,
        &name,
        AsOf::Revision(body.to_revision),
    )
    .await?;
    let change = match &then {
        Some(row) => {
            let declared =
                read::derivations_at(&state.pool, tenant.tenant_id, &branch, body.to_revision)
                    .await?;
            restore(
                kind,
                &row.document,
                declared.get(&(kind, name.clone())),
                Expect::Anything,
            )?
        }
        None => Change::Delete {
            kind,
            name: name.clone(),
            expect: Expect::Present,
        },
    };
    commit(
        &state,
        &meta,
        (&tenant, &branch),
        Operation::Rollback,
        vec![change],
    )
    .await?;
    match read::get_resource(
        &state.pool,
        tenant.tenant_id,
        &branch,
        kind,
        &name,
        AsOf::Now,
    )
    .await?
    {
        Some(row) => Ok(resource_response(StatusCode::OK, kind, &row)),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

fn check_target(to_revision: i64, head: i64) -> Result<(), ApiError> {
    if to_revision < 0 || to_revision > head {
        return Err(ApiError::Validation(vec![FieldError::at(
            "/to_revision",
            format!(
                "revision {to_revision} does not exist; revisions run from 0 (empty) to {head}"
            ),
        )]));
    }
    Ok(())
}

/// The routes of history, revisions, diffs and rollbacks.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/tenants/{tenant}/revisions", get(revisions))
        .route("/tenants/{tenant}/diff", get(diff))
        .route("/tenants/{tenant}/rollback", post(rollback))
        .route("/tenants/{tenant}/{kind}/{name}/history", get(history))
        .route(
            "/tenants/{tenant}/{kind}/{name}/rollback",
            post(rollback_resource),
        )
}

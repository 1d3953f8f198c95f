//! `/api/v1/tenants/{tenant}/branches`: branches of a tenant's configuration and their merges
//! (FR-VC-005). A branch is its own stream of commits; it starts as a copy of its base at a
//! revision, takes writes through `?branch=NAME` on every resource route, and merges back into its
//! base with a three-way merge per resource (ADR 0007).

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use efms_domain::config::merge::merge_document;
use efms_domain::config::{
    valid_branch_name, BranchPoint, Change, ConfigCommand, Expect, MAIN_BRANCH,
};
use efms_projections::config::{self as read, BranchRow, ResourceRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::resources::{branch_of, commit_message, execute, invalid, redact, restore};
use super::versions::{diff_states, parse_kind, Diff};
use crate::access::{tenant_access, Access, TenantAccess};
use crate::auth::Principal;
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;

/// Where a new branch starts.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// The branch to start from (default `main`).
    branch: Option<String>,
    /// Its revision to start from (default: its latest).
    revision: Option<i64>,
}

/// Body of a branch creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBranch {
    /// The new branch's name: 1 to 63 of a-z, 0-9, `.`, `_`, `-`.
    name: String,
    /// Where it starts (default: the latest revision of `main`).
    #[serde(default)]
    base: Option<BaseSpec>,
    /// The message of its first commit.
    #[serde(default)]
    message: Option<String>,
}

/// A branch as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BranchView {
    name: String,
    /// The branch it started from, and merges into.
    base_branch: String,
    /// The base's revision it started from.
    base_revision: i64,
    /// The branch's first revision (equal in content to the base at `base_revision`).
    fork_revision: i64,
    /// Its latest revision.
    head: i64,
    created_at: DateTime<Utc>,
    created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<DateTime<Utc>>,
}

impl From<BranchRow> for BranchView {
    fn from(row: BranchRow) -> Self {
        Self {
            name: row.name,
            base_branch: row.base_branch,
            base_revision: row.base_revision,
            fork_revision: row.fork_revision,
            head: row.head,
            created_at: row.created_at,
            created_by: row.created_by,
            deleted_at: row.deleted_at,
        }
    }
}

/// `POST /api/v1/tenants/{tenant}/branches`: a new branch, a copy of its base at a revision.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/branches", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = CreateBranch,
    responses((status = 201, description = "Created", body = BranchView),
        (status = 404, description = "No such tenant, base branch or revision", body = crate::openapi::Problem),
        (status = 409, description = "The name is taken (deleted branches keep theirs)", body = crate::openapi::Problem),
        (status = 422, description = "Bad name", body = crate::openapi::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateBranch>,
) -> Result<Response, ApiError> {
    let tenant = tenant_access(&state, &actor, &tenant, Access::Write).await?;
    valid_branch_name(&body.name)
        .map_err(|detail| ApiError::Validation(vec![FieldError::at("/name", detail)]))?;
    let base_spec = body.base.unwrap_or_default();
    let base_branch = branch_of(&state, &tenant, base_spec.branch).await?;
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
            let declaration = declared.get(&(row.kind.clone(), row.name.clone()));
            restore(
                parse_kind(&row.kind),
                &row.document,
                declaration,
                Expect::Absent,
            )
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
    execute(
        &state,
        &actor,
        &headers,
        (&tenant, &body.name),
        message,
        command,
    )
    .await?;
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

/// Query of the branch list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListBranches {
    /// Also list deleted branches.
    include_deleted: Option<bool>,
}

/// `GET /api/v1/tenants/{tenant}/branches`: the branches, in name order (`main` is implicit).
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/branches", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug"), ListBranches),
    responses((status = 200, description = "The branches", body = Vec<BranchView>),
        (status = 404, description = "No such tenant", body = crate::openapi::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path(tenant): Path<String>,
    ApiQuery(params): ApiQuery<ListBranches>,
) -> Result<Json<Vec<BranchView>>, ApiError> {
    let tenant = tenant_access(&state, &actor, &tenant, Access::Read).await?;
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
        (status = 404, description = "No such branch", body = crate::openapi::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<BranchView>, ApiError> {
    let tenant = tenant_access(&state, &actor, &tenant, Access::Read).await?;
    Ok(Json(BranchView::from(
        branch_row(&state, &tenant, &name, true).await?,
    )))
}

/// `DELETE /api/v1/tenants/{tenant}/branches/{name}`: closes the branch; its events and history
/// stay.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/branches/{name}", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "Branch name")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such branch, or deleted already", body = crate::openapi::Problem),
        (status = 409, description = "A group's proxies follow it", body = crate::openapi::Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_access(&state, &actor, &tenant, Access::Write).await?;
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
    let message = commit_message(&headers)?;
    execute(
        &state,
        &actor,
        &headers,
        (&tenant, &name),
        message,
        ConfigCommand::DeleteBranch,
    )
    .await?;
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

/// The three states a merge of `branch` compares, each by kind and name.
struct MergeInputs {
    /// The branch's revision both sides last agreed on (the fork, or the last merge).
    ancestor_revision: i64,
    ancestor: BTreeMap<(String, String), ResourceRow>,
    /// The base branch now.
    ours: BTreeMap<(String, String), ResourceRow>,
    /// The branch now, and its revision.
    theirs: BTreeMap<(String, String), ResourceRow>,
    theirs_revision: i64,
    /// The template declarations of the resources declared from one, on the branch now and when
    /// the two last agreed.
    theirs_declared: BTreeMap<(String, String), Value>,
    ancestor_declared: BTreeMap<(String, String), Value>,
    ours_declared: BTreeMap<(String, String), Value>,
}

async fn merge_inputs(
    state: &AppState,
    tenant: &TenantAccess,
    branch: &BranchRow,
) -> Result<MergeInputs, ApiError> {
    let tenant_id = tenant.tenant_id;
    let ancestor_revision =
        read::last_merged_revision(&state.pool, tenant_id, &branch.base_branch, &branch.name)
            .await?
            .unwrap_or(branch.fork_revision);
    let ours_head = read::head_revision(&state.pool, tenant_id, &branch.base_branch).await?;
    let by_key = |rows: Vec<ResourceRow>| {
        rows.into_iter()
            .map(|row| ((row.kind.clone(), row.name.clone()), row))
            .collect::<BTreeMap<_, _>>()
    };
    Ok(MergeInputs {
        ancestor_revision,
        ancestor: by_key(
            read::resources_at(&state.pool, tenant_id, &branch.name, ancestor_revision).await?,
        ),
        ours: by_key(
            read::resources_at(&state.pool, tenant_id, &branch.base_branch, ours_head).await?,
        ),
        theirs: by_key(
            read::resources_at(&state.pool, tenant_id, &branch.name, branch.head).await?,
        ),
        theirs_revision: branch.head,
        theirs_declared: read::derivations_at(&state.pool, tenant_id, &branch.name, branch.head)
            .await?,
        ancestor_declared: read::derivations_at(
            &state.pool,
            tenant_id,
            &branch.name,
            ancestor_revision,
        )
        .await?,
        ours_declared: read::derivations_at(&state.pool, tenant_id, &branch.base_branch, ours_head)
            .await?,
    })
}

/// Query of a branch diff.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BranchDiffParams {
    /// `changes` (default): what the branch changed since it last agreed with its base (what a
    /// merge brings); `base`: the branch's head against its base's head.
    against: Option<String>,
}

/// `GET /api/v1/tenants/{tenant}/branches/{name}/diff`: the branch against its base.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/branches/{name}/diff", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "Branch name"), BranchDiffParams),
    responses((status = 200, description = "`from` is the branch's revision compared with (`changes`), or the base's head (`base`); `to` the branch's head", body = Diff),
        (status = 404, description = "No such branch", body = crate::openapi::Problem),
        (status = 422, description = "Unknown `against`", body = crate::openapi::Problem)))]
pub async fn diff(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, name)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<BranchDiffParams>,
) -> Result<Json<Diff>, ApiError> {
    let tenant = tenant_access(&state, &actor, &tenant, Access::Read).await?;
    let branch = branch_row(&state, &tenant, &name, true).await?;
    let inputs = merge_inputs(&state, &tenant, &branch).await?;
    let documents = |rows: BTreeMap<(String, String), ResourceRow>| {
        rows.into_iter()
            .map(|(key, row)| (key, row.document))
            .collect::<BTreeMap<_, _>>()
    };
    let (from_revision, from) = match params.against.as_deref() {
        None | Some("changes") => (inputs.ancestor_revision, documents(inputs.ancestor)),
        Some("base") => (
            read::head_revision(&state.pool, tenant.tenant_id, &branch.base_branch).await?,
            documents(inputs.ours),
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
        inputs.theirs_revision,
        from,
        documents(inputs.theirs),
    )))
}

/// Body of a merge.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The merge commit's message.
    #[serde(default)]
    message: Option<String>,
}

/// One value both sides of a merge changed differently.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MergeConflict {
    /// The resource's kind.
    kind: String,
    /// Its name.
    name: String,
    /// Where in the resource (RFC 6901; empty: the whole resource).
    pointer: String,
    /// The value when the two branches last agreed (absent: did not exist).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    base: Option<Value>,
    /// The value on the branch merged into.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ours: Option<Value>,
    /// The value on the branch being merged.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    theirs: Option<Value>,
}

/// A resource a merge changed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MergedChange {
    kind: String,
    name: String,
    /// `created`, `replaced` or `deleted`.
    change: String,
}

/// What a merge did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MergeResult {
    /// The branch merged into.
    into: String,
    /// The new revision of `into` (absent: nothing to merge).
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    /// The branch's revision that was merged.
    merged_revision: i64,
    /// The resources the merge changed on `into`.
    changes: Vec<MergedChange>,
}

/// `POST /api/v1/tenants/{tenant}/branches/{name}/merge`: merges the branch into its base as one
/// revision, or answers 409 with every conflict and changes nothing.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/branches/{name}/merge", tag = "branches",
    params(("tenant" = String, Path, description = "Tenant slug"), ("name" = String, Path, description = "Branch name")),
    request_body = MergeRequest,
    responses((status = 200, description = "Merged (or nothing to merge)", body = MergeResult),
        (status = 404, description = "No such branch", body = crate::openapi::Problem),
        (status = 409, description = "Conflicts (listed in `conflicts`), or the base moved during the merge; nothing changed", body = crate::openapi::Problem),
        (status = 422, description = "The merged configuration is invalid; nothing changed", body = crate::openapi::Problem)))]
pub async fn merge(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MergeRequest>,
) -> Result<Json<MergeResult>, ApiError> {
    let tenant = tenant_access(&state, &actor, &tenant, Access::Write).await?;
    let branch = branch_row(&state, &tenant, &name, false).await?;
    let inputs = merge_inputs(&state, &tenant, &branch).await?;
    let MergePlan {
        changes,
        report,
        conflicts,
    } = plan_merge(&inputs)?;
    if !conflicts.is_empty() {
        return Err(ApiError::MergeConflict {
            detail: format!(
                "{} value(s) changed on both `{}` and `{}`; nothing was merged",
                conflicts.len(),
                branch.base_branch,
                branch.name
            ),
            conflicts: serde_json::to_value(&conflicts).map_err(ApiError::internal)?,
        });
    }
    let message = body.message.or_else(|| {
        Some(format!(
            "merge `{}` at revision {} into `{}`",
            branch.name, inputs.theirs_revision, branch.base_branch
        ))
    });
    let command = ConfigCommand::Merge {
        message: message.clone(),
        source: BranchPoint {
            branch: branch.name.clone(),
            revision: u64::try_from(inputs.theirs_revision).map_err(ApiError::internal)?,
        },
        changes,
    };
    let position = execute(
        &state,
        &actor,
        &headers,
        (&tenant, &branch.base_branch),
        message,
        command,
    )
    .await
    .map_err(|error| match error {
        ApiError::PreconditionFailed(detail) => ApiError::Conflict(format!(
            "`{}` changed while merging ({detail}); merge again",
            branch.base_branch
        )),
        other => other,
    })?;
    let revision = match position {
        Some(_) => {
            Some(read::head_revision(&state.pool, tenant.tenant_id, &branch.base_branch).await?)
        }
        None => None,
    };
    Ok(Json(MergeResult {
        into: branch.base_branch,
        revision,
        merged_revision: inputs.theirs_revision,
        changes: report,
    }))
}

/// What a merge would do.
struct MergePlan {
    /// The changes to the base.
    changes: Vec<Change>,
    /// Each changed resource, for the answer.
    report: Vec<MergedChange>,
    /// The values both sides changed differently (the merge must not land if any).
    conflicts: Vec<MergeConflict>,
}

/// Merges every resource of `inputs`.
fn plan_merge(inputs: &MergeInputs) -> Result<MergePlan, ApiError> {
    let keys: BTreeSet<&(String, String)> = inputs
        .ancestor
        .keys()
        .chain(inputs.ours.keys())
        .chain(inputs.theirs.keys())
        .collect();
    let mut conflicts = Vec::new();
    let mut changes = Vec::new();
    let mut report = Vec::new();
    for key in keys {
        let (ancestor, ours, theirs) = (
            inputs.ancestor.get(key),
            inputs.ours.get(key),
            inputs.theirs.get(key),
        );
        let merged = match merge_document(
            ancestor.map(|row| &row.document),
            ours.map(|row| &row.document),
            theirs.map(|row| &row.document),
        ) {
            Ok(merged) => merged,
            Err(found) => {
                let kind = parse_kind(&key.0);
                conflicts.extend(found.into_iter().map(|c| MergeConflict {
                    kind: key.0.clone(),
                    name: key.1.clone(),
                    pointer: c.pointer,
                    base: c.base.map(|v| redact(kind, v)),
                    ours: c.ours.map(|v| redact(kind, v)),
                    theirs: c.theirs.map(|v| redact(kind, v)),
                }));
                continue;
            }
        };
        let kind = parse_kind(&key.0);
        // Each change expects the base's resource as the merge read it: a concurrent write to the
        // base fails the commit instead of being overwritten.
        let expect = match ours {
            Some(row) => Expect::Version(u64::try_from(row.version).map_err(ApiError::internal)?),
            None => Expect::Absent,
        };
        match (merged, ours) {
            (Some(document), Some(row)) if document == row.document => {}
            (Some(document), _) => {
                // Only the branch changed a resource it declares from a template: the
                // declaration comes along (rendered on the base); otherwise the merged document.
                let untouched_here = ours.map(|r| &r.document) == ancestor.map(|r| &r.document)
                    && inputs.ours_declared.get(key) == inputs.ancestor_declared.get(key);
                let declared = inputs
                    .theirs_declared
                    .get(key)
                    .filter(|_| untouched_here && theirs.map(|r| &r.document) == Some(&document));
                changes.push(match declared {
                    Some(declaration) => restore(kind, &document, Some(declaration), expect)?,
                    None => Change::put(kind, &document, expect)
                        .map_err(|violations| at_resource(&key.0, &key.1, invalid(violations)))?,
                });
                report.push(MergedChange {
                    kind: key.0.clone(),
                    name: key.1.clone(),
                    change: if ours.is_some() {
                        "replaced"
                    } else {
                        "created"
                    }
                    .to_owned(),
                });
            }
            (None, Some(_)) => {
                changes.push(Change::Delete {
                    kind,
                    name: key.1.clone(),
                    expect,
                });
                report.push(MergedChange {
                    kind: key.0.clone(),
                    name: key.1.clone(),
                    change: "deleted".to_owned(),
                });
            }
            (None, None) => {}
        }
    }
    Ok(MergePlan {
        changes,
        report,
        conflicts,
    })
}

/// Prefixes the pointers of a 422 about a merged resource with the resource it is about.
fn at_resource(kind: &str, name: &str, error: ApiError) -> ApiError {
    match error {
        ApiError::Validation(errors) => ApiError::Validation(
            errors
                .into_iter()
                .map(|e| {
                    FieldError::at(
                        e.pointer.unwrap_or_default(),
                        format!("merged {kind} `{name}`: {}", e.detail),
                    )
                })
                .collect(),
        ),
        other => other,
    }
}

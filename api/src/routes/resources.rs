//! `/api/v1/tenants/{tenant}/{kind}`: Envoy resources (FR-EP, API-001..005). The body of a create or
//! replace is the Envoy resource's own JSON; every write is a commit on the tenant's configuration
//! repository; every read can ask for an earlier revision (`?revision=N`) or time (`?at=`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use efms_commands::configuration::CommitRequest;
use efms_domain::config::group::GroupSpec;
use efms_domain::config::inheritance;
use efms_domain::config::template::Derivation;
use efms_domain::config::{Change, ConfigCommand, Expect, Operation, MAIN_BRANCH};
use efms_domain::envoy::{ResourceKind, Violation};
use efms_domain::Actor;
use efms_projections::config::{self as read, AsOf, ListQuery, ResourceRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::{tenant_access, Access, TenantAccess};
use crate::auth::Principal;
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;
/// The header that carries a commit message.
pub const COMMIT_MESSAGE_HEADER: &str = "x-commit-message";

/// The kind a collection segment names, or 404.
pub fn kind_of(collection: &str) -> Result<ResourceKind, ApiError> {
    ResourceKind::from_collection(collection)
        .ok_or_else(|| ApiError::NotFound(format!("no such resource collection `{collection}`")))
}

/// `?revision=`, `?at=` and `?branch=` on reads.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// Answer as of this revision.
    pub revision: Option<i64>,
    /// Answer as of this time (RFC 3339).
    pub at: Option<DateTime<Utc>>,
    /// Read this branch (default `main`).
    pub branch: Option<String>,
}

/// `?branch=` on writes and on reads without other parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BranchParams {
    /// Work on this branch (default `main`).
    pub branch: Option<String>,
}

/// The branch a request works on: `main`, or a branch of the tenant that is not deleted (else 404).
pub async fn branch_of(
    state: &AppState,
    tenant: &TenantAccess,
    branch: Option<String>,
) -> Result<String, ApiError> {
    let Some(branch) = branch.filter(|b| b != MAIN_BRANCH) else {
        return Ok(MAIN_BRANCH.to_owned());
    };
    match read::get_branch(&state.pool, tenant.tenant_id, &branch).await? {
        Some(row) if row.deleted_at.is_none() => Ok(branch),
        Some(_) => Err(ApiError::NotFound(format!(
            "branch `{branch}` was deleted; its history stays readable through the revisions of `main`"
        ))),
        None => Err(ApiError::NotFound(format!("there is no branch `{branch}`"))),
    }
}

/// Query of a list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Answer as of this revision.
    revision: Option<i64>,
    /// Answer as of this time (RFC 3339).
    at: Option<DateTime<Utc>>,
    /// Page size, 1 to 500.
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only names that start with this.
    name_prefix: Option<String>,
    /// `name` (default) or `-name`.
    sort: Option<String>,
    /// Only the resources this group attaches, its own and its ancestors'.
    group: Option<String>,
    /// Read this branch (default `main`).
    branch: Option<String>,
}

/// Resolves `?revision=` / `?at=` into the state to read.
pub async fn as_of(
    state: &AppState,
    tenant: &TenantAccess,
    branch: &str,
    revision: Option<i64>,
    at: Option<DateTime<Utc>>,
) -> Result<AsOf, ApiError> {
    match (revision, at) {
        (None, None) => Ok(AsOf::Now),
        (Some(_), Some(_)) => Err(ApiError::BadRequest {
            detail: "give `revision` or `at`, not both".to_owned(),
            errors: vec![FieldError::parameter("at", "conflicts with `revision`")],
        }),
        (Some(revision), None) => {
            let head = read::head_revision(&state.pool, tenant.tenant_id, branch).await?;
            if revision < 1 || revision > head {
                return Err(ApiError::NotFound(format!(
                    "there is no revision {revision}; the latest is {head}"
                )));
            }
            Ok(AsOf::Revision(revision))
        }
        (None, Some(at)) => Ok(AsOf::Revision(
            read::revision_at(&state.pool, tenant.tenant_id, branch, at).await?,
        )),
    }
}

/// One resource in a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListItem {
    name: String,
    version: i64,
    updated_at: DateTime<Utc>,
    updated_by: String,
    /// The Envoy resource (secrets without private material).
    #[schema(value_type = Object)]
    resource: Box<serde_json::value::RawValue>,
}

/// A page of resources.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListPage {
    items: Vec<ListItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /api/v1/tenants/{tenant}/{kind}`.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}", tag = "configuration", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ListParams),
    responses((status = 200, description = "A page of resources", body = ListPage),
        (status = 404, description = "No such tenant, collection or revision", body = crate::openapi::Problem),
        (status = 422, description = "Bad paging or sort", body = crate::openapi::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, collection)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&collection)?;
    super::names::check_list_parameters(params.name_prefix.as_deref(), params.cursor.as_deref())?;
    let tenant = tenant_access(&state, &actor, &tenant, Access::Read).await?;
    let page = super::PageSize::from_param(params.limit)?;
    let descending = match params.sort.as_deref() {
        None | Some("name") => false,
        Some("-name") => true,
        Some(other) => {
            return Err(ApiError::Validation(vec![FieldError::parameter(
                "sort",
                format!("`{other}` is not a sort order; use `name` or `-name`"),
            )]))
        }
    };
    let branch = branch_of(&state, &tenant, params.branch).await?;
    let as_of = as_of(&state, &tenant, &branch, params.revision, params.at).await?;
    let names = match &params.group {
        None => None,
        Some(group) => Some(
            effective_attachments(&state, &tenant, &branch, group, as_of)
                .await?
                .into_iter()
                .filter(|item| item.kind == kind)
                .map(|item| item.name)
                .collect(),
        ),
    };
    let cacheable = as_of == AsOf::Now && params.group.is_none() && branch == MAIN_BRANCH;
    let query = ListQuery {
        name_prefix: params.name_prefix,
        after: params.cursor,
        descending,
        limit: page.fetch(),
        names,
    };
    let render = || async {
        let page_rows =
            read::list_resources(&state.pool, tenant.tenant_id, &branch, kind, as_of, &query)
                .await?;
        render_page(kind, page, page_rows)
    };
    let body: std::sync::Arc<str> = if cacheable {
        let key = format!(
            "{kind}|{:?}|{:?}|{descending}|{}",
            query.name_prefix, query.after, query.limit
        );
        state.cache.page(tenant.tenant_id, key, render).await?
    } else {
        render().await?.into()
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        // The cached text itself, not a copy of it.
        axum::body::Body::from(axum::body::Bytes::from_owner(SharedText(body))),
    )
        .into_response())
}

/// Shared text handed to a response body without copying it.
struct SharedText(std::sync::Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A page of listed resources as JSON text (secret material redacted).
fn render_page(
    kind: ResourceKind,
    page: super::PageSize,
    mut rows: Vec<read::ListedResource>,
) -> Result<String, ApiError> {
    let next_cursor = page.cut(&mut rows, |row| row.name.clone());
    let items = rows
        .into_iter()
        .map(|row| {
            let document: Value =
                serde_json::from_str(&row.document).map_err(ApiError::internal)?;
            let resource = serde_json::value::to_raw_value(&redact(kind, document))
                .map_err(ApiError::internal)?;
            Ok(ListItem {
                name: row.name,
                version: row.version,
                updated_at: row.updated_at,
                updated_by: row.updated_by,
                resource,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    serde_json::to_string(&ListPage { items, next_cursor }).map_err(ApiError::internal)
}

/// `GET /api/v1/tenants/{tenant}/{kind}/{name}`: the resource's Envoy JSON; `ETag` is its version.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}/{name}", tag = "configuration", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ("name" = String, Path, description = "The resource's Envoy name"), ReadParams),
    responses((status = 200, description = "The Envoy resource", body = Object),
        (status = 404, description = "Not found (now or at that revision)", body = crate::openapi::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, collection, name)): Path<(String, String, String)>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&collection)?;
    super::names::check_lookup(kind, &name)?;
    let tenant = tenant_access(&state, &actor, &tenant, Access::Read).await?;
    let branch = branch_of(&state, &tenant, params.branch).await?;
    let as_of = as_of(&state, &tenant, &branch, params.revision, params.at).await?;
    let row = match as_of {
        AsOf::Now if branch == MAIN_BRANCH => {
            state.cache.get(tenant.tenant_id, kind, &name).await?
        }
        _ => read::get_resource(&state.pool, tenant.tenant_id, &branch, kind, &name, as_of)
            .await?
            .map(std::sync::Arc::new),
    }
    .ok_or_else(|| missing(kind, &name))?;
    Ok(resource_response(StatusCode::OK, kind, &row))
}

/// `POST /api/v1/tenants/{tenant}/{kind}`: creates a resource (201, `Location`, `ETag`).
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/{kind}", tag = "configuration", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), BranchParams),
    request_body(content = Object, description = "The Envoy resource (protobuf JSON mapping), or `{\"$template\": {\"template\", \"name\", \"parameters\", \"overrides\"}}` to declare it from a template"),
    responses((status = 201, description = "Created", body = Object),
        (status = 403, description = "The role may not write", body = crate::openapi::Problem),
        (status = 409, description = "It exists", body = crate::openapi::Problem),
        (status = 422, description = "Invalid, or refers to a missing resource", body = crate::openapi::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, collection)): Path<(String, String)>,
    ApiQuery(params): ApiQuery<BranchParams>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&collection)?;
    let tenant = tenant_access(&state, &actor, &tenant, Access::Write).await?;
    let branch = branch_of(&state, &tenant, params.branch).await?;
    super::patching::check_written(&body, &state.limits.commit)?;
    let change = change_of(kind, &body, Expect::Absent, None)?;
    let name = change_name(&change);
    commit(
        &state,
        &actor,
        &headers,
        (&tenant, &branch),
        Operation::Create,
        vec![change],
    )
    .await?;
    let row = read_back(&state, &tenant, &branch, kind, &name).await?;
    let mut response = resource_response(StatusCode::CREATED, kind, &row);
    let mut location = format!(
        "/api/v1/tenants/{}/{}/{}",
        tenant.slug,
        kind.collection(),
        name
    );
    if branch != MAIN_BRANCH {
        location = format!("{location}?branch={branch}");
    }
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(ApiError::internal)?,
    );
    Ok(response)
}

#[utoipa::path(put, path = "/api/v1/tenants/{tenant}/{kind}/{name}", tag = "configuration", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ("name" = String, Path, description = "The resource's Envoy name"), BranchParams),
    request_body(content = Object, description = "The Envoy resource (protobuf JSON mapping), or `{\"$template\": {\"template\", \"name\", \"parameters\", \"overrides\"}}` to declare it from a template"),
    responses((status = 200, description = "Replaced", body = Object), (status = 201, description = "Created", body = Object),
        (status = 412, description = "If-Match is stale", body = crate::openapi::Problem),
        (status = 422, description = "Invalid, or refers to a missing resource", body = crate::openapi::Problem)))]
/// `PUT /api/v1/tenants/{tenant}/{kind}/{name}`: replaces (or creates) a resource. `If-Match`
/// makes it conditional on the current version.
pub async fn replace(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, collection, name)): Path<(String, String, String)>,
    ApiQuery(params): ApiQuery<BranchParams>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&collection)?;
    let tenant = tenant_access(&state, &actor, &tenant, Access::Write).await?;
    let branch = branch_of(&state, &tenant, params.branch).await?;
    let expect = if_match(&headers)?.unwrap_or(Expect::Anything);
    super::patching::check_written(&body, &state.limits.commit)?;
    let change = change_of(kind, &body, expect, Some(&name))?;
    check_path_name(kind, &name, &change)?;
    let existed = read::get_resource(
        &state.pool,
        tenant.tenant_id,
        &branch,
        kind,
        &name,
        AsOf::Now,
    )
    .await?
    .is_some();
    commit(
        &state,
        &actor,
        &headers,
        (&tenant, &branch),
        Operation::Replace,
        vec![change],
    )
    .await?;
    let row = read_back(&state, &tenant, &branch, kind, &name).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(resource_response(status, kind, &row))
}

#[utoipa::path(patch, path = "/api/v1/tenants/{tenant}/{kind}/{name}", tag = "configuration", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ("name" = String, Path, description = "The resource's Envoy name"), BranchParams),
    request_body(description = "RFC 6902 JSON Patch or RFC 7396 merge patch",
        content((Vec<Object> = "application/json-patch+json"), (Object = "application/merge-patch+json"))),
    responses((status = 200, description = "Patched", body = Object),
        (status = 404, description = "No such resource", body = crate::openapi::Problem),
        (status = 412, description = "If-Match is stale", body = crate::openapi::Problem),
        (status = 415, description = "Not a patch media type", body = crate::openapi::Problem),
        (status = 422, description = "The patch does not apply or the result is invalid", body = crate::openapi::Problem)))]
/// `PATCH /api/v1/tenants/{tenant}/{kind}/{name}` with `application/json-patch+json` (RFC 6902)
/// or `application/merge-patch+json` (RFC 7396).
pub async fn patch(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, collection, name)): Path<(String, String, String)>,
    ApiQuery(params): ApiQuery<BranchParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind_of(&collection)?;
    let tenant = tenant_access(&state, &actor, &tenant, Access::Write).await?;
    let branch = branch_of(&state, &tenant, params.branch).await?;
    let patch = super::patching::PatchBody::parse(&headers, &body)?;
    let explicit = if_match(&headers)?;
    if let Some(declaration) =
        read::derivation_of(&state.pool, tenant.tenant_id, &branch, kind, &name).await?
    {
        return Err(ApiError::Conflict(format!(
            "{kind} `{name}` is declared from template `{}`: PUT a new declaration \
             ({{\"{TEMPLATE_KEY}\": …}}), or PUT a whole resource to stop deriving it",
            declaration["template"].as_str().unwrap_or_default()
        )));
    }
    // The patch applies to the document as the read model has it; the commit carries the version it
    // was based on, so a read model that lagged fails the version check instead of losing an edit,
    // and the patch is applied once more to a fresh read.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = read::get_resource(
            &state.pool,
            tenant.tenant_id,
            &branch,
            kind,
            &name,
            AsOf::Now,
        )
        .await?
        .ok_or_else(|| missing(kind, &name))?;
        let version = u64::try_from(current.version).map_err(ApiError::internal)?;
        let expect = explicit.unwrap_or(Expect::Version(version));
        let mut document = current.document;
        patch.apply(&mut document, &state.limits.commit, (kind, &name), "")?;
        let change = Change::put(kind, &document, expect).map_err(invalid)?;
        check_path_name(kind, &name, &change)?;
        match commit(
            &state,
            &actor,
            &headers,
            (&tenant, &branch),
            Operation::Patch,
            vec![change],
        )
        .await
        {
            Err(ApiError::PreconditionFailed(_)) if explicit.is_none() && attempts < 2 => {}
            Err(error) => return Err(error),
            Ok(_) => break,
        }
    }
    let row = read_back(&state, &tenant, &branch, kind, &name).await?;
    Ok(resource_response(StatusCode::OK, kind, &row))
}

/// `DELETE /api/v1/tenants/{tenant}/{kind}/{name}`: 204; 409 naming the dependents when it is used.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/{kind}/{name}", tag = "configuration", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ("name" = String, Path, description = "The resource's Envoy name"), BranchParams),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such resource", body = crate::openapi::Problem),
        (status = 409, description = "Still used by other resources", body = crate::openapi::Problem),
        (status = 412, description = "If-Match is stale", body = crate::openapi::Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, collection, name)): Path<(String, String, String)>,
    ApiQuery(params): ApiQuery<BranchParams>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let kind = kind_of(&collection)?;
    let tenant = tenant_access(&state, &actor, &tenant, Access::Write).await?;
    let branch = branch_of(&state, &tenant, params.branch).await?;
    let expect = if_match(&headers)?.unwrap_or(Expect::Present);
    let change = Change::Delete { kind, name, expect };
    commit(
        &state,
        &actor,
        &headers,
        (&tenant, &branch),
        Operation::Delete,
        vec![change],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs one commit on `branch` for `actor` through the configuration service, which waits for
/// the read models to show it.
pub async fn commit(
    state: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    (tenant, branch): (&TenantAccess, &str),
    operation: Operation,
    changes: Vec<Change>,
) -> Result<Option<efms_commands::Position>, ApiError> {
    let message = commit_message(headers)?;
    let request = commit_request(actor, headers, (tenant, branch), message);
    Ok(state
        .configuration
        .commit(&request, operation, changes)
        .await?)
}

/// Where a commit goes and what it records of the request that caused it.
fn commit_request(
    actor: &Actor,
    headers: &HeaderMap,
    (tenant, branch): (&TenantAccess, &str),
    message: Option<String>,
) -> CommitRequest {
    CommitRequest {
        tenant_id: tenant.tenant_id,
        branch: branch.to_owned(),
        metadata: super::commit_metadata(actor, headers, message),
    }
}

/// Runs `command` on `branch`'s repository for `actor` through the configuration service, which
/// waits for the read models to show it.
pub async fn execute(
    state: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    (tenant, branch): (&TenantAccess, &str),
    message: Option<String>,
    command: ConfigCommand,
) -> Result<Option<efms_commands::Position>, ApiError> {
    let request = commit_request(actor, headers, (tenant, branch), message);
    Ok(state.configuration.execute(&request, command).await?)
}

/// The commit message from `X-Commit-Message`, if any.
pub fn commit_message(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(COMMIT_MESSAGE_HEADER)
        .map(|value| {
            value
                .to_str()
                .map(|text| text.trim().to_owned())
                .map_err(|_| ApiError::BadRequest {
                    detail: format!("`{COMMIT_MESSAGE_HEADER}` must be visible ASCII text"),
                    errors: Vec::new(),
                })
        })
        .transpose()
        .map(|message| message.filter(|text| !text.is_empty()))
}

pub use crate::service_errors::config_error;

/// A resource a group's proxies get, and the group (itself or an ancestor) that attaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EffectiveResource {
    /// The resource's kind.
    #[schema(value_type = String)]
    pub kind: ResourceKind,
    /// Its name.
    pub name: String,
    /// The name the group's proxies know it by, when the attachment overrides one.
    #[serde(rename = "as", skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The group that attaches it.
    pub attached_by: String,
}

/// Everything `group` attaches, its own first, then each ancestor's (FR-CL-002); a resource
/// served under one name at several levels is reported once, from the nearest (which overrides
/// the others).
pub async fn effective_attachments(
    state: &AppState,
    tenant: &TenantAccess,
    branch: &str,
    group: &str,
    as_of: AsOf,
) -> Result<Vec<EffectiveResource>, ApiError> {
    // The chain of ancestors is read here; which attachment wins is the domain's one rule.
    let mut groups: BTreeMap<String, GroupSpec> = BTreeMap::new();
    let mut next = Some(group.to_owned());
    while let Some(name) = next.take() {
        if groups.contains_key(&name) || groups.len() >= inheritance::MAX_DEPTH {
            break;
        }
        let Some(row) = read::get_resource(
            &state.pool,
            tenant.tenant_id,
            branch,
            ResourceKind::Group,
            &name,
            as_of,
        )
        .await?
        else {
            break;
        };
        let spec: GroupSpec = serde_json::from_value(row.document).map_err(ApiError::internal)?;
        next.clone_from(&spec.parent);
        groups.insert(name, spec);
    }
    let inherited = inheritance::effective_attachments(group, |name| groups.get(name));
    if let Some(name) = inherited.missing {
        return Err(missing(ResourceKind::Group, &name));
    }
    Ok(inherited
        .attachments
        .into_iter()
        .map(|effective| EffectiveResource {
            kind: effective.attachment.kind,
            name: effective.attachment.name,
            alias: effective.attachment.alias,
            attached_by: effective.attached_by,
        })
        .collect())
}

/// `GET /api/v1/tenants/{tenant}/groups/{name}/resources`: what the group's proxies get.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}/{name}/resources", tag = "configuration",
    params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "groups"),
        ("name" = String, Path, description = "The group's name"), ReadParams),
    responses((status = 200, description = "The group's own and inherited resources", body = Vec<EffectiveResource>),
        (status = 404, description = "No such group (or the kind is not `groups`)", body = crate::openapi::Problem)))]
pub async fn group_resources(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, collection, name)): Path<(String, String, String)>,
    ApiQuery(params): ApiQuery<ReadParams>,
) -> Result<Json<Vec<EffectiveResource>>, ApiError> {
    if kind_of(&collection)? != ResourceKind::Group {
        return Err(ApiError::NotFound(format!(
            "only groups have effective resources, not {collection}"
        )));
    }
    let tenant = tenant_access(&state, &actor, &tenant, Access::Read).await?;
    let branch = branch_of(&state, &tenant, params.branch).await?;
    let as_of = as_of(&state, &tenant, &branch, params.revision, params.at).await?;
    Ok(Json(
        effective_attachments(&state, &tenant, &branch, &name, as_of).await?,
    ))
}

/// How a resource is declared from a template.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Declaration {
    /// The template.
    template: String,
    /// Parameter values given (defaults not repeated).
    #[schema(value_type = Object)]
    parameters: Value,
    /// The merge patch applied after rendering.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    overrides: Option<Value>,
}

/// `GET /api/v1/tenants/{tenant}/{kind}/{name}/declaration`: the template declaration a resource
/// is rendered from.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}/{name}/declaration", tag = "configuration",
    params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners or routes"),
        ("name" = String, Path, description = "The resource's Envoy name"), BranchParams),
    responses((status = 200, description = "Its template, parameter values and overrides", body = Declaration),
        (status = 404, description = "No such resource, or it is not declared from a template", body = crate::openapi::Problem)))]
pub async fn declaration(
    State(state): State<AppState>,
    Principal(actor): Principal,
    Path((tenant, collection, name)): Path<(String, String, String)>,
    ApiQuery(params): ApiQuery<BranchParams>,
) -> Result<Json<Declaration>, ApiError> {
    let kind = kind_of(&collection)?;
    let tenant = tenant_access(&state, &actor, &tenant, Access::Read).await?;
    let branch = branch_of(&state, &tenant, params.branch).await?;
    let declared = read::derivation_of(&state.pool, tenant.tenant_id, &branch, kind, &name)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "{kind} `{name}` does not exist or is not declared from a template"
            ))
        })?;
    let derivation: Derivation = serde_json::from_value(declared).map_err(ApiError::internal)?;
    Ok(Json(Declaration {
        template: derivation.template,
        parameters: serde_json::to_value(derivation.parameters).map_err(ApiError::internal)?,
        overrides: derivation.overrides,
    }))
}

/// Schema violations as a 422.
pub fn invalid(violations: Vec<Violation>) -> ApiError {
    ApiError::Validation(
        violations
            .into_iter()
            .map(|violation| FieldError::at(violation.pointer, violation.message))
            .collect(),
    )
}

/// `If-Match: "N"` (or `W/"N"`, or `*`).
pub fn if_match(headers: &HeaderMap) -> Result<Option<Expect>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(Some(Expect::Present));
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<u64>()
        .map(|version| Some(Expect::Version(version)))
        .map_err(|_| ApiError::BadRequest {
            detail: format!("`If-Match: {text}` is not an ETag this API gave out (such as \"3\")"),
            errors: Vec::new(),
        })
}

fn change_name(change: &Change) -> String {
    change.key().1.to_owned()
}

/// The key of a body that declares a resource from a template instead of giving it.
pub const TEMPLATE_KEY: &str = "$template";

/// A declaration from a template, as a request body gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateUse {
    template: String,
    /// The resource's name (on create; a replace takes it from the path).
    name: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, Value>,
    overrides: Option<Value>,
}

/// The change a create or replace body asks for: the resource itself, or
/// `{"$template": {"template", "name"?, "parameters"?, "overrides"?}}` to declare it from a
/// template (rendered and validated by the commit).
pub fn change_of(
    kind: ResourceKind,
    body: &Value,
    expect: Expect,
    path_name: Option<&str>,
) -> Result<Change, ApiError> {
    let Some(declaration) = body
        .as_object()
        .filter(|object| object.len() == 1)
        .and_then(|object| object.get(TEMPLATE_KEY))
    else {
        return Change::put(kind, body, expect).map_err(invalid);
    };
    let at = |pointer: &str, detail: String| {
        ApiError::Validation(vec![FieldError::at(
            format!("/{TEMPLATE_KEY}{pointer}"),
            detail,
        )])
    };
    let declared: TemplateUse = serde_json::from_value(declaration.clone())
        .map_err(|error| at("", format!("not a template declaration: {error}")))?;
    if kind.message_name().is_none() {
        return Err(at(
            "",
            format!("only Envoy resources are declared from templates, not {kind}s"),
        ));
    }
    let name = match (path_name, declared.name) {
        (Some(path), Some(given)) if path != given => {
            return Err(at(
                "/name",
                format!("the body names `{given}`, the path `{path}`"),
            ))
        }
        (Some(path), _) => path.to_owned(),
        (None, Some(given)) => given,
        (None, None) => return Err(at("/name", "a declaration needs a `name`".to_owned())),
    };
    efms_domain::envoy::check_name(&name).map_err(|detail| at("/name", detail))?;
    Ok(Change::Derive {
        kind,
        name,
        derivation: Derivation {
            template: declared.template,
            parameters: declared.parameters,
            overrides: declared.overrides,
        },
        expect,
    })
}

/// The change that restores a stored resource: its document, or its template declaration.
pub fn restore(
    kind: ResourceKind,
    document: &Value,
    derivation: Option<&Value>,
    expect: Expect,
) -> Result<Change, ApiError> {
    match derivation {
        None => Change::put(kind, document, expect).map_err(invalid),
        Some(derivation) => Ok(Change::Derive {
            kind,
            name: document
                .get(kind.name_field())
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            derivation: serde_json::from_value(derivation.clone()).map_err(ApiError::internal)?,
            expect,
        }),
    }
}

fn check_path_name(kind: ResourceKind, name: &str, change: &Change) -> Result<(), ApiError> {
    let body_name = change_name(change);
    if body_name == name {
        Ok(())
    } else {
        Err(ApiError::Validation(vec![FieldError::at(
            format!("/{}", kind.name_field()),
            format!("the body names `{body_name}`, the path `{name}`; renaming is a create and a delete"),
        )]))
    }
}

fn missing(kind: ResourceKind, name: &str) -> ApiError {
    ApiError::NotFound(format!("there is no {kind} `{name}`"))
}

/// Reads a resource back after a write; the commit succeeded, so a missing row means the read model
/// lags (the write is not lost).
async fn read_back(
    state: &AppState,
    tenant: &TenantAccess,
    branch: &str,
    kind: ResourceKind,
    name: &str,
) -> Result<ResourceRow, ApiError> {
    read::get_resource(&state.pool, tenant.tenant_id, branch, kind, name, AsOf::Now)
        .await?
        .ok_or_else(|| {
            ApiError::Unavailable(format!(
                "{kind} `{name}` is committed but not readable yet; read it again shortly"
            ))
        })
}

/// The response for one resource: its (redacted) Envoy JSON, `ETag` and `Last-Modified`.
pub fn resource_response(status: StatusCode, kind: ResourceKind, row: &ResourceRow) -> Response {
    let etag =
        HeaderValue::from_str(&format!("\"{}\"", row.version)).expect("a number is a header value");
    let modified = HeaderValue::from_str(
        &row.updated_at
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
    )
    .expect("a date is a header value");
    let mut response = (status, Json(redact(kind, row.document.clone()))).into_response();
    response.headers_mut().insert(header::ETAG, etag);
    response
        .headers_mut()
        .insert(header::LAST_MODIFIED, modified);
    response
}

/// Resources are never read back with their secret material: every value Envoy's schema marks
/// sensitive is replaced by `{"redacted": true}` (which no write accepts), whatever the kind
/// (see [`efms_domain::envoy::sensitive`]).
pub fn redact(kind: ResourceKind, document: Value) -> Value {
    efms_domain::envoy::sensitive::redact(kind, document)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_read_without_private_material() {
        let secret = serde_json::json!({
            "name": "s",
            "tls_certificate": {
                "certificate_chain": { "inline_string": "CERT" },
                "private_key": { "inline_string": "KEY" }
            }
        });
        let shown = redact(ResourceKind::Secret, secret);
        assert_eq!(
            shown["tls_certificate"]["certificate_chain"]["inline_string"],
            "CERT"
        );
        assert!(!shown.to_string().contains("KEY"));
    }

    #[test]
    fn if_match_accepts_strong_weak_and_star() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"4\""));
        assert_eq!(if_match(&headers).unwrap(), Some(Expect::Version(4)));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("W/\"5\""));
        assert_eq!(if_match(&headers).unwrap(), Some(Expect::Version(5)));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(if_match(&headers).unwrap(), Some(Expect::Present));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"abc\""));
        assert!(if_match(&headers).is_err());
    }
}

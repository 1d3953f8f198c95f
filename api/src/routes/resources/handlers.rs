//! The CRUD handlers of Envoy resources: list, get, create, replace, patch and delete.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use efms_domain::config::{Change, Expect, Operation, MAIN_BRANCH};
use efms_projections::config::{self as read, AsOf, ListQuery};
use serde_json::Value;

use super::changes::{change_name, change_of, check_path_name, invalid, renamed, TEMPLATE_KEY};
use super::commits::{commit, commit_request, read_back};
use super::context::{as_of, missing, Collection, IfMatch, ResourcePath};
use super::groups::effective_attachments;
use super::params::{BranchParams, ListParams, ReadParams};
use super::responses::{render_page, resource_response, ListPage, SharedText};
use crate::access::{ReadConfig, TenantBranch, WriteConfig};
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery, CommitMeta};
use crate::read_replica::Reads;
use crate::routes::patching::{refused, PatchBody};
use crate::state::AppState;
use efms_commands::configuration::patches::PatchError;

/// `GET /api/v1/tenants/{tenant}/{kind}`.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}", tag = "configuration", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ListParams),
    responses((status = 200, description = "A page of resources", body = ListPage),
        (status = 404, description = "No such tenant, collection or revision", body = crate::problem::Problem),
        (status = 422, description = "Bad paging or sort", body = crate::problem::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    Collection(kind): Collection,
    ApiQuery(params): ApiQuery<ListParams>,
    TenantBranch { tenant, branch }: TenantBranch<ReadConfig>,
    Reads(reads): Reads,
) -> Result<Response, ApiError> {
    crate::routes::names::check_list_parameters(
        params.name_prefix.as_deref(),
        params.cursor.as_deref(),
    )?;
    let page = crate::routes::PageSize::from_param(params.limit)?;
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
            read::list_resources(&reads, tenant.tenant_id, &branch, kind, as_of, &query).await?;
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

/// `GET /api/v1/tenants/{tenant}/{kind}/{name}`: the resource's Envoy JSON; `ETag` is its version.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}/{name}", tag = "configuration", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ("name" = String, Path, description = "The resource's Envoy name"), ReadParams),
    responses((status = 200, description = "The Envoy resource", body = Object),
        (status = 404, description = "Not found (now or at that revision)", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    ResourcePath { kind, name }: ResourcePath,
    ApiQuery(params): ApiQuery<ReadParams>,
    TenantBranch { tenant, branch }: TenantBranch<ReadConfig>,
    Reads(reads): Reads,
) -> Result<Response, ApiError> {
    crate::routes::names::check_lookup(kind, &name)?;
    let as_of = as_of(&state, &tenant, &branch, params.revision, params.at).await?;
    let row = match as_of {
        AsOf::Now if branch == MAIN_BRANCH => {
            state.cache.get(tenant.tenant_id, kind, &name).await?
        }
        _ => read::get_resource(&reads, tenant.tenant_id, &branch, kind, &name, as_of)
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
        (status = 403, description = "The role may not write", body = crate::problem::Problem),
        (status = 409, description = "It exists", body = crate::problem::Problem),
        (status = 422, description = "Invalid, or refers to a missing resource", body = crate::problem::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Collection(kind): Collection,
    ApiQuery(_): ApiQuery<BranchParams>,
    TenantBranch { tenant, branch }: TenantBranch<WriteConfig>,
    meta: CommitMeta,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    crate::routes::patching::check_written(&body, &state.limits.commit)?;
    let change = change_of(kind, &body, Expect::Absent, None)?;
    let name = change_name(&change);
    commit(
        &state,
        &meta,
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
        (status = 412, description = "If-Match is stale", body = crate::problem::Problem),
        (status = 422, description = "Invalid, or refers to a missing resource", body = crate::problem::Problem)))]
/// `PUT /api/v1/tenants/{tenant}/{kind}/{name}`: replaces (or creates) a resource. `If-Match`
/// makes it conditional on the current version.
pub async fn replace(
    State(state): State<AppState>,
    ResourcePath { kind, name }: ResourcePath,
    ApiQuery(_): ApiQuery<BranchParams>,
    TenantBranch { tenant, branch }: TenantBranch<WriteConfig>,
    IfMatch(expect): IfMatch,
    meta: CommitMeta,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let expect = expect.unwrap_or(Expect::Anything);
    crate::routes::patching::check_written(&body, &state.limits.commit)?;
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
        &meta,
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
        (status = 404, description = "No such resource", body = crate::problem::Problem),
        (status = 412, description = "If-Match is stale", body = crate::problem::Problem),
        (status = 415, description = "Not a patch media type", body = crate::problem::Problem),
        (status = 422, description = "The patch does not apply or the result is invalid", body = crate::problem::Problem)))]
/// `PATCH /api/v1/tenants/{tenant}/{kind}/{name}` with `application/json-patch+json` (RFC 6902)
/// or `application/merge-patch+json` (RFC 7396).
pub async fn patch(
    State(state): State<AppState>,
    ResourcePath { kind, name }: ResourcePath,
    ApiQuery(_): ApiQuery<BranchParams>,
    TenantBranch { tenant, branch }: TenantBranch<WriteConfig>,
    IfMatch(explicit): IfMatch,
    meta: CommitMeta,
    PatchBody(patch): PatchBody,
) -> Result<Response, ApiError> {
    let request = commit_request(&meta, (&tenant, &branch));
    let patched = state
        .configuration
        .patch(&request, (kind, &name), &patch, explicit)
        .await;
    patched.map_err(|error| match error {
        PatchError::Missing => missing(kind, &name),
        PatchError::Declared { template } => ApiError::Conflict(format!(
            "{kind} `{name}` is declared from template `{template}`: PUT a new declaration \
             ({{\"{TEMPLATE_KEY}\": …}}), or PUT a whole resource to stop deriving it"
        )),
        PatchError::Refused(refusal) => refused(&refusal, kind, &name, ""),
        PatchError::Invalid(violations) => invalid(violations),
        PatchError::Renamed(body_name) => renamed(kind, &name, &body_name),
        PatchError::Service(error) => error.into(),
    })?;
    let row = read_back(&state, &tenant, &branch, kind, &name).await?;
    Ok(resource_response(StatusCode::OK, kind, &row))
}

/// `DELETE /api/v1/tenants/{tenant}/{kind}/{name}`: 204; 409 naming the dependents when it is used.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/{kind}/{name}", tag = "configuration", params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "clusters, endpoints, listeners, routes, secrets, groups or templates"), ("name" = String, Path, description = "The resource's Envoy name"), BranchParams),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such resource", body = crate::problem::Problem),
        (status = 409, description = "Still used by other resources", body = crate::problem::Problem),
        (status = 412, description = "If-Match is stale", body = crate::problem::Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    ResourcePath { kind, name }: ResourcePath,
    ApiQuery(_): ApiQuery<BranchParams>,
    TenantBranch { tenant, branch }: TenantBranch<WriteConfig>,
    IfMatch(expect): IfMatch,
    meta: CommitMeta,
) -> Result<StatusCode, ApiError> {
    let expect = expect.unwrap_or(Expect::Present);
    let change = Change::Delete { kind, name, expect };
    commit(
        &state,
        &meta,
        (&tenant, &branch),
        Operation::Delete,
        vec![change],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

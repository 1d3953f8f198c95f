//! Sharing between tenants (FR-MT-005): `/api/v1/tenants/{tenant}/grants` (what a tenant shares)
//! and `/api/v1/tenants/{tenant}/shared` (what is shared with it).
//!
//! A tenant's admin grants another tenant read access to a named cluster or template of its `main`
//! branch. The grantee reads it and refers to it as `owner/name`: a route to the cluster
//! `acme/payments`, a declaration from the template `acme/web`. Its proxies get the shared cluster
//! (with its endpoints) under that name, and follow the owner's changes. Revoking is refused while
//! the grantee refers to the resource, naming what would break; deleting a shared resource is
//! refused while it is granted. Grants and revocations are recorded in the owner's audit trail.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use efms_commands::Scope;
use efms_domain::config::shared;
use efms_domain::config::{references, ResourceRef, MAIN_BRANCH};
use efms_domain::envoy::{check_name, ResourceKind};
use efms_domain::TenantSlug;
use efms_projections::config::{self as read, AsOf};
use efms_projections::tenants::get_tenant;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::{ManageGrants, ReadConfig, Tenant, TenantAccess};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::store::grants::{self as store, Revocation, Side};

/// The path of a grant: `{grantee}/{kind}/{name}`.
#[derive(Debug, Deserialize)]
pub struct GrantPath {
    grantee: String,
    kind: String,
    name: String,
}

/// Body of a grant.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGrant {
    /// The slug of the tenant that gets read access.
    grantee: String,
    /// `cluster` or `template`.
    kind: String,
    /// The resource's name on this tenant's `main`.
    name: String,
}

/// A grant, as its owner and its grantee see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantView {
    /// The tenant that shares.
    owner: String,
    /// The tenant that may read and refer to the resource.
    grantee: String,
    /// `cluster` or `template`.
    kind: String,
    /// The owner's name of the resource.
    name: String,
    /// How the grantee refers to it: `owner/name`.
    reference: String,
    granted_at: DateTime<Utc>,
    granted_by: String,
}

/// A resource shared with a tenant, with its current document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SharedView {
    #[serde(flatten)]
    grant: GrantView,
    /// The owner's current document; absent when the owner has not (yet) got the resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<Value>,
    /// The owner's revision at which it last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
}

use efms_commands::configuration::sharing::shareable;

/// `POST /api/v1/tenants/{tenant}/grants`: share a cluster or template of `main` with a tenant.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/grants", tag = "sharing",
    params(("tenant" = String, Path, description = "Tenant slug (the owner)")),
    request_body = NewGrant,
    responses((status = 201, description = "Granted", body = GrantView),
        (status = 403, description = "Only admins share", body = crate::problem::Problem),
        (status = 409, description = "Granted already", body = crate::problem::Problem),
        (status = 422, description = "No such tenant or resource, a kind that is not shared, or a cluster that needs secrets", body = crate::problem::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    tenant: Tenant<ManageGrants>,
    ApiJson(body): ApiJson<NewGrant>,
) -> Result<Response, ApiError> {
    let (grantee, kind) = checked(&state, &tenant, &body).await?;
    let granted_by = tenant.actor().audit_name();
    let kind_name = kind.to_string();
    let grant = store::NewGrant {
        owner: (tenant.tenant_id, tenant.slug.as_str()),
        grantee: &grantee,
        kind: &kind_name,
        name: &body.name,
        granted_by: &granted_by,
    };
    let granted_at = store::create(&state.pool, grant).await?.ok_or_else(|| {
        ApiError::Conflict(format!(
            "{kind} `{}` is shared with `{grantee}` already",
            body.name
        ))
    })?;
    Ok((
        StatusCode::CREATED,
        Json(GrantView {
            owner: tenant.slug.to_string(),
            grantee: grantee.to_string(),
            kind: kind.to_string(),
            reference: shared::qualified(tenant.slug.as_str(), &body.name),
            name: body.name,
            granted_at,
            granted_by,
        }),
    )
        .into_response())
}

/// The grantee and kind of a valid grant, or every fault.
async fn checked(
    state: &AppState,
    tenant: &TenantAccess,
    body: &NewGrant,
) -> Result<(TenantSlug, ResourceKind), ApiError> {
    let mut errors = Vec::new();
    let grantee = TenantSlug::parse(&body.grantee);
    if grantee.is_err() {
        errors.push(FieldError::at("/grantee", "not a tenant slug"));
    }
    let kind = shareable(&body.kind);
    if kind.is_none() {
        errors.push(FieldError::at(
            "/kind",
            "`cluster` or `template` (a cluster brings its endpoints; secrets are never shared)",
        ));
    }
    if let Err(detail) = check_name(&body.name) {
        errors.push(FieldError::at("/name", detail));
    } else if let Some(kind) = kind {
        let row = read::get_resource(
            &state.pool,
            tenant.tenant_id,
            MAIN_BRANCH,
            kind,
            &body.name,
            AsOf::Now,
        )
        .await?;
        match row {
            None => errors.push(FieldError::at(
                "/name",
                format!("there is no {kind} `{}` on `main`", body.name),
            )),
            Some(row) => {
                if let Some(secret) = secret_ref(kind, &row.document) {
                    errors.push(FieldError::at(
                        "/name",
                        format!(
                            "{kind} `{}` uses secret `{}`; secrets are never shared",
                            body.name, secret.name
                        ),
                    ));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let grantee = grantee.expect("checked");
    // Last, and with one answer for this tenant itself and for a slug no tenant has: what
    // tenants exist is not for another tenant's admin to learn from a refusal.
    let exists = grantee != tenant.slug
        && get_tenant(
            &state.pool,
            Scope::Tenant(grantee.tenant_id()),
            grantee.as_str(),
        )
        .await?
        .is_some();
    if !exists {
        return Err(ApiError::Validation(vec![FieldError::at(
            "/grantee",
            UNSHAREABLE_TENANT,
        )]));
    }
    Ok((grantee, kind.expect("checked")))
}

/// The refusal of a grantee that is this tenant itself or no tenant at all (the same for both).
const UNSHAREABLE_TENANT: &str =
    "cannot share with that tenant: no tenant shares with itself or with a slug no tenant has";

/// A secret the resource refers to, if any: such a resource cannot be shared.
fn secret_ref(kind: ResourceKind, document: &Value) -> Option<ResourceRef> {
    references(kind, document)
        .into_iter()
        .find(|r| r.kind == ResourceKind::Secret)
}

/// `GET /api/v1/tenants/{tenant}/grants`: what this tenant shares, and with whom.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/grants", tag = "sharing",
    params(("tenant" = String, Path, description = "Tenant slug (the owner)")),
    responses((status = 200, description = "The grants, by kind, name and grantee", body = Vec<GrantView>)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
) -> Result<Json<Vec<GrantView>>, ApiError> {
    let rows = grant_rows(&state, &tenant, Side::Given).await?;
    Ok(Json(rows.into_iter().map(|row| row.grant).collect()))
}

/// The grants a tenant made or received, with the current documents of the shared resources
/// (sensitive values redacted).
async fn grant_rows(
    state: &AppState,
    tenant: &TenantAccess,
    side: Side,
) -> Result<Vec<SharedView>, ApiError> {
    let rows = store::list(&state.pool, tenant.tenant_id, side).await?;
    Ok(rows
        .into_iter()
        .map(|row| SharedView {
            document: row.document.map(|document| match shareable(&row.kind) {
                Some(kind) => efms_domain::envoy::sensitive::redact(kind, document),
                None => document,
            }),
            grant: GrantView {
                reference: shared::qualified(&row.owner_slug, &row.name),
                owner: row.owner_slug,
                grantee: row.grantee_slug,
                kind: row.kind,
                name: row.name,
                granted_at: row.granted_at,
                granted_by: row.granted_by,
            },
            version: row.version,
        })
        .collect())
}

/// `DELETE /api/v1/tenants/{tenant}/grants/{grantee}/{kind}/{name}`: revoke a grant, unless the
/// grantee refers to the resource (409 naming each of its resources that does).
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/grants/{grantee}/{kind}/{name}", tag = "sharing",
    params(("tenant" = String, Path, description = "Tenant slug (the owner)"),
        ("grantee" = String, Path, description = "The grantee's slug"),
        ("kind" = String, Path, description = "`cluster` or `template`"),
        ("name" = String, Path, description = "The resource's name")),
    responses((status = 204, description = "Revoked"),
        (status = 403, description = "Only admins share", body = crate::problem::Problem),
        (status = 404, description = "No such grant", body = crate::problem::Problem),
        (status = 409, description = "The grantee refers to the resource; the answer names where", body = crate::problem::Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant<ManageGrants>,
    Path(GrantPath {
        grantee,
        kind,
        name,
    }): Path<GrantPath>,
) -> Result<StatusCode, ApiError> {
    let missing =
        || ApiError::NotFound(format!("`{kind}` `{name}` is not shared with `{grantee}`"));
    let grantee_slug = TenantSlug::parse(&grantee).map_err(|_| missing())?;
    let qualified = shared::qualified(tenant.slug.as_str(), &name);
    let reference = format!("{kind}:{qualified}");
    let revocation = store::revoke(
        &state.pool,
        tenant.tenant_id,
        (&grantee_slug, &kind, &name),
        &reference,
    )
    .await?;
    match revocation {
        Revocation::Revoked => Ok(StatusCode::NO_CONTENT),
        Revocation::Missing => Err(missing()),
        Revocation::InUse(dependents) => {
            let listed = dependents
                .iter()
                .map(|d| format!("{} `{}` on branch `{}`", d.kind, d.name, d.branch))
                .collect::<Vec<_>>()
                .join(", ");
            Err(ApiError::Conflict(format!(
                "tenant `{grantee_slug}` refers to {kind} `{name}` as `{qualified}`: revoking would break {listed}"
            )))
        }
    }
}

/// `GET /api/v1/tenants/{tenant}/shared`: what other tenants share with this one, with the
/// current documents.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/shared", tag = "sharing",
    params(("tenant" = String, Path, description = "Tenant slug (the grantee)")),
    responses((status = 200, description = "The resources shared with this tenant, by owner, kind and name", body = Vec<SharedView>)))]
pub async fn received(
    State(state): State<AppState>,
    tenant: Tenant<ReadConfig>,
) -> Result<Json<Vec<SharedView>>, ApiError> {
    Ok(Json(grant_rows(&state, &tenant, Side::Received).await?))
}

/// The sharing routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/tenants/{tenant}/grants", get(list).post(create))
        .route(
            "/tenants/{tenant}/grants/{grantee}/{kind}/{name}",
            axum::routing::delete(delete),
        )
        .route("/tenants/{tenant}/shared", get(received))
}

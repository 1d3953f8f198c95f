//! Groups: the resources a group's proxies get (its own attachments and its ancestors'), and the
//! template declaration a resource is rendered from.

use axum::extract::State;
use axum::Json;
use efms_domain::config::template::Derivation;
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, AsOf};
use serde::Serialize;
use serde_json::Value;

use super::context::{as_of, missing, ResourcePath};
use super::params::{BranchParams, ReadParams};
use crate::access::{ReadConfig, TenantAccess, TenantBranch};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::AppState;

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
    let inherited =
        read::group_resources(&state.pool, tenant.tenant_id, branch, group, as_of).await?;
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
        (status = 404, description = "No such group (or the kind is not `groups`)", body = crate::problem::Problem)))]
pub async fn group_resources(
    State(state): State<AppState>,
    ResourcePath { kind, name }: ResourcePath,
    ApiQuery(params): ApiQuery<ReadParams>,
    TenantBranch { tenant, branch }: TenantBranch<ReadConfig>,
) -> Result<Json<Vec<EffectiveResource>>, ApiError> {
    if kind != ResourceKind::Group {
        return Err(ApiError::NotFound(format!(
            "only groups have effective resources, not {}",
            kind.collection()
        )));
    }
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
        (status = 404, description = "No such resource, or it is not declared from a template", body = crate::problem::Problem)))]
pub async fn declaration(
    State(state): State<AppState>,
    ResourcePath { kind, name }: ResourcePath,
    ApiQuery(_): ApiQuery<BranchParams>,
    TenantBranch { tenant, branch }: TenantBranch<ReadConfig>,
) -> Result<Json<Declaration>, ApiError> {
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

//! The proxy tokens bootstraps mint (NFR-SE-001): `/api/v1/tenants/{tenant}/proxy-tokens`.
//!
//! Each token names its id (`jti`) and is bound to one group: the xDS server refuses a stream
//! whose node claims another. Every token is stored when it is minted; revoking one refuses new
//! streams with it and ends the open ones (within the re-check interval on every replica, at once
//! on the one that revoked it). Envoy cannot renew a token held in its bootstrap, so a token is
//! rotated by handing the proxy a new bootstrap before the old one expires.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{ManageProxyTokens, Tenant, WriteConfig};
use crate::credentials::ProxyBinding;
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::state::AppState;
use crate::store::proxy_tokens as store;
use crate::ttl::{format_ttl, parse_ttl};

/// The `{id}` of a proxy token route.
#[derive(Debug, Deserialize)]
pub struct TokenId {
    id: String,
}

/// A proxy token, as the list shows it (never the token itself).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProxyTokenView {
    /// The token's id (its `jti`).
    id: Uuid,
    /// The group it streams.
    group: String,
    /// The node it was minted for.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<String>,
    /// Who minted it.
    issued_by: String,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_by: Option<String>,
    /// `active`, `expired` or `revoked`.
    state: String,
}

/// A page of proxy tokens.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProxyTokensPage {
    items: Vec<ProxyTokenView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<Uuid>,
}

/// Query of the proxy token list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProxyTokensParams {
    /// Page size (1 to 500, default 50).
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<Uuid>,
    /// Only the tokens of this group.
    group: Option<String>,
}

fn view(row: store::ProxyTokenRow) -> ProxyTokenView {
    let store::ProxyTokenRow {
        token_id: id,
        group_name: group,
        node_id,
        issued_by,
        issued_at,
        expires_at,
        revoked_at,
        revoked_by,
    } = row;
    let state = if revoked_at.is_some() {
        "revoked"
    } else if expires_at <= Utc::now() {
        "expired"
    } else {
        "active"
    };
    ProxyTokenView {
        id,
        group,
        node_id,
        issued_by,
        issued_at,
        expires_at,
        revoked_at,
        revoked_by,
        state: state.to_owned(),
    }
}

/// `GET /api/v1/tenants/{tenant}/proxy-tokens`: the proxy tokens bootstraps minted, newest
/// first, with their group, node, issuer, expiry and revocation.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/proxy-tokens", tag = "proxies",
    params(("tenant" = String, Path, description = "Tenant slug"), ProxyTokensParams),
    responses((status = 200, description = "A page of proxy tokens", body = ProxyTokensPage),
        (status = 403, description = "The role may not list proxy tokens", body = crate::problem::Problem),
        (status = 404, description = "No such tenant", body = crate::problem::Problem),
        (status = 422, description = "Bad paging", body = crate::problem::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ProxyTokensParams>,
    tenant: Tenant<ManageProxyTokens>,
) -> Result<Json<ProxyTokensPage>, ApiError> {
    let page = super::PageSize::from_param(params.limit)?;
    let query = store::PageQuery {
        before: params.cursor,
        group: params.group.as_deref(),
        limit: page.fetch(),
    };
    let mut rows = store::list(&state.pool, tenant.tenant_id, query).await?;
    let next_cursor = page.cut(&mut rows, |row| row.token_id);
    Ok(Json(ProxyTokensPage {
        items: rows.into_iter().map(view).collect(),
        next_cursor,
    }))
}

/// `DELETE /api/v1/tenants/{tenant}/proxy-tokens/{id}`: revokes a proxy token. New streams with
/// it are refused at once; open ones end within the re-check interval (at once on this replica).
/// Revoking a revoked token changes nothing.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/proxy-tokens/{id}", tag = "proxies",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The token's id")),
    responses((status = 204, description = "Revoked"),
        (status = 403, description = "The role may not revoke proxy tokens", body = crate::problem::Problem),
        (status = 404, description = "No such proxy token", body = crate::problem::Problem)))]
pub async fn revoke(
    State(state): State<AppState>,
    tenant: Tenant<ManageProxyTokens>,
    Path(TokenId { id }): Path<TokenId>,
) -> Result<StatusCode, ApiError> {
    let missing = || ApiError::NotFound(format!("there is no proxy token `{id}`"));
    let token_id = Uuid::parse_str(&id).map_err(|_| missing())?;
    let revoked_by = tenant.actor().audit_name();
    if !store::revoke(&state.pool, tenant.tenant_id, token_id, &revoked_by).await? {
        return Err(missing());
    }
    state.xds.recheck_credentials();
    Ok(StatusCode::NO_CONTENT)
}

/// The lifetime a bootstrap's `token_ttl` asks for: the installation's default when absent, at
/// most its maximum.
pub(crate) fn token_ttl(state: &AppState, asked: Option<&str>) -> Result<Duration, FieldError> {
    let Some(asked) = asked else {
        return Ok(state.tokens.proxy_ttl);
    };
    let ttl = parse_ttl(asked).map_err(|problem| FieldError::parameter("token_ttl", problem))?;
    let max = state.tokens.proxy_max_ttl;
    if ttl > max {
        return Err(FieldError::parameter(
            "token_ttl",
            format!("at most {} (EFMS_PROXY_TOKEN_MAX_TTL)", format_ttl(max)),
        ));
    }
    Ok(ttl)
}

/// Whose proxy token is minted, and by whom.
pub(crate) struct TokenOwner<'a> {
    /// The tenant's id.
    pub tenant_id: Uuid,
    /// The tenant's slug.
    pub slug: &'a efms_domain::tenant::TenantSlug,
    /// Who issues it, as the audit names them.
    pub issued_by: String,
}

impl<'a> TokenOwner<'a> {
    /// The tenant of a request, issued by its actor.
    pub(crate) fn of(tenant: &'a Tenant<WriteConfig>) -> Self {
        Self {
            tenant_id: tenant.tenant_id,
            slug: &tenant.slug,
            issued_by: tenant.actor().audit_name(),
        }
    }
}

/// Mints a proxy token of `owner`'s tenant for `node_id`, bound to `group`, valid for `ttl`, and
/// stores it so that it can be listed and revoked.
pub(crate) async fn mint(
    state: &AppState,
    owner: TokenOwner<'_>,
    (group, node_id): (&str, &str),
    ttl: Duration,
) -> Result<String, ApiError> {
    let token_id = Uuid::now_v7();
    let expires_at = i64::try_from(ttl.as_secs())
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|ttl| Utc::now().checked_add_signed(ttl))
        .ok_or_else(|| ApiError::internal("the token lifetime is out of range"))?;
    let token = state
        .jwt
        .issue_proxy(
            &format!("proxy:{node_id}"),
            owner.slug,
            ProxyBinding {
                token_id,
                group: group.to_owned(),
            },
            ttl,
        )
        .map_err(ApiError::internal)?;
    // Stored once issued: a token that could not be issued leaves no record.
    let record = store::NewProxyToken {
        tenant_id: owner.tenant_id,
        token_id,
        group,
        node_id,
        issued_by: &owner.issued_by,
        expires_at,
    };
    store::insert(&state.pool, record).await?;
    Ok(token)
}

/// The proxy tokens' routes.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/tenants/{tenant}/proxy-tokens", axum::routing::get(list))
        .route(
            "/tenants/{tenant}/proxy-tokens/{id}",
            axum::routing::delete(revoke),
        )
}

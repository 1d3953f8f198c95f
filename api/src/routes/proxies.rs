//! The proxies of a tenant (DESIGN §7, NFR-OB-004): what each one runs, and the bootstrap that
//! connects a stock Envoy to its group.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use efms_domain::config::MAIN_BRANCH;
use efms_domain::envoy::{check_name, ResourceKind};
use efms_projections::config::{self as read, AsOf};
use efms_projections::proxies::{self as status, ProxyRow, SyncState, TypeStatusRow};
use efms_projections::snapshots::XDS_KINDS;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::resources::ResourcePath;
use crate::access::{ReadConfig, Tenant, WriteConfig};
pub use crate::bootstrap::XdsProtocol;
use crate::bootstrap::{bootstrap_document, BootstrapSpec};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::read_replica::Reads;
use crate::state::AppState;

/// The `{node_id}` of a proxy route.
#[derive(Debug, Deserialize)]
pub struct NodeId {
    node_id: String,
}

/// A proxy's status on one resource type.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TypeStatus {
    /// The resource kind (`cluster`, `endpoints`, `listener`, `route`, `secret`).
    #[serde(rename = "type")]
    kind: String,
    /// The xDS type URL.
    type_url: String,
    /// SYNCED, STALE, NACKED or NOT_SENT.
    #[schema(value_type = String)]
    status: SyncState,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_version: Option<String>,
    /// The configuration revision the version sent was built at.
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_version: Option<String>,
    /// The configuration revision the version the proxy runs was built at.
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nacked_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nacked_at: Option<DateTime<Utc>>,
    /// Envoy's `error_detail` of the last refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    error_detail: Option<String>,
}

/// What a proxy accepted last of one type, as of the `at` asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RanEntry {
    /// The resource kind.
    #[serde(rename = "type")]
    kind: String,
    /// The version it ran.
    version: String,
    /// The configuration revision that version was built at.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    /// When it accepted it.
    accepted_at: DateTime<Utc>,
}

/// What the last decided check of a proxy's `config_dump` found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConfigCheckView {
    /// When the dump was read.
    checked_at: DateTime<Utc>,
    /// Whether it held what the proxy accepted.
    agrees: bool,
    /// Why not: the container and both versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    diverged: Option<String>,
    /// Since when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    diverged_since: Option<DateTime<Utc>>,
}

/// A proxy and what it runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Proxy {
    /// Its `node.id`.
    node_id: String,
    /// The group whose configuration it gets.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// Its `node.cluster`.
    node_cluster: String,
    /// The Envoy version it reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    envoy_version: Option<String>,
    /// `sotw` or `delta`.
    protocol: String,
    /// Whether a stream is open now.
    connected: bool,
    connected_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnected_at: Option<DateTime<Utc>>,
    last_seen_at: DateTime<Utc>,
    /// SYNCED when every type is, else NACKED if any type is, else STALE (NOT_SENT before anything
    /// was sent).
    #[schema(value_type = String)]
    status: SyncState,
    /// Per resource type.
    types: Vec<TypeStatus>,
    /// The last decided comparison of its `config_dump` (read by the agent on its VM) with what
    /// it accepted; `null` before any.
    #[serde(skip_serializing_if = "Option::is_none")]
    config_check: Option<ConfigCheckView>,
    /// With `?at=`: what it ran then, per type.
    #[serde(skip_serializing_if = "Option::is_none")]
    ran_at: Option<Vec<RanEntry>>,
    /// With `GET /proxies/{node_id}`: the container it runs in (label `efms.node_id`) and the
    /// VM it is on, as their agent reported; `null` for a proxy no agent reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    container: Option<Value>,
}

fn kind_name(type_url: &str) -> String {
    XDS_KINDS
        .into_iter()
        .find(|kind| kind.type_url().is_some_and(|url| url == type_url))
        .map_or_else(|| type_url.to_owned(), |kind| kind.to_string())
}

fn proxy(row: ProxyRow, types: Vec<TypeStatusRow>) -> Proxy {
    let types: Vec<TypeStatus> = types
        .into_iter()
        .map(|t| TypeStatus {
            kind: kind_name(&t.type_url),
            status: t.state(),
            type_url: t.type_url,
            sent_version: t.sent_version,
            sent_revision: t.sent_revision,
            sent_at: t.sent_at,
            acked_version: t.acked_version,
            acked_revision: t.acked_revision,
            acked_at: t.acked_at,
            nacked_version: t.nacked_version,
            nacked_at: t.nacked_at,
            error_detail: t.error_detail,
        })
        .collect();
    let states: Vec<SyncState> = types.iter().map(|t| t.status).collect();
    let overall = SyncState::overall(&states);
    Proxy {
        node_id: row.node_id,
        group: row.group_name,
        node_cluster: row.node_cluster,
        envoy_version: row.envoy_version,
        protocol: row.protocol,
        connected: row.streams > 0,
        connected_at: row.connected_at,
        disconnected_at: row.disconnected_at,
        last_seen_at: row.last_seen_at,
        status: overall,
        types,
        config_check: row.config_checked_at.map(|checked_at| ConfigCheckView {
            checked_at,
            agrees: row.config_diverged.is_none(),
            diverged: row.config_diverged,
            diverged_since: row.config_diverged_since,
        }),
        ran_at: None,
        container: None,
    }
}

/// Query of the proxies list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProxiesParams {
    /// Page size (1 to 500, default 50).
    limit: Option<u32>,
    /// The `next_cursor` of the previous page (a node id).
    cursor: Option<String>,
    /// Only the proxies of this group.
    group: Option<String>,
}

/// A page of proxies.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProxiesPage {
    items: Vec<Proxy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /api/v1/tenants/{tenant}/proxies`: every proxy seen, by node id.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/proxies", tag = "proxies",
    params(("tenant" = String, Path, description = "Tenant slug"), ProxiesParams),
    responses((status = 200, description = "A page of proxies", body = ProxiesPage),
        (status = 404, description = "No such tenant", body = crate::problem::Problem)))]
pub async fn list(
    ApiQuery(params): ApiQuery<ProxiesParams>,
    tenant: Tenant<ReadConfig>,
    Reads(reads): Reads,
) -> Result<Json<ProxiesPage>, ApiError> {
    let page = super::PageSize::from_param(params.limit)?;
    let mut rows = status::list_proxies(
        &reads,
        tenant.tenant_id,
        params.group.as_deref(),
        params.cursor.as_deref(),
        page.fetch(),
    )
    .await?;
    let next_cursor = page.cut(&mut rows, |row| row.node_id.clone());
    let ids: Vec<String> = rows.iter().map(|row| row.node_id.clone()).collect();
    let mut by_node: BTreeMap<String, Vec<TypeStatusRow>> = BTreeMap::new();
    for (node, row) in status::type_statuses(&reads, tenant.tenant_id, &ids).await? {
        by_node.entry(node).or_default().push(row);
    }
    let items = rows
        .into_iter()
        .map(|row| {
            let types = by_node.remove(&row.node_id).unwrap_or_default();
            proxy(row, types)
        })
        .collect();
    Ok(Json(ProxiesPage { items, next_cursor }))
}

/// Query of one proxy.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProxyParams {
    /// Also say what the proxy ran at this moment (RFC 3339), per type.
    at: Option<DateTime<Utc>>,
}

/// `GET /api/v1/tenants/{tenant}/proxies/{node_id}`: one proxy, per type what it was sent,
/// accepted and refused; with `?at=`, what it ran then.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/proxies/{node_id}", tag = "proxies",
    params(("tenant" = String, Path, description = "Tenant slug"), ("node_id" = String, Path, description = "The proxy's node.id"), ProxyParams),
    responses((status = 200, description = "The proxy", body = Proxy),
        (status = 404, description = "No such proxy", body = crate::problem::Problem)))]
pub async fn get(
    Path(NodeId { node_id }): Path<NodeId>,
    ApiQuery(params): ApiQuery<ProxyParams>,
    tenant: Tenant<ReadConfig>,
    Reads(reads): Reads,
) -> Result<Json<Proxy>, ApiError> {
    let row = status::get_proxy(&reads, tenant.tenant_id, &node_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no proxy `{node_id}` has connected")))?;
    let types = status::type_statuses(&reads, tenant.tenant_id, std::slice::from_ref(&node_id))
        .await?
        .into_iter()
        .map(|(_, row)| row)
        .collect();
    let mut answer = proxy(row, types);
    let container =
        efms_projections::fleet::queries::container_of_proxy(&reads, tenant.tenant_id, &node_id)
            .await?;
    answer.container = Some(container.map_or(Value::Null, |row| {
        json!({
            "id": row.container.id,
            "name": row.container.name,
            "vm": row.vm,
            "state": row.container.state.as_str(),
            "health": row.container.health.as_str(),
            "gone_at": row.gone_at,
        })
    }));
    if let Some(at) = params.at {
        answer.ran_at = Some(
            status::ran_at(&reads, tenant.tenant_id, &node_id, at)
                .await?
                .into_iter()
                .map(|ran| RanEntry {
                    kind: kind_name(&ran.type_url),
                    version: ran.version,
                    revision: ran.revision,
                    accepted_at: ran.at,
                })
                .collect(),
        );
    }
    Ok(Json(answer))
}

/// Query of a proxy's history.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Page size (1 to 500, default 50).
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<i64>,
}

/// A version a proxy accepted or refused.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Transition {
    /// The resource kind.
    #[serde(rename = "type")]
    kind: String,
    /// When.
    at: DateTime<Utc>,
    /// `acked` or `nacked`.
    outcome: String,
    /// The version.
    version: String,
    /// The configuration revision it was built at.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<i64>,
    /// Envoy's `error_detail`, for a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    error_detail: Option<String>,
}

/// A page of a proxy's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TransitionsPage {
    items: Vec<Transition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<i64>,
}

/// `GET /api/v1/tenants/{tenant}/proxies/{node_id}/history`: every version the proxy accepted or
/// refused, newest first.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/proxies/{node_id}/history", tag = "proxies",
    params(("tenant" = String, Path, description = "Tenant slug"), ("node_id" = String, Path, description = "The proxy's node.id"), HistoryParams),
    responses((status = 200, description = "A page of the proxy's history", body = TransitionsPage),
        (status = 404, description = "No such proxy", body = crate::problem::Problem),
        (status = 422, description = "Bad paging", body = crate::problem::Problem)))]
pub async fn history(
    Path(NodeId { node_id }): Path<NodeId>,
    ApiQuery(params): ApiQuery<HistoryParams>,
    tenant: Tenant<ReadConfig>,
    Reads(reads): Reads,
) -> Result<Json<TransitionsPage>, ApiError> {
    let page = super::PageSize::from_param(params.limit)?;
    status::get_proxy(&reads, tenant.tenant_id, &node_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no proxy `{node_id}` has connected")))?;
    let mut rows = status::transitions(
        &reads,
        tenant.tenant_id,
        &node_id,
        params.cursor,
        page.fetch(),
    )
    .await?;
    let next_cursor = page.cut(&mut rows, |row| row.seq);
    let items = rows
        .into_iter()
        .map(|row| Transition {
            kind: kind_name(&row.type_url),
            at: row.at,
            outcome: row.outcome,
            version: row.version,
            revision: row.revision,
            error_detail: row.error_detail,
        })
        .collect();
    Ok(Json(TransitionsPage { items, next_cursor }))
}

/// Query of a bootstrap.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BootstrapParams {
    /// The proxy's `node.id`.
    node_id: String,
    /// `sotw` (default) or `delta`.
    protocol: Option<XdsProtocol>,
    /// The port of Envoy's admin interface on 127.0.0.1 (default 9901).
    admin_port: Option<u16>,
    /// How often the proxy sends its statistics, such as `10s` (default EFMS_STATS_FLUSH_INTERVAL,
    /// `10s`; 1s to 1h).
    stats_flush_interval: Option<String>,
    /// How long the proxy token in the bootstrap stays valid, such as `7d` (default
    /// EFMS_PROXY_TOKEN_TTL, `30d`; at most EFMS_PROXY_TOKEN_MAX_TTL, `365d`). The proxy needs a
    /// new bootstrap before it expires.
    token_ttl: Option<String>,
}

/// `GET /api/v1/tenants/{tenant}/groups/{group}/bootstrap`: an Envoy bootstrap with which a stock
/// Envoy connects to this control plane as `node_id` of the group, authenticated by a `proxy`
/// token in its ADS `initial_metadata`. Needs the `operator` or `admin` role, since it mints that
/// token: bound to the group, listed and revoked under `…/proxy-tokens`.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/{kind}/{name}/bootstrap", tag = "proxies",
    params(("tenant" = String, Path, description = "Tenant slug"), ("kind" = String, Path, description = "groups"),
        ("name" = String, Path, description = "The group's name"), BootstrapParams),
    responses((status = 200, description = "An Envoy bootstrap (envoy.config.bootstrap.v3.Bootstrap, JSON)", body = Object),
        (status = 403, description = "The role may not mint proxy tokens", body = crate::problem::Problem),
        (status = 404, description = "No such group", body = crate::problem::Problem),
        (status = 422, description = "Bad node id, protocol or TTL", body = crate::problem::Problem)))]
pub async fn bootstrap(
    State(state): State<AppState>,
    ResourcePath { kind, name: group }: ResourcePath,
    ApiQuery(params): ApiQuery<BootstrapParams>,
    tenant: Tenant<WriteConfig>,
) -> Result<Json<Value>, ApiError> {
    if kind != ResourceKind::Group {
        return Err(ApiError::NotFound(format!(
            "only groups have a bootstrap, not {}",
            kind.collection()
        )));
    }
    let mut errors = Vec::new();
    if let Err(problem) = check_name(&params.node_id) {
        errors.push(FieldError::parameter("node_id", problem));
    }
    let ttl = super::proxy_tokens::token_ttl(&state, params.token_ttl.as_deref())
        .map_err(|problem| errors.push(problem))
        .ok();
    let stats_flush = match params.stats_flush_interval.as_deref() {
        None => Some(state.stats_flush_interval()),
        Some(text) => crate::ttl::parse_ttl(text)
            .and_then(|flush| {
                (std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3_600))
                    .contains(&flush)
                    .then_some(flush)
                    .ok_or_else(|| format!("`{text}` is outside 1s to 1h"))
            })
            .map_err(|problem| {
                errors.push(FieldError::parameter("stats_flush_interval", problem));
            })
            .ok(),
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    existing_group(&state.pool, tenant.tenant_id, &group).await?;
    let over =
        efms_projections::proxies::over_proxy_quota(&state.pool, tenant.tenant_id, &params.node_id)
            .await?;
    if let Some((limit, connected)) = over {
        return Err(ApiError::Forbidden(format!(
            "quota `proxies` ({limit}) is reached: {connected} proxies are connected"
        )));
    }
    let token = super::proxy_tokens::mint(
        &state,
        super::proxy_tokens::TokenOwner::of(&tenant),
        (&group, &params.node_id),
        ttl.expect("checked"),
    )
    .await?;
    let replicas = efms_xds::replicas::advertised(&state.pool).await?;
    Ok(Json(bootstrap_document(&BootstrapSpec {
        node_id: &params.node_id,
        group: &group,
        tenant: tenant.slug.as_str(),
        token: &token,
        protocol: params.protocol.unwrap_or_default(),
        xds: &state.xds_address,
        replicas: &replicas,
        admin_port: params.admin_port.unwrap_or(9901),
        stats_flush: stats_flush.expect("checked"),
    })))
}

/// Answers 404 unless the tenant's main branch has group `group`.
pub(crate) async fn existing_group(
    pool: &sqlx::PgPool,
    tenant_id: uuid::Uuid,
    group: &str,
) -> Result<(), ApiError> {
    read::get_resource(
        pool,
        tenant_id,
        MAIN_BRANCH,
        ResourceKind::Group,
        group,
        AsOf::Now,
    )
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("there is no group `{group}`")))?;
    Ok(())
}

/// The routes of proxies and their bootstraps.
pub fn router() -> axum::Router<AppState> {
    use axum::routing;
    axum::Router::new()
        .route("/tenants/{tenant}/proxies", routing::get(list))
        .route("/tenants/{tenant}/proxies/{node_id}", routing::get(get))
        .route(
            "/tenants/{tenant}/proxies/{node_id}/history",
            routing::get(history),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/bootstrap",
            routing::get(bootstrap),
        )
}

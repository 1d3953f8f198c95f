//! The API's audit trail (NFR-SE-005, FR-VC-003): every write request and every refused request,
//! recorded by a middleware around every `/api/v1` route, and
//! `GET /api/v1/tenants/{tenant}/audit` for auditors and admins.
//!
//! What a caller without a valid token can add is bounded: its request id is cut to
//! [`MAX_REQUEST_ID`] characters, and anonymous requests that fail are recorded at most
//! [`ANONYMOUS_PER_TENANT`] a minute per tenant and [`ANONYMOUS_TOTAL`] a minute in all; the rest
//! are counted in `/metrics`. The trail fails open: a row the database refuses is logged and
//! counted (`efms_audit_insert_failures_total`), and the request is answered all the same.

use axum::extract::{
    ConnectInfo, FromRequestParts as _, MatchedPath, OriginalUri, RawPathParams, Request, State,
};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use efms_domain::TenantSlug;
use serde::{Deserialize, Serialize};

use crate::access::{ReadAudit, Tenant};
pub use crate::anonymous_budget::{AnonymousBudget, ANONYMOUS_PER_TENANT, ANONYMOUS_TOTAL};
use crate::connections::ClientAddr;
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::read_replica::Reads;
use crate::state::AppState;
use crate::store::request_audit::{self as store, Entry};

/// The longest request id kept, in characters; a longer one is cut.
pub const MAX_REQUEST_ID: usize = crate::request_id::MAX_CHARS;
/// The longest method kept, in characters.
const MAX_METHOD: usize = 32;
/// The tenant slug a route names, percent-decoded (`/tenants/%61cme` names `acme`).
async fn route_tenant(request: Request) -> (Request, Option<TenantSlug>) {
    let (mut parts, body) = request.into_parts();
    let slug = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .and_then(|params| {
            params
                .iter()
                .find(|(name, _)| matches!(*name, "tenant" | "slug"))
                .and_then(|(_, value)| TenantSlug::parse(value).ok())
        });
    (Request::from_parts(parts, body), slug)
}

/// Records every write request and every refused request (401, 403), after it is answered.
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // The full path: inside the `/api/v1` router the URI has lost its prefix.
    let path = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().path(), |uri| uri.path())
        .to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| path.clone(), |matched| matched.as_str().to_owned());
    let client_addr = request
        .extensions()
        .get::<ConnectInfo<ClientAddr>>()
        .map(|info| info.0 .0.ip());
    let request_id = crate::request_id::of(request.headers());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (request, route_slug) = route_tenant(request).await;
    let response = next.run(request).await;
    let status = response.status();
    let write = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if write || matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        // Who asked is only worked out for what is recorded: reads that succeed cost nothing.
        let caller = authorization
            .as_deref()
            .and_then(|value| value.split_once(' '))
            .and_then(|(_, token)| state.jwt.verify(token.trim()).ok());
        let tenant_id = route_slug
            .or_else(|| caller.as_ref().and_then(|actor| actor.tenant.clone()))
            .map(|slug| slug.tenant_id());
        if caller.is_none() && !status.is_success() && !state.anonymous_audit.admit(tenant_id) {
            state.metrics.audit_unrecorded_anonymous.inc();
            return response;
        }
        let entry = Entry {
            tenant_id,
            actor: caller
                .as_ref()
                .map_or_else(|| "anonymous".to_owned(), efms_domain::Actor::audit_name),
            role: caller.as_ref().map(|actor| actor.role.to_string()),
            method: method.as_str().chars().take(MAX_METHOD).collect(),
            route,
            path: path.chars().take(2048).collect(),
            status: i16::try_from(status.as_u16()).unwrap_or(i16::MAX),
            client_addr,
            request_id,
        };
        if let Err(error) = store::insert(&state.pool, entry).await {
            state.metrics.audit_failures.inc();
            tracing::error!(%error, "cannot record a request in the audit trail; answered all the same");
        }
    }
    response
}

/// Filters of the trail.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this actor (as recorded: `subject (role)`).
    actor: Option<String>,
    /// Only this method: `POST`, `PUT`, `PATCH`, `DELETE` or `GET`.
    operation: Option<String>,
    /// Only requests whose path contains this (say `clusters/backend`).
    resource: Option<String>,
    /// `denied` (401, 403), `failed` (other 4xx and 5xx) or `succeeded` (2xx, 3xx).
    outcome: Option<String>,
    /// Not before this time (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Page size, 1 to 500.
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<i64>,
}

/// One request in the trail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    id: i64,
    recorded_at: DateTime<Utc>,
    /// Who (`anonymous` without a valid token).
    actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    /// The HTTP method.
    operation: String,
    /// The route template.
    route: String,
    /// The path asked for.
    path: String,
    /// The answer's status.
    status: i16,
    /// `succeeded`, `denied` or `failed`.
    outcome: String,
    /// Where the request came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
}

/// A page of the trail, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    items: Vec<AuditEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<i64>,
}

/// `GET /api/v1/tenants/{tenant}/audit`: the tenant's requests that wrote or were refused.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/audit", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant slug"), AuditQuery),
    responses((status = 200, description = "A page of the trail, newest first", body = AuditPage),
        (status = 403, description = "Only auditors and admins read the trail", body = crate::problem::Problem),
        (status = 422, description = "A bad filter", body = crate::problem::Problem)))]
pub async fn list(
    ApiQuery(query): ApiQuery<AuditQuery>,
    tenant: Tenant<ReadAudit>,
    Reads(reads): Reads,
) -> Result<Json<AuditPage>, ApiError> {
    let page = super::PageSize::from_param(query.limit)?;
    let (low, high) = match query.outcome.as_deref() {
        None => (100, 599),
        Some("succeeded") => (100, 399),
        Some("denied") => (401, 403),
        Some("failed") => (400, 599),
        Some(other) => {
            return Err(ApiError::Validation(vec![FieldError::parameter(
                "outcome",
                format!("`{other}` is not `succeeded`, `denied` or `failed`"),
            )]))
        }
    };
    let denied_only = query.outcome.as_deref() == Some("denied");
    let failed_only = query.outcome.as_deref() == Some("failed");
    let operation = query.operation.map(|op| op.to_ascii_uppercase());
    let filter = store::Filter {
        actor: query.actor,
        method: operation,
        path_contains: query.resource,
        status: (
            i16::try_from(low).unwrap_or_default(),
            i16::try_from(high).unwrap_or_default(),
        ),
        denied_only,
        failed_only,
        from: query.from,
        to: query.to,
        before: query.cursor,
        limit: page.fetch(),
    };
    let rows = store::list(&reads, tenant.tenant_id, filter).await?;
    let mut items: Vec<AuditEntry> = rows
        .into_iter()
        .map(|row| AuditEntry {
            id: row.audit_id,
            recorded_at: row.recorded_at,
            actor: row.actor,
            role: row.role,
            operation: row.method,
            route: row.route,
            path: row.path,
            status: row.status,
            outcome: match row.status {
                401 | 403 => "denied",
                400..=599 => "failed",
                _ => "succeeded",
            }
            .to_owned(),
            client: row.client,
            request_id: row.request_id,
        })
        .collect();
    let next_cursor = page.cut(&mut items, |item| item.id);
    Ok(Json(AuditPage { items, next_cursor }))
}

/// The audit trail's route (the recording middleware is layered by the application).
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/tenants/{tenant}/audit", axum::routing::get(list))
}

//! The router: everything `efms serve` answers on HTTP, and serving it. The state the handlers
//! share lives in [`crate::state`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth::require_bearer;
pub use crate::connections::ClientAddr;
use crate::connections::HttpLimits;
use crate::error::{ApiError, PROBLEM_JSON};
use crate::routes::{
    alert_rules, audit, branches, bulk, drift, event_socket, event_stream, event_tickets, events,
    fleet, fleet_health, grants, health, jobs, login, metrics, proxies, proxy_tokens, quotas,
    resources, tenants, users, versions, webhooks,
};
pub use crate::state::{AppState, XdsAddress};

/// The HTTP router: health and metrics open, `/api/v1` behind bearer tokens, every error in
/// problem+json. Each route module owns its routes; this only composes them and layers what
/// applies to all.
pub fn router(state: AppState) -> Router {
    crate::launch_bootstraps::install(&state);
    let api = Router::new()
        .merge(tenants::router())
        .merge(versions::router())
        .merge(jobs::router())
        .merge(branches::router())
        .merge(bulk::router())
        .merge(resources::router())
        .merge(proxies::router())
        .merge(metrics::router())
        .merge(fleet_health::router())
        .merge(drift::router())
        .merge(events::router())
        .merge(event_stream::router())
        .merge(event_socket::router())
        .merge(event_tickets::router())
        .merge(webhooks::router())
        .merge(alert_rules::router())
        .merge(proxy_tokens::router())
        .merge(fleet::router())
        .merge(audit::router())
        .merge(quotas::router())
        .merge(users::router())
        .merge(grants::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ))
        // Logging in needs no token.
        .merge(login::router())
        // Outside the bearer check, so that refused requests are recorded too.
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record))
        // Outermost: while the database is down nothing inside can answer but by waiting.
        .route_layer(middleware::from_fn_with_state(
            state.database.clone(),
            health::fail_fast,
        ));
    Router::new()
        .merge(health::router())
        .route("/openapi.json", get(crate::openapi::document))
        .route("/docs", get(crate::openapi::reference_page))
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        // Outermost: the id is there before anything (the span included) reads it.
        .layer(middleware::from_fn(crate::request_id::assign))
        .with_state(state)
}

/// The span every request's log lines are in: its method, path and request id.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get(crate::request_id::HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), path = request.uri().path(), request_id = id)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    let body = serde_json::json!({
        "type": "urn:efms:problem:internal",
        "title": "Internal server error",
        "status": 500,
        "detail": "the server failed to answer; the failure is logged",
    });
    let mut response = (StatusCode::INTERNAL_SERVER_ERROR, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// The HTTP API's listener over TLS 1.3: connections arrive with their handshake done.
pub struct TlsListener {
    connections: tokio::sync::mpsc::Receiver<efms_xds::tls::TlsConnection>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    /// Accepts TLS 1.3 connections (HTTP/2 or HTTP/1.1 by ALPN) on `listener` with `identity`.
    pub fn new(
        listener: tokio::net::TcpListener,
        identity: &efms_xds::tls::TlsIdentity,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let config = identity
            .server_config(&[b"h2", b"http/1.1"])
            .map_err(std::io::Error::other)?;
        Ok(Self {
            connections: efms_xds::tls::accept(listener, config),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = efms_xds::tls::TlsConnection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => {
                let peer = connection.peer();
                (connection, peer)
            }
            // The acceptor stopped: nothing more will arrive.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves the HTTP API on `listener` (over TLS 1.3 with `tls`) with the default
/// [`HttpLimits`] until `shutdown` resolves; each request knows its client's address.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    tls: Option<&efms_xds::tls::TlsIdentity>,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_http_with(listener, tls, state, HttpLimits::default(), shutdown).await
}

/// Serves the HTTP API like [`serve_http`], within `limits`.
pub async fn serve_http_with(
    listener: tokio::net::TcpListener,
    tls: Option<&efms_xds::tls::TlsIdentity>,
    state: AppState,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = state.metrics.clone();
    let app = router(state);
    match tls {
        Some(identity) => {
            let listener = TlsListener::new(listener, identity)?;
            crate::connections::serve(listener, app, limits, metrics, shutdown).await
        }
        None => crate::connections::serve(listener, app, limits, metrics, shutdown).await,
    }
}

//! The router: everything `efms serve` answers on HTTP, and serving it. The state the handlers
//! share lives in [`crate::state`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth::require_bearer;
pub use crate::connections::ClientAddr;
use crate::connections::HttpLimits;
use crate::error::{ApiError, PROBLEM_JSON};
use crate::routes::{
    audit, branches, bulk, grants, health, jobs, login, proxies, proxy_tokens, quotas, resources,
    tenants, users, versions,
};
pub use crate::state::{AppState, XdsAddress};

/// The largest bulk request body: 10,000 operations of up to three kilobytes each. A job holds its
/// request until it ends, so this bounds what each running job keeps.
pub const BULK_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The HTTP router: health and metrics open, `/api/v1` behind bearer tokens, every error in
/// problem+json.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route("/tenants/{slug}", get(tenants::get))
        .route("/tenants/{tenant}/revisions", get(versions::revisions))
        .route("/tenants/{tenant}/diff", get(versions::diff))
        .route("/tenants/{tenant}/rollback", post(versions::rollback))
        .route("/tenants/{tenant}/jobs/{id}", get(jobs::get))
        .route(
            "/tenants/{tenant}/branches",
            get(branches::list).post(branches::create),
        )
        .route(
            "/tenants/{tenant}/branches/{name}",
            get(branches::get).delete(branches::delete),
        )
        .route(
            "/tenants/{tenant}/branches/{name}/diff",
            get(branches::diff),
        )
        .route(
            "/tenants/{tenant}/branches/{name}/merge",
            post(branches::merge),
        )
        .route(
            "/tenants/{tenant}/bulk",
            post(bulk::bulk).layer(axum::extract::DefaultBodyLimit::max(BULK_BODY_LIMIT)),
        )
        .route(
            "/tenants/{tenant}/{kind}",
            get(resources::list).post(resources::create),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}",
            get(resources::get)
                .put(resources::replace)
                .patch(resources::patch)
                .delete(resources::delete),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/history",
            get(versions::history),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/resources",
            get(resources::group_resources),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/declaration",
            get(resources::declaration),
        )
        .route("/tenants/{tenant}/proxies", get(proxies::list))
        .route("/tenants/{tenant}/proxy-tokens", get(proxy_tokens::list))
        .route(
            "/tenants/{tenant}/proxy-tokens/{id}",
            axum::routing::delete(proxy_tokens::revoke),
        )
        .route("/tenants/{tenant}/proxies/{node_id}", get(proxies::get))
        .route(
            "/tenants/{tenant}/proxies/{node_id}/history",
            get(proxies::history),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/bootstrap",
            get(proxies::bootstrap),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/rollback",
            post(versions::rollback_resource),
        )
        .merge(access_routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ))
        // Logging in needs no token.
        .merge(Router::new().route("/auth/token", post(login::login)))
        // Outside the bearer check, so that refused requests are recorded too.
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
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
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The routes of a tenant's access control: audit, quotas, users, sharing.
fn access_routes() -> Router<AppState> {
    Router::new()
        .route("/tenants/{tenant}/audit", get(audit::list))
        .route(
            "/tenants/{tenant}/quotas",
            get(quotas::get).put(quotas::put),
        )
        .route(
            "/tenants/{tenant}/users",
            get(users::list).post(users::create),
        )
        .route(
            "/tenants/{tenant}/users/{id}",
            get(users::get).delete(users::delete).patch(users::change),
        )
        .route(
            "/tenants/{tenant}/grants",
            get(grants::list).post(grants::create),
        )
        .route(
            "/tenants/{tenant}/grants/{grantee}/{kind}/{name}",
            axum::routing::delete(grants::delete),
        )
        .route("/tenants/{tenant}/shared", get(grants::received))
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

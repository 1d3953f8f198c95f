//! The application state and the router: everything `efms serve` answers on HTTP.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Router};
use efms_commands::{CommandBus, CommitBell, Keyring};
use efms_projections::{
    ConfigProjection, Projector, ProjectorHandle, ResourceCache, SnapshotStore, TenantsProjection,
};
use efms_xds::XdsServer;
use sqlx::PgPool;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{require_bearer, JwtKeys};
use crate::connections::HttpLimits;
use crate::credentials::TokenSettings;
use crate::error::{ApiError, PROBLEM_JSON};
use crate::metrics::Metrics;
use crate::routes::{
    audit, branches, bulk, grants, health, jobs, login, proxies, proxy_tokens, quotas, resources,
    tenants, users, versions,
};

/// The largest bulk request body: 10,000 operations of up to three kilobytes each. A job holds its
/// request until it ends, so this bounds what each running job keeps.
pub const BULK_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// What the handlers share. Each handler extracts only the part it needs.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The database pool (connections switch to a scoped role per transaction).
    pub pool: PgPool,
    /// Executes commands and rings the log readers' doorbell after each commit.
    pub bus: CommandBus,
    /// Token keys.
    pub jwt: JwtKeys,
    /// Tenants known to exist.
    #[from_ref(skip)]
    pub known_tenants: crate::access::KnownTenants,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// The tenant registry's projector, for read-your-writes.
    #[from_ref(skip)]
    pub tenants: ProjectorHandle,
    /// The configuration read models' projector, for read-your-writes.
    #[from_ref(skip)]
    pub config: ProjectorHandle,
    /// The xDS snapshots of the groups proxies follow.
    #[from_ref(skip)]
    pub snapshots: SnapshotStore,
    /// Current resources, cached in the process.
    #[from_ref(skip)]
    pub cache: ResourceCache,
    /// The xDS services, served by `efms_xds::serve`.
    #[from_ref(skip)]
    pub xds: XdsServer,
    /// Where proxies reach the xDS server (written into bootstraps).
    #[from_ref(skip)]
    pub xds_address: XdsAddress,
    /// The tenants' data keys, which seal secret material before it is stored.
    #[from_ref(skip)]
    pub keyring: Keyring,
    /// The configuration write pipeline: every commit goes through it.
    #[from_ref(skip)]
    pub configuration: efms_commands::configuration::ConfigService,
    /// Recent failed logins, which slow down password guessing.
    #[from_ref(skip)]
    pub login_throttle: crate::login_throttle::LoginThrottle,
    /// How many anonymous failed requests the audit trail recorded this minute.
    #[from_ref(skip)]
    pub anonymous_audit: audit::AnonymousBudget,
    /// Proxy token lifetimes, and how often open xDS streams are re-checked.
    #[from_ref(skip)]
    pub tokens: TokenSettings,
    /// Limits on what requests write and run.
    #[from_ref(skip)]
    pub limits: crate::limits::WriteLimits,
}

/// Where proxies reach the xDS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsAddress {
    /// A host name or IP address.
    pub host: String,
    /// The port.
    pub port: u16,
    /// With TLS: the certificate chain (PEM) proxies trust the server by.
    pub tls_ca: Option<String>,
}

impl XdsAddress {
    /// The address proxies dial for a server listening on `listen`: the same, with an unspecified
    /// IP (`0.0.0.0`, `::`) replaced by loopback.
    pub fn for_listener(listen: std::net::SocketAddr) -> Self {
        let ip = if listen.ip().is_unspecified() {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            listen.ip()
        };
        Self {
            host: ip.to_string(),
            port: listen.port(),
            tls_ca: None,
        }
    }
}

impl AppState {
    /// Starts the background projectors on `pool` (they stop when `shutdown` resolves) and returns
    /// the state the router serves.
    pub fn start(
        pool: PgPool,
        jwt: JwtKeys,
        keyring: Keyring,
        poll_interval: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        let metrics = Metrics::new();
        let bus = CommandBus::new(pool.clone(), CommitBell::spawn(&pool));
        let shutdown = futures_shared(shutdown);
        let tenants =
            Projector::new(pool.clone(), TenantsProjection).spawn(poll_interval, shutdown.clone());
        let config = Projector::new(pool.clone(), ConfigProjection).spawn(poll_interval, shutdown);
        let snapshots = SnapshotStore::new(pool.clone(), keyring.clone());
        snapshots.follow(config.clone());
        let cache = ResourceCache::new(pool.clone(), efms_domain::config::MAIN_BRANCH);
        // Writers wait on the cache's handle, so they read their own writes from it.
        let config = cache.follow(config);
        let configuration = efms_commands::configuration::ConfigService::new(
            pool.clone(),
            bus.clone(),
            keyring.clone(),
            efms_domain::config::limits::Limits::default(),
            Arc::new(crate::config_services::ReadModelsAndMetrics {
                config: config.clone(),
                metrics: metrics.clone(),
            }),
        );
        let xds = XdsServer::new(
            pool.clone(),
            snapshots.clone(),
            crate::credentials::xds_authenticator(jwt.clone()),
            metrics.xds.clone(),
        );
        let gauge = metrics.projector_position.clone();
        let mut checkpoint = tenants.clone();
        tokio::spawn(async move {
            while let Some(position) = checkpoint.changed().await {
                gauge.set(position.global_position);
            }
        });
        Self {
            pool,
            bus,
            jwt,
            known_tenants: crate::access::KnownTenants::default(),
            metrics,
            tenants,
            config,
            snapshots,
            cache,
            xds,
            xds_address: XdsAddress {
                host: "127.0.0.1".to_owned(),
                port: 18000,
                tls_ca: None,
            },
            keyring,
            configuration,
            login_throttle: crate::login_throttle::LoginThrottle::default(),
            anonymous_audit: audit::AnonymousBudget::default(),
            tokens: TokenSettings::default(),
            limits: crate::limits::WriteLimits::default(),
        }
    }

    /// The same state, holding requests to `limits`.
    #[must_use]
    pub fn with_limits(mut self, limits: crate::limits::WriteLimits) -> Self {
        self.configuration = self.configuration.with_limits(limits.commit);
        self.limits = limits;
        self
    }
    /// The same state with these proxy token lifetimes and xDS re-check interval.
    #[must_use]
    pub fn with_token_settings(mut self, tokens: TokenSettings) -> Self {
        self.xds.set_credential_recheck(tokens.recheck_interval);
        self.tokens = tokens;
        self
    }

    /// The same state, throttling failed logins within `limits`.
    #[must_use]
    pub fn with_login_limits(mut self, limits: crate::login_throttle::ThrottleLimits) -> Self {
        self.login_throttle = crate::login_throttle::LoginThrottle::new(limits);
        self
    }

    /// The same state, telling proxies to reach the xDS server at `address`.
    #[must_use]
    pub fn with_xds_address(mut self, address: XdsAddress) -> Self {
        self.xds_address = address;
        self
    }
}

/// A shutdown future that several tasks can await.
fn futures_shared(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> futures::future::Shared<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    use futures::FutureExt as _;
    let boxed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(shutdown);
    boxed.shared()
}

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

/// Where a request came from: the peer of its connection, plain or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

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

//! Helpers shared by the end-to-end tests: events to append, and the HTTP API on a port of its own.

pub mod agent_stream;
pub mod agents;
pub mod certificates;
pub mod docker;
pub mod fleet;
pub mod measure;
pub mod plans;
pub mod replica;
pub mod tcp_gate;
pub mod webhook_receiver;

use std::time::Duration;

use cqrs_es::persist::SerializedEvent;
use efms_api::app::serve_http_with;
use efms_api::connections::HttpLimits;
use efms_api::credentials::TokenSettings;
use efms_api::{AppState, JwtKeys, XdsAddress};
use efms_commands::fleet::upkeep::UpkeepSettings;
use efms_domain::{Role, TenantSlug};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

/// The secret the test servers sign tokens with.
pub const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
/// How often the test servers re-check the tokens of open xDS streams.
pub const RECHECK: Duration = Duration::from_millis(200);
/// The master key of the control planes tests start (base64 of 32 bytes).
pub const MASTER_KEY: &str = "dGVzdC1tYXN0ZXIta2V5LXRlc3QtbWFzdGVyLWtleSE=";

/// Signs arbitrary claims with the test secret (HS256), for tokens the API must refuse.
pub fn sign(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A test event for `aggregate_id` at `sequence`, caused by `actor`.
pub fn event(aggregate_id: &str, sequence: usize, actor: &str) -> SerializedEvent {
    SerializedEvent {
        aggregate_id: aggregate_id.to_owned(),
        sequence,
        aggregate_type: "probe".to_owned(),
        event_type: "Probed".to_owned(),
        event_version: "1".to_owned(),
        payload: json!({ "n": sequence }),
        metadata: json!({ "actor": actor }),
    }
}

/// The control plane (HTTP API and xDS server) on 127.0.0.1 on free ports, over `pool`, until
/// dropped.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// A client for it.
    pub client: reqwest::Client,
    /// The keys its tokens are signed with.
    pub keys: JwtKeys,
    /// Where the xDS server listens.
    pub grpc: std::net::SocketAddr,
    /// The server's login throttle, to look into.
    pub login_throttle: efms_api::login_throttle::LoginThrottle,
    /// The server's resource cache, to see what it holds.
    pub cache: efms_projections::ResourceCache,
    /// The server's xDS snapshots, to compare with snapshots built afresh.
    pub snapshots: efms_projections::SnapshotStore,
    pool: PgPool,
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// The fleet's upkeep settings (heartbeat interval and grace).
    fleet: watch::Sender<UpkeepSettings>,
    /// The gRPC side (the agents' streams among it).
    xds: efms_xds::XdsServer,
    /// How webhooks are delivered.
    webhooks: watch::Sender<efms_notify::WebhookSettings>,
    /// How alert rules are evaluated.
    alerts: watch::Sender<efms_notify::AlertSettings>,
    /// How long deleted tenants are kept before their purge.
    purge: watch::Sender<efms_commands::tenant_purge::PurgeSettings>,
    /// Where its reads go.
    reads: efms_api::read_replica::ReadRouting,
}

/// The data of the test database of `pool`, as `pg_dump --data-only` writes it.
pub fn database_dump(pool: &PgPool) -> String {
    let database = pool
        .connect_options()
        .get_database()
        .expect("a test database has a name")
        .to_owned();
    let dump = std::process::Command::new("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "--data-only",
            &database,
        ])
        .output()
        .expect("pg_dump runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    String::from_utf8_lossy(&dump.stdout).into_owned()
}

impl TestApp {
    /// Starts the router, the xDS server and the projectors.
    pub async fn spawn(pool: PgPool) -> Self {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(pool, http, grpc, None, None, HttpLimits::default())
    }

    /// Starts the control plane with the fleet's heartbeat interval, grace and sample retention.
    pub async fn spawn_with_fleet(pool: PgPool, fleet: UpkeepSettings) -> Self {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Self::serve(pool, http, grpc, None, None, HttpLimits::default());
        app.fleet.send_replace(fleet);
        if let Some(streams) = app.xds.fleet() {
            streams.update(|streams| streams.heartbeat_interval = fleet.heartbeat_interval);
        }
        app
    }

    /// Starts the control plane gathering the proxies' statistics in buckets of `bucket`.
    pub async fn spawn_with_stats_bucket(pool: PgPool, bucket: Duration) -> Self {
        let app = Self::spawn(pool).await;
        let telemetry = app.xds.telemetry().expect("statistics are served");
        telemetry.update(efms_xds::TelemetrySettings {
            bucket,
            ..telemetry.settings()
        });
        app
    }

    /// Starts the control plane with the HTTP listener's `limits` (over TLS with `tls`).
    pub async fn spawn_with_limits(
        pool: PgPool,
        limits: HttpLimits,
        tls: Option<efms_xds::tls::TlsIdentity>,
    ) -> Self {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(pool, http, grpc, tls, None, limits)
    }

    /// Starts the control plane accepting the tokens of an external identity provider too.
    pub async fn spawn_with_issuer(
        pool: PgPool,
        issuer: std::sync::Arc<efms_api::auth::ExternalIssuer>,
    ) -> Self {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(pool, http, grpc, None, Some(issuer), HttpLimits::default())
    }

    /// Starts the control plane with TLS 1.3 on both listeners (`base` is then `https://…`).
    pub async fn spawn_tls(pool: PgPool, identity: efms_xds::tls::TlsIdentity) -> Self {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(
            pool,
            http,
            grpc,
            Some(identity),
            None,
            HttpLimits::default(),
        )
    }

    fn serve(
        pool: PgPool,
        http: tokio::net::TcpListener,
        grpc: tokio::net::TcpListener,
        tls: Option<efms_xds::tls::TlsIdentity>,
        issuer: Option<std::sync::Arc<efms_api::auth::ExternalIssuer>>,
        limits: HttpLimits,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let keys = match issuer {
            Some(issuer) => JwtKeys::from_secret(SECRET).with_external(issuer),
            None => JwtKeys::from_secret(SECRET),
        };
        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let grpc_addr = grpc.local_addr().unwrap();
        let master = efms_domain::secrets::Key::from_base64(MASTER_KEY).expect("a test master key");
        let state = AppState::start(
            pool.clone(),
            keys.clone(),
            efms_commands::Keyring::new(pool.clone(), master),
            Duration::from_millis(100),
            until_stopped(stopped.clone()),
        )
        .with_token_settings(TokenSettings {
            recheck_interval: RECHECK,
            ..TokenSettings::default()
        })
        .with_xds_address(XdsAddress {
            tls_ca: tls.clone(),
            ..XdsAddress::for_listener(grpc_addr)
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", http.local_addr().unwrap());
        let xds = state.xds.clone();
        let fleet = state.fleet_upkeep.clone();
        let webhooks = state.webhooks.clone();
        let alerts = state.alerts.clone();
        let purge = state.tenant_purge.clone();
        let reads = state.reads.clone();
        let login_throttle = state.login_throttle.clone();
        let cache = state.cache.clone();
        let snapshots = state.snapshots.clone();
        let http_stop = until_stopped(stopped.clone());
        let grpc_stop = until_stopped(stopped);
        let xds_handle = xds.clone();
        let servers = vec![
            {
                let tls = tls.clone();
                tokio::spawn(async move {
                    serve_http_with(http, tls.as_ref(), state, limits, http_stop)
                        .await
                        .unwrap();
                })
            },
            tokio::spawn(async move {
                efms_xds::serve_with(grpc, tls.as_ref(), xds, grpc_stop)
                    .await
                    .unwrap();
            }),
        ];
        Self {
            base,
            client: reqwest::Client::new(),
            keys,
            grpc: grpc_addr,
            login_throttle,
            cache,
            snapshots,
            pool,
            stop,
            servers,
            fleet,
            xds: xds_handle,
            webhooks,
            alerts,
            purge,
            reads,
        }
    }

    /// Stops the control plane (open xDS streams end, in-flight requests finish) and starts a
    /// new one on the same ports and database, as a restarted process would.
    pub async fn restart(&mut self) {
        let fleet = *self.fleet.borrow();
        let webhooks = self.webhooks.borrow().clone();
        let alerts = *self.alerts.borrow();
        self.stop.send_replace(true);
        for server in self.servers.drain(..) {
            server.await.unwrap();
        }
        let http_addr = self.base.trim_start_matches("http://").to_owned();
        let mut attempts = 0;
        let (http, grpc) = loop {
            let http = tokio::net::TcpListener::bind(&http_addr).await;
            let grpc = tokio::net::TcpListener::bind(self.grpc).await;
            match (http, grpc) {
                (Ok(http), Ok(grpc)) => break (http, grpc),
                _ if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (http, grpc) => panic!("cannot listen again: {:?} {:?}", http.err(), grpc.err()),
            }
        };
        *self = Self::serve(
            self.pool.clone(),
            http,
            grpc,
            None,
            None,
            HttpLimits::default(),
        );
        self.fleet.send_replace(fleet);
        self.webhooks.send_replace(webhooks);
        self.alerts.send_replace(alerts);
        if let Some(streams) = self.xds.fleet() {
            streams.update(|streams| streams.heartbeat_interval = fleet.heartbeat_interval);
        }
    }

    /// Evaluates alert rules with `settings` from now on.
    pub fn set_alerts(&self, settings: efms_notify::AlertSettings) {
        self.alerts.send_replace(settings);
    }

    /// Keeps deleted tenants `grace` before their purge from now on (tenants deleted from now on).
    pub fn set_purge_grace(&self, grace: Duration) {
        self.purge
            .send_replace(efms_commands::tenant_purge::PurgeSettings { grace });
    }

    /// Sends reads to `replica` from now on, each waiting at most `wait` for it to catch up.
    pub fn set_read_replica(&self, replica: PgPool, wait: Duration) {
        self.reads.set_replica(replica, wait);
    }

    /// Delivers webhooks with `settings` from now on.
    pub fn set_webhooks(&self, settings: efms_notify::WebhookSettings) {
        self.webhooks.send_replace(settings);
    }

    /// A snapshot store of its own over the same database, loading every tenant afresh.
    pub fn fresh_snapshots(&self) -> efms_projections::SnapshotStore {
        let master = efms_domain::secrets::Key::from_base64(MASTER_KEY).expect("a test master key");
        efms_projections::SnapshotStore::new(
            self.pool.clone(),
            efms_commands::Keyring::new(self.pool.clone(), master),
        )
    }

    /// A token for `role` (in `tenant` for tenant roles), valid for an hour.
    pub fn token(&self, role: Role, tenant: Option<&str>) -> String {
        let tenant = tenant.map(|slug| TenantSlug::parse(slug).unwrap());
        self.keys
            .issue("tester", role, tenant.as_ref(), Duration::from_secs(3600))
            .unwrap()
    }

    /// The system role's token.
    pub fn system_token(&self) -> String {
        self.token(Role::System, None)
    }

    /// Announces this replica with `settings` (its lease, its address in bootstraps).
    pub fn set_replica(&self, settings: efms_xds::ReplicaSettings) {
        self.xds.set_replica(settings);
    }

    /// `url` under the server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a tenant as the system role; panics unless it answers 201.
    pub async fn create_tenant(&self, slug: &str, name: &str) -> serde_json::Value {
        let response = self
            .client
            .post(self.url("/api/v1/tenants"))
            .bearer_auth(self.system_token())
            .json(&json!({ "slug": slug, "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "creating tenant {slug}");
        response.json().await.unwrap()
    }
}

/// What a request got back.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON (`null` when empty or not JSON).
    pub body: serde_json::Value,
}

impl Answer {
    /// Sends `request` and reads what came back.
    async fn of(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |value| value.to_str().unwrap_or(""))
    }
}

impl TestApp {
    /// Sends `method path` as the system role with an optional JSON body of `content_type` and extra
    /// headers.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&str, &serde_json::Value)>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(self.system_token());
        if let Some((content_type, body)) = body {
            request = request
                .header("content-type", content_type)
                .body(body.to_string());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Answer::of(request).await
    }

    /// Sends `method path` with `token` (of any role) and an optional JSON body.
    pub async fn send_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Answer {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        Answer::of(request).await
    }

    /// The text of `/metrics` (Prometheus's exposition format).
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET path` as the system role.
    pub async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None, &[]).await
    }

    /// `POST path` with a JSON body as the system role.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Answer {
        self.send(
            reqwest::Method::POST,
            path,
            Some(("application/json", body)),
            &[],
        )
        .await
    }

    /// `PUT path` with a JSON body as the system role.
    pub async fn put(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Answer {
        self.send(
            reqwest::Method::PUT,
            path,
            Some(("application/json", body)),
            headers,
        )
        .await
    }
}

/// A realistic Envoy resource from `tests/fixtures/envoy/`.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/fixtures/envoy/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

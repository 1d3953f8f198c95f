//! Real Envoy proxies and small upstream HTTP servers, for the end-to-end xDS tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The Envoy build the tests use by default.
pub const ENVOY: &str = "1.40.0";
/// The older Envoy build the basic scenario also runs on.
pub const ENVOY_OLD: &str = "1.36.4";

/// The `envoy` binary of `version`, as `scripts/install-envoy.sh` installs it.
pub fn envoy_binary(version: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace");
    let path = root
        .join(".tools/envoy")
        .join(version)
        .join("envoy/_bin/envoy");
    assert!(
        path.exists(),
        "Envoy {version} is not installed at {}: run scripts/install-envoy.sh",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    /// Its admin port.
    pub admin: u16,
}

impl Envoy {
    /// Starts Envoy `version` with `bootstrap` (its admin port is read from it).
    pub fn start(version: &str, bootstrap: &Value) -> Self {
        let dir = std::env::temp_dir().join(format!("efms-envoy-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("bootstrap.json");
        std::fs::write(&config, bootstrap.to_string()).unwrap();
        let admin = bootstrap["admin"]["address"]["socket_address"]["port_value"]
            .as_u64()
            .and_then(|port| u16::try_from(port).ok())
            .expect("the bootstrap names an admin port");
        let child = Command::new(envoy_binary(version))
            .arg("-c")
            .arg(&config)
            .args(["--use-dynamic-base-id", "--concurrency", "1", "-l", "info"])
            .arg("--log-path")
            .arg(dir.join("envoy.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Envoy starts");
        Self { child, dir, admin }
    }

    /// What Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- envoy log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How an upstream answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 200 with its name.
    Named,
    /// 503 to every odd-numbered request, 200 with its name to the others.
    FailEveryOther,
    /// 200 with its name after a pause.
    Slow(Duration),
    /// Of every 20 requests (counted from 0): the 1st and 11th answered 503, the 6th answered
    /// 200 after 120 ms, the others 200 at once.
    TenthFailsTwentiethSlow,
}

/// A small HTTP server on 127.0.0.1 that answers with its name; stopped when dropped.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests it received.
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream called `name`.
    pub async fn start(name: &'static str, behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                match behaviour {
                    Behaviour::FailEveryOther if n.is_multiple_of(2) => {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "try again")
                    }
                    Behaviour::Named | Behaviour::FailEveryOther => {
                        (axum::http::StatusCode::OK, name)
                    }
                    Behaviour::TenthFailsTwentiethSlow if n.is_multiple_of(10) => {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "try again")
                    }
                    Behaviour::TenthFailsTwentiethSlow => {
                        if n % 20 == 5 {
                            tokio::time::sleep(Duration::from_millis(120)).await;
                        }
                        (axum::http::StatusCode::OK, name)
                    }
                    Behaviour::Slow(pause) => {
                        tokio::time::sleep(pause).await;
                        (axum::http::StatusCode::OK, name)
                    }
                }
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hits, task }
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 50 ms until it gives `Some`, at most `timeout`; panics with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster `name` of one endpoint, `upstream`.
pub fn cluster_to(name: &str, upstream: &Upstream) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{
            "endpoint": { "address": { "socket_address": {
                "address": "127.0.0.1", "port_value": upstream.addr.port() } } } }] }] } })
}

/// Route configuration `main`: everything to cluster `to`.
pub fn main_route_to(to: &str) -> Value {
    json!({ "name": "main", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": to } }] }] })
}

/// Listener `ingress` on 127.0.0.1:`port`, HTTP routed by route configuration `main` (RDS).
pub fn ingress_listener(port: u16) -> Value {
    json!({
        "name": "ingress", "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "ingress",
                "rds": { "route_config_name": "main", "config_source": { "ads": {}, "resource_api_version": "V3" } },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }] }]
    })
}

/// Creates in tenant `acme` the `clusters`, route configuration `routes`, listener `ingress` on
/// 127.0.0.1:`port` routed by it, and group `edge` of that listener; each answered 201.
pub async fn edge_group(app: &crate::TestApp, clusters: Vec<Value>, routes: Value, port: u16) {
    tenant_edge_group(app, "acme", clusters, routes, port).await;
}

/// [`edge_group`] in `tenant`.
pub async fn tenant_edge_group(
    app: &crate::TestApp,
    tenant: &str,
    clusters: Vec<Value>,
    routes: Value,
    port: u16,
) {
    let mut resources: Vec<(&str, Value)> = clusters
        .into_iter()
        .map(|cluster| ("clusters", cluster))
        .collect();
    resources.extend([
        ("routes", routes),
        ("listeners", ingress_listener(port)),
        (
            "groups",
            json!({ "name": "edge", "resources": [{ "kind": "listener", "name": "ingress" }] }),
        ),
    ]);
    for (collection, body) in resources {
        let answer = app
            .post(&format!("/api/v1/tenants/{tenant}/{collection}"), &body)
            .await;
        assert_eq!(answer.status, 201, "{collection}: {}", answer.body);
    }
}

/// The body Envoy answers on 127.0.0.1:`port` for `/` (`None` unless it answers 200).
pub async fn body_through(http: &reqwest::Client, port: u16) -> Option<String> {
    let response = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()?;
    (response.status() == 200).then_some(())?;
    response.text().await.ok()
}

/// The bootstrap of proxy `edge-1` of group `edge` in tenant `acme` (with a free admin port),
/// sending its statistics every `flush` (`None`: the server's default).
pub async fn edge_bootstrap(app: &crate::TestApp, flush: Option<&str>) -> Value {
    let flush = flush.map_or_else(String::new, |flush| {
        format!("&stats_flush_interval={flush}")
    });
    group_bootstrap(app, "edge-1", &flush).await
}

/// The bootstrap of proxy `node` of group `edge` in tenant `acme` (with a free admin port), with
/// `query` (`&name=value…`) added to the request.
pub async fn group_bootstrap(app: &crate::TestApp, node: &str, query: &str) -> Value {
    tenant_bootstrap(app, "acme", node, query).await
}

/// The bootstrap of proxy `node` of group `edge` in `tenant` (with a free admin port), with
/// `query` (`&name=value…`) added to the request.
pub async fn tenant_bootstrap(
    app: &crate::TestApp,
    tenant: &str,
    node: &str,
    query: &str,
) -> Value {
    let answer = app
        .get(&format!(
            "/api/v1/tenants/{tenant}/groups/edge/bootstrap?node_id={node}&admin_port={}{query}",
            free_port()
        ))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// The proxies `GET {base}/drift` lists (`base`: `/api/v1/tenants/{t}`): node id, state and why.
pub async fn drift(app: &crate::TestApp, base: &str) -> Vec<(String, String, String)> {
    let page = app.get(&format!("{base}/drift")).await.body;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["node_id"].as_str().unwrap().to_owned(),
                item["state"].as_str().unwrap().to_owned(),
                item["why"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The drifting proxies' states, by node.
pub async fn drift_states(app: &crate::TestApp, base: &str) -> Vec<(String, String)> {
    drift(app, base)
        .await
        .into_iter()
        .map(|(node, state, _)| (node, state))
        .collect()
}

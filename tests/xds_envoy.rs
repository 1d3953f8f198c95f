//! End to end with real Envoy proxies: configuration written through the API reaches Envoy over
//! ADS (State of the World and delta), and the API knows what each proxy runs.
//!
//! Each test starts the control plane, upstream HTTP servers on 127.0.0.1, and an Envoy from the
//! bootstrap the API hands out, then asserts what arrives through Envoy.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use efms_domain::Role;
use efms_tests::fleet::{eventually, free_port, Behaviour, Envoy, Upstream, ENVOY, ENVOY_OLD};
use efms_tests::TestApp;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue};
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";
const NODE: &str = "edge-1";
/// How long Envoy may take to apply what the API accepted (NFR-PF-003).
const PROPAGATION_LIMIT: Duration = Duration::from_secs(5);
const PATIENCE: Duration = Duration::from_secs(20);

fn static_cluster(name: &str, port: u16, extra: &Value) -> Value {
    let mut cluster = json!({
        "name": name,
        "connect_timeout": "1s",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] }]
        }
    });
    if let (Some(cluster), Some(extra)) = (cluster.as_object_mut(), extra.as_object()) {
        cluster.extend(extra.clone());
    }
    cluster
}

fn listener(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "rds": { "route_config_name": "main", "config_source": { "ads": {}, "resource_api_version": "V3" } },
                "http_filters": [{ "name": "envoy.filters.http.router",
                    "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
            }
        }] }]
    })
}

/// The route configuration `main`: `/split` 80/20 over a and b, `/flaky` with retries, `/slow`
/// behind a circuit breaker, `x-canary: 1` to b, everything else to `default`.
fn routes(default: &str) -> Value {
    json!({
        "name": "main",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [
                { "match": { "prefix": "/split" }, "route": { "weighted_clusters": { "clusters": [
                    { "name": "a", "weight": 80 }, { "name": "b", "weight": 20 } ] } } },
                { "match": { "prefix": "/flaky" }, "route": { "cluster": "flaky",
                    "retry_policy": { "retry_on": "5xx", "num_retries": 2 } } },
                { "match": { "prefix": "/slow" }, "route": { "cluster": "slow" } },
                { "match": { "prefix": "/", "headers": [{ "name": "x-canary", "string_match": { "exact": "1" } }] },
                  "route": { "cluster": "b" } },
                { "match": { "prefix": "/" }, "route": { "cluster": default } }
            ]
        }]
    })
}

/// The control plane, upstreams and one Envoy of group `edge`, serving on `port`.
struct Fleet {
    app: TestApp,
    _envoy: Envoy,
    port: u16,
    http: reqwest::Client,
    a: Upstream,
    _b: Upstream,
    flaky: Upstream,
    _slow: Upstream,
}

impl Fleet {
    async fn start(pool: PgPool, protocol: &str, version: &str) -> Self {
        let app = TestApp::spawn(pool).await;
        app.create_tenant("acme", "Acme").await;
        let a = Upstream::start("A", Behaviour::Named).await;
        let b = Upstream::start("B", Behaviour::Named).await;
        let flaky = Upstream::start("flaky", Behaviour::FailEveryOther).await;
        let slow = Upstream::start("slow", Behaviour::Slow(Duration::from_millis(400))).await;
        let port = free_port();
        let b_port = b.addr.port();
        let resources = [
            ("clusters", static_cluster("a", a.addr.port(), &json!({}))),
            (
                "endpoints",
                json!({ "cluster_name": "b", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": b_port } } } }] }] }),
            ),
            (
                "clusters",
                json!({ "name": "b", "connect_timeout": "1s", "type": "EDS",
                "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } } }),
            ),
            (
                "clusters",
                static_cluster("flaky", flaky.addr.port(), &json!({})),
            ),
            (
                "clusters",
                static_cluster(
                    "slow",
                    slow.addr.port(),
                    &json!({
                "circuit_breakers": { "thresholds": [{ "max_connections": 1, "max_pending_requests": 1,
                    "max_requests": 1, "max_retries": 0 }] } }),
                ),
            ),
            ("routes", routes("a")),
            ("listeners", listener("http", port)),
            (
                "groups",
                json!({ "name": "edge", "resources": [{ "kind": "listener", "name": "http" }] }),
            ),
        ];
        for (collection, body) in resources {
            let answer = app.post(&format!("{BASE}/{collection}"), &body).await;
            assert_eq!(answer.status, 201, "{collection}: {}", answer.body);
        }
        let bootstrap = app
            .get(&format!(
                "{BASE}/groups/edge/bootstrap?node_id={NODE}&protocol={protocol}&admin_port={}",
                free_port()
            ))
            .await;
        assert_eq!(bootstrap.status, 200, "{}", bootstrap.body);
        let envoy = Envoy::start(version, &bootstrap.body);
        let fleet = Self {
            app,
            _envoy: envoy,
            port,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            a,
            _b: b,
            flaky,
            _slow: slow,
        };
        fleet.until_body("/", &[], "A").await;
        fleet
    }

    /// `GET path` through Envoy: status and body (`None` while nothing listens).
    async fn through(&self, path: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
        self.through_port(self.port, path, headers).await
    }

    async fn through_port(
        &self,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<(u16, String)> {
        let mut request = self.http.get(format!("http://127.0.0.1:{port}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Waits until Envoy answers `path` with `body`; returns how long that took.
    async fn until_body(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Duration {
        let started = Instant::now();
        eventually(
            PATIENCE,
            &format!("Envoy to answer {path} with {body}"),
            || async {
                (self.through(path, headers).await? == (200, body.to_owned())).then_some(())
            },
        )
        .await;
        started.elapsed()
    }

    /// The proxy as the API shows it (`null` until its connection is recorded).
    async fn proxy(&self) -> Value {
        let answer = self.app.get(&format!("{BASE}/proxies/{NODE}")).await;
        match answer.status {
            200 => answer.body,
            404 => Value::Null,
            status => panic!("{status}: {}", answer.body),
        }
    }

    /// Waits until the API shows the proxy with `status` on `kind` (and connected), returns it.
    async fn until_type_status(&self, kind: &str, status: &str) -> Value {
        eventually(PATIENCE, &format!("{kind} to be {status}"), || async {
            let proxy = self.proxy().await;
            let matches = proxy["connected"] == true
                && proxy["types"]
                    .as_array()?
                    .iter()
                    .any(|t| t["type"] == kind && t["status"] == status);
            matches.then_some(proxy)
        })
        .await
    }

    async fn until_synced(&self) -> Value {
        eventually(PATIENCE, "the proxy to be SYNCED", || async {
            let proxy = self.proxy().await;
            (proxy["connected"] == true && proxy["status"] == "SYNCED").then_some(proxy)
        })
        .await
    }

    async fn put(&self, collection: &str, name: &str, body: &Value) {
        let answer = self
            .app
            .put(&format!("{BASE}/{collection}/{name}"), body, &[])
            .await;
        assert!(matches!(answer.status, 200 | 201), "{}", answer.body);
    }

    async fn head_revision(&self) -> i64 {
        let answer = self.app.get(&format!("{BASE}/revisions?limit=1")).await;
        answer.body["items"][0]["revision"].as_i64().unwrap()
    }
}

async fn basic_scenario_reaches_upstream_a(pool: PgPool, protocol: &str, version: &str) {
    let fleet = Fleet::start(pool, protocol, version).await;
    for _ in 0..5 {
        assert_eq!(fleet.through("/", &[]).await, Some((200, "A".to_owned())));
    }
    let proxy = fleet.until_synced().await;
    assert_eq!(proxy["group"], "edge");
    assert_eq!(proxy["protocol"], protocol);
    assert_eq!(proxy["envoy_version"], version);
    let kinds: Vec<&str> = proxy["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    for kind in ["cluster", "endpoints", "listener", "route"] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    assert!(fleet.a.hits() >= 5);
    let metrics = fleet.app.metrics_text().await;
    assert!(metrics.contains("efms_xds_streams 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "efms_xds_pushes_total{{kind=\"listener\",protocol=\"{protocol}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("efms_xds_push_latency_seconds_count"),
        "{metrics}"
    );
}

async fn weighted_clusters_split_80_20(pool: PgPool, protocol: &str) {
    let fleet = Fleet::start(pool, protocol, ENVOY).await;
    fleet.until_body("/", &[("x-canary", "1")], "B").await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..1_000 {
        let (status, body) = fleet.through("/split", &[]).await.unwrap();
        assert_eq!(status, 200);
        *counts.entry(body).or_default() += 1;
    }
    let a = f64::from(counts.get("A").copied().unwrap_or(0)) / 10.0;
    let b = f64::from(counts.get("B").copied().unwrap_or(0)) / 10.0;
    assert!(
        (a - 80.0).abs() <= 5.0 && (b - 20.0).abs() <= 5.0,
        "A {a}%, B {b}%"
    );
}

async fn the_canary_header_reaches_b_and_the_rest_a(pool: PgPool, protocol: &str) {
    let fleet = Fleet::start(pool, protocol, ENVOY).await;
    fleet.until_body("/", &[("x-canary", "1")], "B").await;
    for _ in 0..10 {
        assert_eq!(
            fleet.through("/x", &[("x-canary", "1")]).await,
            Some((200, "B".to_owned()))
        );
        assert_eq!(
            fleet.through("/x", &[("x-canary", "0")]).await,
            Some((200, "A".to_owned()))
        );
        assert_eq!(fleet.through("/x", &[]).await, Some((200, "A".to_owned())));
    }
}

async fn retries_hide_a_failed_first_attempt_and_a_breaker_sheds_a_burst(
    pool: PgPool,
    protocol: &str,
) {
    let fleet = Fleet::start(pool, protocol, ENVOY).await;
    for _ in 0..10 {
        assert_eq!(
            fleet.through("/flaky", &[]).await,
            Some((200, "flaky".to_owned()))
        );
    }
    assert_eq!(fleet.flaky.hits(), 20, "every request was retried once");

    let burst: Vec<_> = (0..12).map(|_| fleet.through("/slow", &[])).collect();
    let statuses: Vec<u16> = futures::future::join_all(burst)
        .await
        .into_iter()
        .map(|answer| answer.map_or(0, |(status, _)| status))
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let shed = statuses.iter().filter(|s| **s == 503).count();
    assert!(
        ok >= 1 && shed >= 1 && ok + shed == statuses.len(),
        "{statuses:?}"
    );
}

async fn a_change_through_the_api_reaches_envoy_within_5_s(pool: PgPool, protocol: &str) {
    let fleet = Fleet::start(pool, protocol, ENVOY).await;
    fleet.until_synced().await;
    let started = Instant::now();
    fleet.put("routes", "main", &routes("b")).await;
    fleet.until_body("/", &[], "B").await;
    let delay = started.elapsed();
    println!(
        "propagation ({protocol}): {delay:?} from the API's answer to the new route through Envoy"
    );
    assert!(delay < PROPAGATION_LIMIT, "took {delay:?}");
    // Envoy serves the new route before its ACK is recorded (the status writer works in
    // batches): the record follows.
    let head = fleet.head_revision().await;
    eventually(PATIENCE, "the route's ACK of the head revision", || async {
        let proxy = fleet.until_synced().await;
        let route = proxy["types"]
            .as_array()?
            .iter()
            .find(|t| t["type"] == "route")?
            .clone();
        (route["acked_revision"].as_i64() == Some(head)).then_some(())
    })
    .await;
}

async fn a_refused_listener_is_nacked_with_envoys_error_and_fixing_it_resyncs(
    pool: PgPool,
    protocol: &str,
) {
    let fleet = Fleet::start(pool, protocol, ENVOY).await;
    let before = fleet.until_synced().await;
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    fleet
        .put("listeners", "second", &listener("second", taken))
        .await;
    fleet
        .put(
            "groups",
            "edge",
            &json!({ "name": "edge", "resources": [
                { "kind": "listener", "name": "http" }, { "kind": "listener", "name": "second" } ] }),
        )
        .await;
    let proxy = fleet.until_type_status("listener", "NACKED").await;
    let listener_status = proxy["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "listener")
        .unwrap()
        .clone();
    let error = listener_status["error_detail"].as_str().unwrap();
    assert!(error.contains(&taken.to_string()), "{error}");
    assert_eq!(proxy["status"], "NACKED");
    let acked_before = before["types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "listener")
        .unwrap()["acked_version"]
        .clone();
    assert_eq!(
        listener_status["acked_version"], acked_before,
        "Envoy still runs the last good listeners"
    );
    for _ in 0..5 {
        assert_eq!(fleet.through("/", &[]).await, Some((200, "A".to_owned())));
    }

    let free = free_port();
    fleet
        .put("listeners", "second", &listener("second", free))
        .await;
    fleet.until_type_status("listener", "SYNCED").await;
    eventually(PATIENCE, "the fixed listener to serve", || async {
        (fleet.through_port(free, "/", &[]).await? == (200, "A".to_owned())).then_some(())
    })
    .await;
    drop(held);
}

async fn a_rollback_through_the_api_restores_the_earlier_routing(pool: PgPool, protocol: &str) {
    let fleet = Fleet::start(pool, protocol, ENVOY).await;
    let good = fleet.head_revision().await;
    fleet.put("routes", "main", &routes("b")).await;
    fleet.until_body("/", &[], "B").await;
    let answer = fleet
        .app
        .post(&format!("{BASE}/rollback"), &json!({ "to_revision": good }))
        .await;
    assert!(matches!(answer.status, 200 | 201), "{}", answer.body);
    fleet.until_body("/", &[], "A").await;
    fleet.until_synced().await;
}

async fn after_a_control_plane_restart_envoy_keeps_serving_and_resyncs_unchanged(
    pool: PgPool,
    protocol: &str,
) {
    let mut fleet = Fleet::start(pool, protocol, ENVOY).await;
    let before = fleet.until_synced().await;
    let revision = fleet.head_revision().await;
    fleet.app.restart().await;
    for _ in 0..5 {
        assert_eq!(fleet.through("/", &[]).await, Some((200, "A".to_owned())));
    }
    let after = eventually(PATIENCE, "the proxy to reconnect and be SYNCED", || async {
        let proxy = fleet.proxy().await;
        let again = proxy["connected"] == true
            && proxy["status"] == "SYNCED"
            && proxy["connected_at"] != before["connected_at"];
        again.then_some(proxy)
    })
    .await;
    let acked = |proxy: &Value| -> Vec<(String, String)> {
        proxy["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["type"].to_string(), t["acked_version"].to_string()))
            .collect()
    };
    assert_eq!(
        acked(&after),
        acked(&before),
        "the same configuration, no change"
    );
    assert_eq!(fleet.head_revision().await, revision);
    assert_eq!(fleet.through("/", &[]).await, Some((200, "A".to_owned())));
}

async fn the_api_answers_what_a_proxy_ran_at_a_given_time(pool: PgPool, protocol: &str) {
    let fleet = Fleet::start(pool, protocol, ENVOY).await;
    fleet.until_synced().await;
    let first = fleet.head_revision().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    fleet.put("routes", "main", &routes("b")).await;
    fleet.until_body("/", &[], "B").await;
    fleet.until_synced().await;
    let fleet = &fleet;
    let at = |time: chrono::DateTime<chrono::Utc>| {
        let path = format!(
            "{BASE}/proxies/{NODE}?at={}",
            time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .replace('+', "%2B")
        );
        async move { fleet.app.get(&path).await.body }
    };
    let route_revision = |proxy: &Value| {
        proxy["ran_at"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == "route")
            .and_then(|r| r["revision"].as_i64())
    };
    assert_eq!(route_revision(&at(between).await), Some(first));
    assert_eq!(
        route_revision(&at(chrono::Utc::now()).await),
        Some(fleet.head_revision().await)
    );
    let history = fleet
        .app
        .get(&format!("{BASE}/proxies/{NODE}/history?limit=500"))
        .await
        .body;
    let routes: Vec<i64> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["type"] == "route" && t["outcome"] == "acked")
        .filter_map(|t| t["revision"].as_i64())
        .collect();
    assert_eq!(routes, [fleet.head_revision().await, first], "newest first");
}

async fn a_stream_without_a_valid_token_is_refused(pool: PgPool, protocol: &str) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.post(&format!("{BASE}/groups"), &json!({ "name": "edge" }))
        .await;
    let answer = app
        .get(&format!(
            "{BASE}/groups/edge/bootstrap?node_id={NODE}&protocol={protocol}&admin_port={}",
            free_port()
        ))
        .await;
    let mut bootstrap = answer.body;
    bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"][0]
        ["value"] = json!(format!("Bearer {}", app.token(Role::Viewer, Some("acme"))));
    let _envoy = Envoy::start(ENVOY, &bootstrap);
    eventually(
        PATIENCE,
        "the control plane to refuse Envoy's stream",
        || async {
            let metrics = app.metrics_text().await;
            metrics
                .lines()
                .find_map(|line| line.strip_prefix("efms_xds_refused_streams_total "))
                .and_then(|count| count.trim().parse::<u64>().ok())
                .filter(|count| *count >= 1)
        },
    )
    .await;
    let proxies = app.get(&format!("{BASE}/proxies")).await;
    assert_eq!(
        proxies.body["items"],
        json!([]),
        "a refused stream is no proxy"
    );
    let api = app
        .client
        .get(app.url(&format!("{BASE}/clusters")))
        .bearer_auth(app.token(Role::Proxy, Some("acme")))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 403, "a proxy token only streams xDS");
}

/// The route configuration `main`: everything to `cluster`.
fn to_one_cluster(cluster: &str) -> Value {
    json!({ "name": "main", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] })
}

/// Two groups on `main`, `stable` and `canary`, each with one Envoy and its own listener, both
/// routing everything to upstream `A` through the route configuration `main`.
struct CanaryFleet {
    app: TestApp,
    _envoys: Vec<Envoy>,
    _upstreams: [Upstream; 2],
    stable_port: u16,
    canary_port: u16,
    http: reqwest::Client,
}

impl CanaryFleet {
    async fn start(pool: PgPool, protocol: &str) -> Self {
        let app = TestApp::spawn(pool).await;
        app.create_tenant("acme", "Acme").await;
        let a = Upstream::start("A", Behaviour::Named).await;
        let b = Upstream::start("B", Behaviour::Named).await;
        let (stable_port, canary_port) = (free_port(), free_port());
        let mut canary_listener = listener("http-canary", canary_port);
        canary_listener["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] =
            json!("canary");
        for (collection, body) in [
            ("clusters", static_cluster("a", a.addr.port(), &json!({}))),
            ("clusters", static_cluster("b", b.addr.port(), &json!({}))),
            ("routes", to_one_cluster("a")),
            ("listeners", listener("http-stable", stable_port)),
            ("listeners", canary_listener),
            (
                "groups",
                json!({ "name": "stable", "resources": [{ "kind": "listener", "name": "http-stable" }] }),
            ),
            (
                "groups",
                json!({ "name": "canary", "resources": [{ "kind": "listener", "name": "http-canary" }] }),
            ),
        ] {
            let answer = app.post(&format!("{BASE}/{collection}"), &body).await;
            assert_eq!(answer.status, 201, "{collection}: {}", answer.body);
        }
        let mut envoys = Vec::new();
        for (group, node) in [("stable", "stable-1"), ("canary", "canary-1")] {
            let bootstrap = app
                .get(&format!(
                    "{BASE}/groups/{group}/bootstrap?node_id={node}&protocol={protocol}&admin_port={}",
                    free_port()
                ))
                .await;
            assert_eq!(bootstrap.status, 200, "{}", bootstrap.body);
            envoys.push(Envoy::start(ENVOY, &bootstrap.body));
        }
        Self {
            app,
            _envoys: envoys,
            _upstreams: [a, b],
            stable_port,
            canary_port,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn body(&self, port: u16) -> Option<String> {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .ok()?;
        response.text().await.ok()
    }

    /// Waits until the Envoy listening on `port` answers `/` with `want`.
    async fn answers(&self, port: u16, want: &str) {
        eventually(
            PATIENCE,
            &format!("port {port} to answer {want}"),
            || async { (self.body(port).await? == want).then_some(()) },
        )
        .await;
    }

    /// Pins group `canary` to `branch` (`null`: unpins it).
    async fn pin(&self, branch: Value) {
        let answer = self
            .app
            .send(
                reqwest::Method::PATCH,
                &format!("{BASE}/groups/canary"),
                Some(("application/merge-patch+json", &json!({ "branch": branch }))),
                &[],
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
}

/// Canary through branches: the proxies of a group pinned to a branch get the branch's
/// configuration while the rest of the fleet stays on `main`; unpinning moves them back, merging
/// moves everyone.
async fn a_group_pinned_to_a_branch_follows_it_until_unpinned_or_merged(
    pool: PgPool,
    protocol: &str,
) {
    let fleet = CanaryFleet::start(pool, protocol).await;
    let (app, stable, canary) = (&fleet.app, fleet.stable_port, fleet.canary_port);
    fleet.answers(stable, "A").await;
    fleet.answers(canary, "A").await;

    let branched = app
        .post(&format!("{BASE}/branches"), &json!({ "name": "next" }))
        .await;
    assert_eq!(branched.status, 201, "{}", branched.body);
    let edited = app
        .put(
            &format!("{BASE}/routes/main?branch=next"),
            &to_one_cluster("b"),
            &[],
        )
        .await;
    assert_eq!(edited.status, 200, "{}", edited.body);

    fleet.pin(json!("next")).await;
    fleet.answers(canary, "B").await;
    fleet.answers(stable, "A").await;
    let deleting = app
        .send(
            reqwest::Method::DELETE,
            &format!("{BASE}/branches/next"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        deleting.status, 409,
        "a followed branch stays: {}",
        deleting.body
    );

    fleet.pin(Value::Null).await;
    fleet.answers(canary, "A").await;
    fleet.pin(json!("next")).await;
    fleet.answers(canary, "B").await;

    let merged = app
        .post(&format!("{BASE}/branches/next/merge"), &json!({}))
        .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    fleet.answers(stable, "B").await;
    fleet.answers(canary, "B").await;
    for _ in 0..5 {
        assert_eq!(fleet.body(stable).await.as_deref(), Some("B"));
        assert_eq!(fleet.body(canary).await.as_deref(), Some("B"));
    }
}

/// Waits until Envoy, listening on `port`, answers `/` with `want`.
async fn answers_on(http: &reqwest::Client, port: u16, want: &'static str) {
    eventually(PATIENCE, &format!("Envoy to answer {want}"), || async {
        let response = http
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .ok()?;
        (response.text().await.ok()? == want).then_some(())
    })
    .await;
}

/// A child group inherits its parent's resources and may override one by name: its proxies get
/// its own resource under the inherited name, and everything that refers to that name follows.
async fn a_child_group_overrides_an_inherited_cluster_by_name(pool: PgPool, protocol: &str) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let a = Upstream::start("A", Behaviour::Named).await;
    let b = Upstream::start("B", Behaviour::Named).await;
    let port = free_port();
    let b_port = b.addr.port();
    for (collection, body) in [
        (
            "clusters",
            static_cluster("backend", a.addr.port(), &json!({})),
        ),
        (
            "endpoints",
            json!({ "cluster_name": "backend-eu", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": b_port } } } }] }] }),
        ),
        (
            "clusters",
            json!({ "name": "backend-eu", "connect_timeout": "1s", "type": "EDS",
                "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } } }),
        ),
        ("routes", to_one_cluster("backend")),
        ("listeners", listener("http", port)),
        (
            "groups",
            json!({ "name": "all", "resources": [{ "kind": "listener", "name": "http" }] }),
        ),
        (
            "groups",
            json!({ "name": "eu", "parent": "all", "resources": [
                { "kind": "cluster", "name": "backend-eu", "as": "backend" }] }),
        ),
    ] {
        let answer = app.post(&format!("{BASE}/{collection}"), &body).await;
        assert_eq!(answer.status, 201, "{collection}: {}", answer.body);
    }
    let effective = app.get(&format!("{BASE}/groups/eu/resources")).await;
    assert_eq!(
        effective.body,
        json!([
            { "kind": "cluster", "name": "backend-eu", "as": "backend", "attached_by": "eu" },
            { "kind": "listener", "name": "http", "attached_by": "all" }
        ])
    );
    let bootstrap = app
        .get(&format!(
            "{BASE}/groups/eu/bootstrap?node_id=eu-1&protocol={protocol}&admin_port={}",
            free_port()
        ))
        .await;
    assert_eq!(bootstrap.status, 200, "{}", bootstrap.body);
    let _envoy = Envoy::start(ENVOY, &bootstrap.body);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let answers = |want: &'static str| answers_on(&http, port, want);
    answers("B").await;
    let plain = app
        .put(
            &format!("{BASE}/groups/eu"),
            &json!({ "name": "eu", "parent": "all" }),
            &[],
        )
        .await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    answers("A").await;
}

/// A grantee's proxy gets the cluster another tenant shares, with its endpoints, under the name
/// `owner/name`; it follows the owner's changes to them, and the owner's other resources stay out.
async fn a_cluster_shared_by_another_tenant_reaches_its_upstream_and_follows_the_owner(
    pool: PgPool,
    protocol: &str,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("beta", "Beta").await;
    let a = Upstream::start("A", Behaviour::Named).await;
    let b = Upstream::start("B", Behaviour::Named).await;
    let port = free_port();
    let assignment = |port: u16| {
        json!({ "cluster_name": "payments", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] }] })
    };
    for (collection, body) in [
        ("endpoints", assignment(a.addr.port())),
        (
            "clusters",
            json!({ "name": "payments", "connect_timeout": "1s", "type": "EDS",
                "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } } }),
        ),
        (
            "clusters",
            static_cluster("private", b.addr.port(), &json!({})),
        ),
    ] {
        let answer = app.post(&format!("{BASE}/{collection}"), &body).await;
        assert_eq!(answer.status, 201, "{collection}: {}", answer.body);
    }
    let grant = app
        .post(
            &format!("{BASE}/grants"),
            &json!({ "grantee": "beta", "kind": "cluster", "name": "payments" }),
        )
        .await;
    assert_eq!(grant.status, 201, "{}", grant.body);
    let beta = "/api/v1/tenants/beta";
    for (collection, body) in [
        ("routes", to_one_cluster("acme/payments")),
        ("listeners", listener("http", port)),
        (
            "groups",
            json!({ "name": "edge", "resources": [{ "kind": "listener", "name": "http" }] }),
        ),
    ] {
        let answer = app.post(&format!("{beta}/{collection}"), &body).await;
        assert_eq!(answer.status, 201, "{collection}: {}", answer.body);
    }
    let admin_port = free_port();
    let bootstrap = app
        .get(&format!(
            "{beta}/groups/edge/bootstrap?node_id=beta-1&protocol={protocol}&admin_port={admin_port}"
        ))
        .await;
    assert_eq!(bootstrap.status, 200, "{}", bootstrap.body);
    let _envoy = Envoy::start(ENVOY, &bootstrap.body);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let answers = |want: &'static str| answers_on(&http, port, want);
    answers("A").await;
    // The owner moves its endpoints: the grantee's proxy follows.
    let moved = app
        .put(
            &format!("{BASE}/endpoints/payments"),
            &assignment(b.addr.port()),
            &[],
        )
        .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    answers("B").await;
    // Envoy's own list of its clusters: the shared one under its qualified name, nothing else
    // of the owner's.
    let clusters = http
        .get(format!("http://127.0.0.1:{admin_port}/clusters"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(clusters.contains("acme/payments::"), "{clusters}");
    assert!(!clusters.contains("private"), "{clusters}");
}

/// One test per protocol for each scenario.
macro_rules! both_protocols {
    ($($scenario:ident),* $(,)?) => {
        mod sotw {
            use super::*;
            $(
                #[sqlx::test(migrator = "efms_commands::MIGRATOR")]
                async fn $scenario(pool: PgPool) {
                    super::$scenario(pool, "sotw").await;
                }
            )*
        }
        mod delta {
            use super::*;
            $(
                #[sqlx::test(migrator = "efms_commands::MIGRATOR")]
                async fn $scenario(pool: PgPool) {
                    super::$scenario(pool, "delta").await;
                }
            )*
        }
    };
}

both_protocols!(
    weighted_clusters_split_80_20,
    the_canary_header_reaches_b_and_the_rest_a,
    retries_hide_a_failed_first_attempt_and_a_breaker_sheds_a_burst,
    a_change_through_the_api_reaches_envoy_within_5_s,
    a_refused_listener_is_nacked_with_envoys_error_and_fixing_it_resyncs,
    a_rollback_through_the_api_restores_the_earlier_routing,
    after_a_control_plane_restart_envoy_keeps_serving_and_resyncs_unchanged,
    the_api_answers_what_a_proxy_ran_at_a_given_time,
    a_stream_without_a_valid_token_is_refused,
    a_group_pinned_to_a_branch_follows_it_until_unpinned_or_merged,
    a_child_group_overrides_an_inherited_cluster_by_name,
    a_cluster_shared_by_another_tenant_reaches_its_upstream_and_follows_the_owner,
);

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn sotw_on_envoy_1_40_reaches_upstream_a(pool: PgPool) {
    basic_scenario_reaches_upstream_a(pool, "sotw", ENVOY).await;
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn delta_on_envoy_1_40_reaches_upstream_a(pool: PgPool) {
    basic_scenario_reaches_upstream_a(pool, "delta", ENVOY).await;
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn sotw_on_envoy_1_36_reaches_upstream_a(pool: PgPool) {
    basic_scenario_reaches_upstream_a(pool, "sotw", ENVOY_OLD).await;
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn delta_on_envoy_1_36_reaches_upstream_a(pool: PgPool) {
    basic_scenario_reaches_upstream_a(pool, "delta", ENVOY_OLD).await;
}

/// A raw ADS client's first answer, with `token` (if any) and a node claiming `tenant`.
async fn first_answer(
    app: &TestApp,
    token: Option<String>,
    tenant: &str,
) -> Result<DiscoveryResponse, tonic::Status> {
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", app.grpc))
        .await
        .unwrap();
    let node = Node {
        id: "raw-1".to_owned(),
        cluster: "edge".to_owned(),
        metadata: Some(Struct {
            fields: [(
                "tenant".to_owned(),
                ProtoValue {
                    kind: Some(Kind::StringValue(tenant.to_owned())),
                },
            )]
            .into(),
        }),
        ..Node::default()
    };
    let first = DiscoveryRequest {
        node: Some(node),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned(),
        ..DiscoveryRequest::default()
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender.send(first).await.unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut responses = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    let answer = responses.message().await?;
    drop(sender);
    answer.ok_or_else(|| tonic::Status::unknown("the stream ended without an answer"))
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn ads_streams_need_a_proxy_token_of_the_nodes_tenant(pool: PgPool) {
    use tonic::Code;
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("globex", "Globex").await;
    app.post(&format!("{BASE}/groups"), &json!({ "name": "edge" }))
        .await;
    let code =
        |answer: Result<DiscoveryResponse, tonic::Status>| answer.map(|_| ()).map_err(|s| s.code());
    assert_eq!(
        code(first_answer(&app, None, "acme").await),
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        code(first_answer(&app, Some("not-a-token".to_owned()), "acme").await),
        Err(Code::Unauthenticated)
    );
    let foreign = efms_api::JwtKeys::from_secret(b"another-secret-another-secret-another!");
    let forged = foreign
        .issue(
            "x",
            Role::Proxy,
            Some(&efms_domain::TenantSlug::parse("acme").unwrap()),
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(
        code(first_answer(&app, Some(forged), "acme").await),
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        code(first_answer(&app, Some(app.token(Role::Viewer, Some("acme"))), "acme").await),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        code(first_answer(&app, Some(app.token(Role::Proxy, Some("globex"))), "acme").await),
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        code(first_answer(&app, Some(app.token(Role::Proxy, Some("acme"))), "nope").await),
        Err(Code::PermissionDenied)
    );
    let answer = first_answer(&app, Some(app.token(Role::Proxy, Some("acme"))), "acme")
        .await
        .unwrap();
    assert_eq!(
        answer.type_url,
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert!(answer.resources.is_empty(), "the group attaches nothing");
}

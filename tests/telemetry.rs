//! The proxies' own statistics, end to end: a real Envoy bootstrapped by the API streams its
//! statistics to the control plane, which stores them per route, listener and cluster and answers
//! them as time series; streams that are not a proxy's own are refused and counted.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use efms_domain::Role;
use efms_tests::fleet::{
    cluster_to, edge_bootstrap, edge_group, eventually, free_port, Behaviour, Envoy, Upstream,
    ENVOY,
};
use efms_tests::TestApp;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value as ProtoValue};
use envoy_types::pb::io::prometheus::client::{Counter, LabelPair, Metric, MetricFamily};
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";
const PATIENCE: Duration = Duration::from_secs(30);

/// Route configuration `main`: virtual host `all` (one virtual cluster for everything) with
/// route `root` (stat prefix `root`) to `cluster`.
fn counted_routes(cluster: &str) -> Value {
    json!({ "name": "main", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "virtual_clusters": [{ "name": "everything",
            "headers": [{ "name": ":path", "string_match": { "prefix": "/" } }] }],
        "routes": [{ "name": "root", "stat_prefix": "root", "match": { "prefix": "/" },
            "route": { "cluster": cluster } }] }] })
}

/// The sum over a series' points of the number at `pointer` of each.
fn total(points: &Value, pointer: &str) -> i64 {
    points
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|point| point.pointer(pointer).and_then(Value::as_i64))
        .sum()
}

/// Every counted number of every point, none negative.
fn assert_never_negative(answer: &Value) {
    let mut all = vec![&answer["points"]];
    all.extend(
        answer["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["points"]),
    );
    for points in all {
        for point in points.as_array().unwrap() {
            for key in [
                "requests",
                "retries",
                "connections_new",
                "bytes_in",
                "bytes_out",
            ] {
                assert!(point[key].as_i64().unwrap() >= 0, "{point}");
            }
            for class in ["2xx", "3xx", "4xx", "5xx"] {
                assert!(point["responses"][class].as_i64().unwrap() >= 0, "{point}");
            }
        }
    }
}

async fn series(app: &TestApp, kind: &str, name: &str, since: DateTime<Utc>) -> Value {
    let from = since - chrono::TimeDelta::seconds(5);
    let to = Utc::now() + chrono::TimeDelta::seconds(5);
    let answer = app
        .get(&format!(
            "{BASE}/metrics/{kind}/{name}?group=edge&step=1&from={}&to={}",
            from.format("%Y-%m-%dT%H:%M:%SZ"),
            to.format("%Y-%m-%dT%H:%M:%SZ"),
        ))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// Sends `count` GETs through Envoy on `port`, 20 at a time; how many answered at all.
async fn send(port: u16, count: usize) -> usize {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/");
    let mut answered = 0;
    for chunk in 0..count.div_ceil(20) {
        let batch = (count - chunk * 20).min(20);
        let requests = (0..batch).map(|_| client.get(&url).send());
        answered += futures::future::join_all(requests)
            .await
            .into_iter()
            .flatten()
            .count();
    }
    answered
}

/// Waits until Envoy routes to the upstream, then forgets the probes it took.
async fn until_routed(port: u16, upstream: &Upstream) {
    eventually(PATIENCE, "Envoy to route to the upstream", || async {
        let answer = reqwest::get(format!("http://127.0.0.1:{port}/"))
            .await
            .ok()?;
        (upstream.hits() > 0 && answer.status() != 404).then_some(())
    })
    .await;
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn route_cluster_and_listener_series_count_every_request_through_a_real_envoy_exactly(
    pool: PgPool,
) {
    let app = TestApp::spawn_with_stats_bucket(pool, Duration::from_secs(1)).await;
    app.create_tenant("acme", "Acme").await;
    let upstream = Upstream::start("backend", Behaviour::TenthFailsTwentiethSlow).await;
    let port = free_port();
    edge_group(
        &app,
        vec![cluster_to("backend", &upstream)],
        counted_routes("backend"),
        port,
    )
    .await;
    let bootstrap = edge_bootstrap(&app, Some("1s")).await;
    assert_eq!(bootstrap["stats_flush_interval"], "1s");
    let started = Utc::now();
    let envoy = Envoy::start(ENVOY, &bootstrap);
    until_routed(port, &upstream).await;
    // Let the probes' statistics be flushed and stored before counting from zero.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = series(&app, "clusters", "backend", started).await;
    let probes = total(&before["points"], "/requests");
    upstream.hits.store(0, Ordering::SeqCst);

    assert_eq!(send(port, 1_000).await, 1_000);
    let cluster = eventually(
        PATIENCE,
        "the cluster to count 1,000 more requests",
        || async {
            let cluster = series(&app, "clusters", "backend", started).await;
            (total(&cluster["points"], "/requests") >= probes + 1_000).then_some(cluster)
        },
    )
    .await;
    // Two more flushes: nothing is counted twice.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cluster_after = series(&app, "clusters", "backend", started).await;
    assert_eq!(total(&cluster_after["points"], "/requests"), probes + 1_000);
    let probe_errors = total(&before["points"], "/responses/5xx");
    assert_eq!(
        total(&cluster_after["points"], "/responses/5xx"),
        probe_errors + 100,
        "{cluster}"
    );
    assert_eq!(
        total(&cluster_after["points"], "/responses/2xx"),
        probes - probe_errors + 900
    );
    assert!(total(&cluster_after["points"], "/endpoints_total") > 0);

    let routes = series(&app, "routes", "main", started).await;
    let root = routes["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|part| part["kind"] == "route" && part["name"] == "root")
        .unwrap_or_else(|| panic!("route `root` in {routes}"));
    assert_eq!(root["route_name"], "root");
    assert_eq!(total(&root["points"], "/responses/5xx"), probe_errors + 100);
    assert_eq!(
        total(&root["points"], "/responses/2xx"),
        probes - probe_errors + 900
    );
    assert_eq!(
        total(&routes["points"], "/requests"),
        probes + 1_000,
        "the virtual host (its virtual clusters) counts every request: {routes}"
    );
    assert!(routes["notes"].as_array().unwrap().is_empty(), "{routes}");

    // One point over the whole run: p99 lies in the bucket of the slow twentieth (120 ms).
    let whole = app
        .get(&format!(
            "{BASE}/metrics/routes/main?group=edge&step=86400&from={}",
            (started - chrono::TimeDelta::seconds(60)).format("%Y-%m-%dT%H:%M:%SZ")
        ))
        .await
        .body;
    let latency = whole["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|point| point["requests"].as_i64() > Some(0))
        .map_or_else(
            || panic!("a point with requests in {whole}"),
            |point| point["latency_ms"].clone(),
        );
    let p99 = latency["p99"].as_f64().unwrap();
    assert!(p99 > 100.0 && p99 <= 250.0, "p99 {p99} in {latency}");
    assert!(latency["p50"].as_f64().unwrap() < 100.0, "{latency}");

    let listener = series(&app, "listeners", "ingress", started).await;
    assert!(
        total(&listener["points"], "/connections_new") > 0,
        "{listener}"
    );
    assert!(total(&listener["points"], "/bytes_in") > 0, "{listener}");
    assert!(total(&listener["points"], "/bytes_out") > 0, "{listener}");
    assert_eq!(listener["parts"][0]["name"], "ingress");
    assert!(total(&listener["points"], "/requests") >= 1_000);

    // A restarted proxy starts from zero: nothing negative, nothing counted twice.
    drop(envoy);
    let envoy = Envoy::start(ENVOY, &bootstrap);
    until_routed(port, &upstream).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = series(&app, "clusters", "backend", started).await;
    let (requests, errors) = (
        total(&before["points"], "/requests"),
        total(&before["points"], "/responses/5xx"),
    );
    upstream.hits.store(0, Ordering::SeqCst);
    assert_eq!(send(port, 100).await, 100);
    let after = eventually(
        PATIENCE,
        "the cluster to count 100 more requests",
        || async {
            let cluster = series(&app, "clusters", "backend", started).await;
            (total(&cluster["points"], "/requests") >= requests + 100).then_some(cluster)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_more = series(&app, "clusters", "backend", started).await;
    assert_eq!(
        total(&after_more["points"], "/requests"),
        requests + 100,
        "{after}"
    );
    assert_eq!(total(&after_more["points"], "/responses/5xx"), errors + 10);
    assert_never_negative(&after_more);
    assert_never_negative(&series(&app, "routes", "main", started).await);
    drop(envoy);
}

fn node(id: &str, tenant: &str) -> Node {
    Node {
        id: id.to_owned(),
        cluster: "edge".to_owned(),
        metadata: Some(Struct {
            fields: [("tenant", tenant), ("group", "edge")]
                .into_iter()
                .map(|(key, value)| {
                    (
                        key.to_owned(),
                        ProtoValue {
                            kind: Some(Kind::StringValue(value.to_owned())),
                        },
                    )
                })
                .collect(),
        }),
        ..Node::default()
    }
}

/// A message of `node` counting `requests` to cluster `backend`, padded with a family whose name
/// is `padding` bytes long.
fn message(node: Node, requests: f64, padding: usize) -> StreamMetricsMessage {
    let mut families = vec![MetricFamily {
        name: Some("cluster.upstream_rq_total".to_owned()),
        metric: vec![Metric {
            label: vec![LabelPair {
                name: Some("envoy.cluster_name".to_owned()),
                value: Some("backend".to_owned()),
            }],
            counter: Some(Counter {
                value: Some(requests),
                ..Counter::default()
            }),
            ..Metric::default()
        }],
        ..MetricFamily::default()
    }];
    if padding > 0 {
        families.push(MetricFamily {
            name: Some("x".repeat(padding)),
            ..MetricFamily::default()
        });
    }
    StreamMetricsMessage {
        identifier: Some(Identifier { node: Some(node) }),
        envoy_metrics: families,
    }
}

/// Streams `message` with `token` (if any) and ends the stream: the server's answer.
async fn stream(app: &TestApp, token: Option<&str>, message: StreamMetricsMessage) -> tonic::Code {
    let mut client = MetricsServiceClient::connect(format!("http://{}", app.grpc))
        .await
        .unwrap()
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut request = tonic::Request::new(tokio_stream::iter(vec![message]));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match client.stream_metrics(request).await {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

async fn stored_rows(pool: &PgPool, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM proxy_stats WHERE tenant_id = $1")
        .bind(efms_domain::TenantSlug::parse(tenant).unwrap().tenant_id())
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_statistics_stream_that_is_not_a_proxys_own_is_refused_counted_and_stores_nothing(
    pool: PgPool,
) {
    let app = TestApp::spawn_with_stats_bucket(pool.clone(), Duration::from_secs(1)).await;
    for slug in ["acme", "globex"] {
        app.create_tenant(slug, slug).await;
        let group = app
            .post(
                &format!("/api/v1/tenants/{slug}/groups"),
                &json!({ "name": "edge" }),
            )
            .await;
        assert_eq!(group.status, 201, "{}", group.body);
    }
    let bootstrap = app
        .get(&format!("{BASE}/groups/edge/bootstrap?node_id=edge-1"))
        .await
        .body;
    let token = bootstrap["stats_sinks"][0]["typed_config"]["grpc_service"]["initial_metadata"][0]
        ["value"]
        .as_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();

    let refused = [
        (
            None,
            node("edge-1", "acme"),
            0,
            tonic::Code::Unauthenticated,
        ),
        (
            Some(app.token(Role::Viewer, Some("acme"))),
            node("edge-1", "acme"),
            0,
            tonic::Code::PermissionDenied,
        ),
        (
            Some(token.clone()),
            node("edge-1", "globex"),
            0,
            tonic::Code::PermissionDenied,
        ),
        (
            Some(token.clone()),
            node("edge-2", "acme"),
            0,
            tonic::Code::PermissionDenied,
        ),
        (
            Some(token.clone()),
            node("edge-1", "acme"),
            5 * 1024 * 1024,
            tonic::Code::ResourceExhausted,
        ),
    ];
    for (token, node, padding, expected) in refused {
        let code = stream(&app, token.as_deref(), message(node, 7.0, padding)).await;
        assert_eq!(code, expected, "padding {padding}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stored_rows(&pool, "acme").await, 0);
    assert_eq!(stored_rows(&pool, "globex").await, 0);

    let metrics = app.metrics_text().await;
    for reason in ["token", "identity", "oversize"] {
        let line = format!("telemetry_refused_streams_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line} in /metrics:\n{metrics}");
    }

    // The proxy's own stream, with the same token, is stored.
    let code = stream(&app, Some(&token), message(node("edge-1", "acme"), 7.0, 0)).await;
    assert_eq!(code, tonic::Code::Ok);
    eventually(PATIENCE, "the proxy's statistics to be stored", || async {
        (stored_rows(&pool, "acme").await > 0).then_some(())
    })
    .await;
    assert_eq!(stored_rows(&pool, "globex").await, 0);
}

/// The head revision of main.
async fn head(app: &TestApp) -> i64 {
    app.get(&format!("{BASE}/revisions?limit=1")).await.body["items"][0]["revision"]
        .as_i64()
        .unwrap()
}

/// Waits until proxy `edge-1` accepted route configurations of `revision` or later.
async fn until_routes_accepted(app: &TestApp, revision: i64) {
    eventually(PATIENCE, "the proxy to accept the revision", || async {
        let proxy = app.get(&format!("{BASE}/proxies/edge-1")).await.body;
        proxy["types"]
            .as_array()?
            .iter()
            .any(|t| t["type"] == "route" && t["acked_revision"].as_i64() >= Some(revision))
            .then_some(())
    })
    .await;
}

/// The 5xx ratio of route configuration `main` before and after `revision`.
async fn ratios(app: &TestApp, revision: i64) -> (f64, f64, Value) {
    let impact = app
        .get(&format!(
            "{BASE}/revisions/{revision}/impact?window=5s&group=edge"
        ))
        .await;
    assert_eq!(impact.status, 200, "{}", impact.body);
    let change = impact.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|change| change["kind"] == "route" && change["name"] == "main")
        .unwrap_or_else(|| panic!("route `main` changed in {}", impact.body))
        .clone();
    let ratio = |side: &str| change[side]["error_ratio"].as_f64().unwrap_or(0.0);
    (ratio("before"), ratio("after"), impact.body)
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_revisions_impact_shows_5xx_rising_after_it_routes_to_a_failing_cluster_and_falling_after_its_rollback(
    pool: PgPool,
) {
    let app = TestApp::spawn_with_stats_bucket(pool, Duration::from_secs(1)).await;
    app.create_tenant("acme", "Acme").await;
    let good = Upstream::start("good", Behaviour::Named).await;
    let flaky = Upstream::start("flaky", Behaviour::FailEveryOther).await;
    let port = free_port();
    edge_group(
        &app,
        vec![cluster_to("good", &good), cluster_to("flaky", &flaky)],
        counted_routes("good"),
        port,
    )
    .await;
    let bootstrap = edge_bootstrap(&app, Some("1s")).await;
    let _envoy = Envoy::start(ENVOY, &bootstrap);
    until_routed(port, &good).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::SeqCst) {
                let _ = client.get(format!("http://127.0.0.1:{port}/")).send().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let settle = Duration::from_secs(7);
    tokio::time::sleep(settle).await;
    let bad = app
        .put(
            &format!("{BASE}/routes/main"),
            &counted_routes("flaky"),
            &[],
        )
        .await;
    assert_eq!(bad.status, 200, "{}", bad.body);
    let broke = head(&app).await;
    until_routes_accepted(&app, broke).await;
    tokio::time::sleep(settle).await;
    let rolled = app
        .post(
            &format!("{BASE}/rollback"),
            &json!({ "to_revision": broke - 1 }),
        )
        .await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    let fixed = head(&app).await;
    until_routes_accepted(&app, fixed).await;
    tokio::time::sleep(settle).await;
    stop.store(true, Ordering::SeqCst);
    traffic.await.unwrap();

    let (before, after, impact) = ratios(&app, broke).await;
    assert!(before < 0.05, "before the failing cluster: {impact}");
    assert!(after > 0.25, "after the failing cluster: {impact}");
    assert!(impact["reached_at"].is_string(), "{impact}");
    let (before, after, impact) = ratios(&app, fixed).await;
    assert!(before > 0.25, "before the rollback: {impact}");
    assert!(after < before / 2.0, "after the rollback: {impact}");
    let missing = app.get(&format!("{BASE}/revisions/999/impact")).await;
    assert_eq!(missing.status, 404, "{}", missing.body);
}

//! The health of a group and of a tenant's fleet, from what real proxies report: endpoints that
//! fail Envoy's health checks, a refused configuration, a proxy gone.

use std::time::Duration;

use efms_tests::fleet::{
    cluster_to, drift_states, edge_bootstrap, edge_group, eventually, free_port, ingress_listener,
    main_route_to, Behaviour, Envoy, Upstream, ENVOY,
};
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";
const PATIENCE: Duration = Duration::from_secs(30);

/// Cluster `backend` of two endpoints, `upstream` and a port nothing listens on, health-checked
/// every second.
fn checked_cluster(upstream: &Upstream, dead_port: u16) -> Value {
    let endpoint = |port: u16| {
        json!({ "endpoint": { "address": { "socket_address": {
            "address": "127.0.0.1", "port_value": port } } } })
    };
    json!({ "name": "backend", "type": "STATIC", "connect_timeout": "1s",
        "health_checks": [{ "timeout": "1s", "interval": "1s", "unhealthy_threshold": 1,
            "healthy_threshold": 1, "http_health_check": { "path": "/healthz" } }],
        "load_assignment": { "cluster_name": "backend", "endpoints": [{ "lb_endpoints": [
            endpoint(upstream.addr.port()), endpoint(dead_port)] }] } })
}

fn reason<'a>(health: &'a Value, subject: &str) -> Option<&'a Value> {
    health["reasons"]
        .as_array()?
        .iter()
        .find(|reason| reason["subject"] == subject)
}

async fn health(app: &TestApp, path: &str) -> Value {
    let answer = app.get(&format!("{BASE}/{path}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_group_turns_degraded_naming_the_failing_cluster_then_the_refusing_proxy_and_critical_once_no_proxy_is_left(
    pool: PgPool,
) {
    let app = TestApp::spawn_with_stats_bucket(pool, Duration::from_secs(1)).await;
    app.create_tenant("acme", "Acme").await;
    let upstream = Upstream::start("backend", Behaviour::Named).await;
    let port = free_port();
    edge_group(
        &app,
        vec![checked_cluster(&upstream, free_port())],
        main_route_to("backend"),
        port,
    )
    .await;
    let quiet = health(&app, "groups/edge/health").await;
    assert_eq!(quiet["status"], "healthy", "{quiet}");
    assert_eq!(quiet["proxies"]["total"], 0);

    let bootstrap = edge_bootstrap(&app, Some("1s")).await;
    let envoy = Envoy::start(ENVOY, &bootstrap);
    let failing = eventually(
        PATIENCE,
        "the cluster's dead endpoint to be reported",
        || async {
            let health = health(&app, "groups/edge/health").await;
            reason(&health, "cluster/backend")?["message"]
                .as_str()?
                .starts_with("1 of 2")
                .then_some(health.clone())
        },
    )
    .await;
    assert_eq!(failing["status"], "degraded", "{failing}");
    let message = reason(&failing, "cluster/backend").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(message.starts_with("1 of 2 endpoints healthy"), "{message}");
    assert_eq!(failing["endpoints"], json!({ "healthy": 1, "total": 2 }));
    assert_eq!(failing["proxies"]["connected"], 1);
    assert!(
        reason(&failing, "cluster/efms_xds").is_none(),
        "the control plane's own cluster is not the tenant's: {failing}"
    );
    let fleet = health(&app, "health").await;
    assert_eq!(fleet["status"], "degraded");
    assert!(reason(&fleet, "cluster/backend").is_some(), "{fleet}");

    // A listener on a port already taken: Envoy refuses it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let mut second = ingress_listener(taken);
    second["name"] = json!("second");
    let answer = app.post(&format!("{BASE}/listeners"), &second).await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let answer = app
        .put(
            &format!("{BASE}/groups/edge"),
            &json!({ "name": "edge", "resources": [
                { "kind": "listener", "name": "ingress" }, { "kind": "listener", "name": "second" }] }),
            &[],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let refusing = eventually(PATIENCE, "the proxy's refusal to be reported", || async {
        let health = health(&app, "groups/edge/health").await;
        reason(&health, "proxy/edge-1").is_some().then_some(health)
    })
    .await;
    assert_eq!(refusing["status"], "degraded", "{refusing}");
    assert_eq!(refusing["proxies"]["nacked"], 1);
    let message = reason(&refusing, "proxy/edge-1").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(
        message.starts_with("listener refused") && message.contains(&taken.to_string()),
        "Envoy's own words name the port: {message}"
    );

    let drifting = app.get(&format!("{BASE}/drift?group=edge")).await.body;
    assert_eq!(drifting["items"][0]["node_id"], "edge-1", "{drifting}");
    assert_eq!(drifting["items"][0]["state"], "NACKED", "{drifting}");

    drop(envoy);
    let gone = eventually(PATIENCE, "the proxy to be shown disconnected", || async {
        let health = health(&app, "groups/edge/health").await;
        (health["proxies"]["disconnected"] == 1).then_some(health)
    })
    .await;
    assert_eq!(gone["status"], "critical", "{gone}");
    assert!(reason(&gone, "proxies").is_some(), "{gone}");
    drop(held);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_health_read_refuses_a_bad_window_and_a_kind_that_is_not_a_group(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let answer = app.get(&format!("{BASE}/health?window=2h")).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        answer.body.to_string().contains("window"),
        "{}",
        answer.body
    );
    let answer = app.get(&format!("{BASE}/groups/none/health")).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    let answer = app.get(&format!("{BASE}/clusters/backend/health")).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_proxy_stopped_while_a_commit_lands_drifts_as_disconnected_and_is_in_sync_once_back(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let upstream = Upstream::start("backend", Behaviour::Named).await;
    let port = free_port();
    edge_group(
        &app,
        vec![cluster_to("backend", &upstream)],
        main_route_to("backend"),
        port,
    )
    .await;
    let bootstrap = edge_bootstrap(&app, None).await;
    let envoy = Envoy::start(ENVOY, &bootstrap);
    eventually(PATIENCE, "the proxy to connect in sync", || async {
        let health = health(&app, "groups/edge/health").await;
        (health["proxies"]["in_sync"] == 1).then_some(())
    })
    .await;
    assert!(drift_states(&app, BASE).await.is_empty());

    drop(envoy);
    let mut timeout = cluster_to("backend", &upstream);
    timeout["connect_timeout"] = json!("2s");
    let answer = app
        .put(&format!("{BASE}/clusters/backend"), &timeout, &[])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let away = eventually(PATIENCE, "the stopped proxy to drift", || async {
        let away = drift_states(&app, BASE).await;
        (!away.is_empty()).then_some(away)
    })
    .await;
    assert_eq!(away, [("edge-1".to_owned(), "DISCONNECTED".to_owned())]);

    let _envoy = Envoy::start(ENVOY, &bootstrap);
    eventually(PATIENCE, "the proxy to be back in sync", || async {
        drift_states(&app, BASE).await.is_empty().then_some(())
    })
    .await;
    let health = health(&app, "groups/edge/health").await;
    assert_eq!(health["proxies"]["in_sync"], 1, "{health}");
}

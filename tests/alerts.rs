//! Alerts (NFR-OB-005, ADR 0016): a rule fires on a real Envoy's refusal, the alert shows in the
//! list, in the event feed and at a webhook, and resolves once the configuration is fixed;
//! deduplicated per rule and subject; acknowledged; bad rules refused naming the pointer.

use std::time::Duration;

use efms_notify::{AlertSettings, WebhookSettings};
use efms_tests::fleet::{
    cluster_to, edge_bootstrap, edge_group, eventually, free_port, ingress_listener, main_route_to,
    Behaviour, Envoy, Upstream, ENVOY,
};
use efms_tests::webhook_receiver::Receiver;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";
const PATIENCE: Duration = Duration::from_secs(60);

fn quick(app: &TestApp) {
    app.set_alerts(AlertSettings {
        interval: Duration::from_millis(200),
    });
    app.set_webhooks(WebhookSettings {
        targets: efms_domain::webhooks::TargetPolicy::EVERYWHERE,
        schedule: efms_domain::webhooks::parse_schedule("200ms,500ms").unwrap(),
        timeout: Duration::from_secs(2),
        lease: Duration::from_secs(3),
        ..WebhookSettings::default()
    });
}

async fn alerts(app: &TestApp, query: &str) -> Vec<Value> {
    let answer = app.get(&format!("{BASE}/alerts?{query}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["items"].as_array().unwrap().clone()
}

async fn feed_types(app: &TestApp, types: &str) -> Vec<Value> {
    let answer = app
        .get(&format!("{BASE}/events?types={types}&limit=500"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["items"].as_array().unwrap().clone()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_alert_fires_on_a_real_envoys_refusal_reaches_the_feed_and_a_webhook_and_resolves_once_fixed(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    quick(&app);
    app.create_tenant("acme", "Acme").await;
    let receiver = Receiver::start().await;
    let hook = app
        .post(
            &format!("{BASE}/webhooks"),
            &json!({ "url": receiver.url, "types": ["alert.fired", "alert.resolved", "proxy.status"] }),
        )
        .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let rule = app
        .post(
            &format!("{BASE}/alert-rules"),
            &json!({ "name": "refusals", "kind": "proxy_nacked" }),
        )
        .await;
    assert_eq!(rule.status, 201, "{}", rule.body);
    let upstream = Upstream::start("backend", Behaviour::Named).await;
    edge_group(
        &app,
        vec![cluster_to("backend", &upstream)],
        main_route_to("backend"),
        free_port(),
    )
    .await;
    let bootstrap = edge_bootstrap(&app, None).await;
    let _envoy = Envoy::start(ENVOY, &bootstrap);

    // A listener on a port already taken: Envoy refuses it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut second = ingress_listener(held.local_addr().unwrap().port());
    second["name"] = json!("second");
    assert_eq!(
        app.post(&format!("{BASE}/listeners"), &second).await.status,
        201
    );
    let group = |listeners: &[&str]| {
        json!({ "name": "edge", "resources": listeners.iter()
            .map(|name| json!({ "kind": "listener", "name": name })).collect::<Vec<_>>() })
    };
    let changed = app
        .put(
            &format!("{BASE}/groups/edge"),
            &group(&["ingress", "second"]),
            &[],
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let firing = eventually(PATIENCE, "the alert to fire", || async {
        alerts(&app, "state=firing").await.into_iter().next()
    })
    .await;
    assert_eq!(firing["subject"], "proxy/edge-1");
    assert_eq!(firing["rule"], "refusals");
    assert!(
        firing["summary"]
            .as_str()
            .unwrap()
            .contains("listener refused"),
        "{firing}"
    );
    // Evaluated again and again, it stays one alert.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        alerts(&app, "").await.len(),
        1,
        "deduplicated per rule and subject"
    );
    let ack = app
        .post(
            &format!("{BASE}/alerts/{}/ack", firing["id"].as_str().unwrap()),
            &json!({}),
        )
        .await;
    assert_eq!(ack.status, 204, "{}", ack.body);

    // Fixed: the refused listener leaves the group.
    let fixed = app
        .put(&format!("{BASE}/groups/edge"), &group(&["ingress"]), &[])
        .await;
    assert_eq!(fixed.status, 200, "{}", fixed.body);
    let resolved = eventually(PATIENCE, "the alert to resolve", || async {
        alerts(&app, "state=resolved").await.into_iter().next()
    })
    .await;
    assert_eq!(resolved["id"], firing["id"]);
    assert!(resolved["acked_by"].is_string(), "{resolved}");

    // The feed shows what every running transaction of the server has left behind.
    let feed = eventually(PATIENCE, "both in the feed", || async {
        let feed = feed_types(&app, "alert.fired,alert.resolved").await;
        (feed.len() >= 2).then_some(feed)
    })
    .await;
    let kinds: Vec<&str> = feed.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["alert.fired", "alert.resolved"]);
    assert_eq!(feed[0]["payload"]["subject"], "proxy/edge-1");
    let refusals = feed_types(&app, "proxy.status").await;
    assert!(
        refusals.iter().any(|e| e["payload"]["outcome"] == "nacked"
            && e["payload"]["error"]
                .as_str()
                .is_some_and(|words| !words.is_empty())),
        "the refusal with Envoy's words: {refusals:?}"
    );
    let delivered = eventually(PATIENCE, "the alert at the webhook", || async {
        let types: Vec<String> = receiver
            .received()
            .iter()
            .map(|r| r.json()["type"].as_str().unwrap().to_owned())
            .collect();
        (types.iter().any(|t| t == "alert.resolved")).then_some(types)
    })
    .await;
    assert!(
        delivered.iter().any(|t| t == "alert.fired"),
        "{delivered:?}"
    );
    assert!(
        delivered.iter().any(|t| t == "proxy.status"),
        "{delivered:?}"
    );
    drop(held);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn bad_rules_are_refused_naming_the_pointer_and_nothing_is_stored(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    for (body, pointer) in [
        (
            json!({ "name": "r", "kind": "container_restarting", "params": { "count": 3, "window": "-5m" } }),
            "/params/window",
        ),
        (json!({ "name": "r", "kind": "cpu_melting" }), "/kind"),
        (json!({ "name": "R!", "kind": "vm_down" }), "/name"),
        (
            json!({ "name": "r", "kind": "vm_down", "params": { "for": "forever" } }),
            "/params/for",
        ),
        (
            json!({ "name": "r", "kind": "vm_down", "params": { "count": 3 } }),
            "/params/count",
        ),
    ] {
        let answer = app.post(&format!("{BASE}/alert-rules"), &body).await;
        assert_eq!(answer.status, 422, "{body}: {}", answer.body);
        let pointers: Vec<&str> = answer.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|error| error["pointer"].as_str())
            .collect();
        assert!(pointers.contains(&pointer), "{body}: {}", answer.body);
    }
    let listed = app.get(&format!("{BASE}/alert-rules")).await;
    assert_eq!(listed.body["items"], json!([]));
    let created = app
        .post(
            &format!("{BASE}/alert-rules"),
            &json!({ "name": "down", "kind": "vm_down", "params": { "for": "1m" } }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let again = app
        .post(
            &format!("{BASE}/alert-rules"),
            &json!({ "name": "down", "kind": "vm_down" }),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let viewer = app
        .client
        .post(app.url(&format!("{BASE}/alert-rules")))
        .bearer_auth(app.token(efms_domain::Role::Viewer, Some("acme")))
        .json(&json!({ "name": "v", "kind": "vm_down" }))
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), 403);
}

/// Route configuration `main`: virtual host `all` with route `root` (stat prefix `root`) to
/// `backend`.
fn counted_routes() -> Value {
    json!({ "name": "main", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "name": "root", "stat_prefix": "root", "match": { "prefix": "/" },
            "route": { "cluster": "backend" } }] }] })
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_alert_fires_when_a_routes_upstream_starts_failing_and_resolves_once_it_stops(
    pool: PgPool,
) {
    let app = TestApp::spawn_with_stats_bucket(pool, Duration::from_secs(1)).await;
    quick(&app);
    app.create_tenant("acme", "Acme").await;
    let healthy = Upstream::start("healthy", Behaviour::Named).await;
    let flaky = Upstream::start("flaky", Behaviour::FailEveryOther).await;
    let port = free_port();
    edge_group(
        &app,
        vec![cluster_to("backend", &healthy)],
        counted_routes(),
        port,
    )
    .await;
    let rule = app
        .post(
            &format!("{BASE}/alert-rules"),
            &json!({ "name": "errors", "kind": "route_5xx_ratio",
                "params": { "ratio": 0.2, "window": "5s", "min_requests": 5 } }),
        )
        .await;
    assert_eq!(rule.status, 201, "{}", rule.body);
    let bootstrap = edge_bootstrap(&app, Some("1s")).await;
    let _envoy = Envoy::start(ENVOY, &bootstrap);
    // Traffic through Envoy all along.
    let traffic = tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let _ = client.get(format!("http://127.0.0.1:{port}/")).send().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    eventually(
        PATIENCE,
        "traffic to reach the healthy upstream",
        || async { (healthy.hits() > 20).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        alerts(&app, "").await.is_empty(),
        "no alert while all is well"
    );

    // The cluster now sends to an upstream that fails every other request.
    let failing = app
        .put(
            &format!("{BASE}/clusters/backend"),
            &cluster_to("backend", &flaky),
            &[],
        )
        .await;
    assert_eq!(failing.status, 200, "{}", failing.body);
    let firing = eventually(PATIENCE, "the alert to fire", || async {
        alerts(&app, "state=firing").await.into_iter().next()
    })
    .await;
    assert_eq!(firing["subject"], "route/all/root");
    assert!(
        firing["summary"].as_str().unwrap().contains("5xx"),
        "{firing}"
    );

    let back = app
        .put(
            &format!("{BASE}/clusters/backend"),
            &cluster_to("backend", &healthy),
            &[],
        )
        .await;
    assert_eq!(back.status, 200, "{}", back.body);
    eventually(PATIENCE, "the alert to resolve", || async {
        alerts(&app, "state=resolved").await.into_iter().next()
    })
    .await;
    traffic.abort();
}

/// A self-signed certificate and its key, valid for `days`, made with `openssl`.
fn certificate(days: u32) -> (String, String) {
    let dir = std::env::temp_dir().join(format!("efms-cert-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-subj",
            "/CN=edge.example",
            "-days",
            &days.to_string(),
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
    let made = (
        std::fs::read_to_string(cert).unwrap(),
        std::fs::read_to_string(key).unwrap(),
    );
    std::fs::remove_dir_all(dir).unwrap();
    made
}

fn tls_secret(days: u32) -> Value {
    let (chain, key) = certificate(days);
    json!({ "name": "edge-cert", "tls_certificate": {
        "certificate_chain": { "inline_string": chain },
        "private_key": { "inline_string": key } } })
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_certificate_that_expires_within_the_rules_days_fires_and_resolves_once_renewed(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    quick(&app);
    app.create_tenant("acme", "Acme").await;
    let rule = app
        .post(
            &format!("{BASE}/alert-rules"),
            &json!({ "name": "renew", "kind": "tls_certificate_expiring", "params": { "days": 7 } }),
        )
        .await;
    assert_eq!(rule.status, 201, "{}", rule.body);
    // A certificate good for 30 days is left alone; one good for 3 fires.
    let created = app.post(&format!("{BASE}/secrets"), &tls_secret(30)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(alerts(&app, "").await.is_empty(), "30 days is not within 7");
    let soon = app
        .put(&format!("{BASE}/secrets/edge-cert"), &tls_secret(3), &[])
        .await;
    assert_eq!(soon.status, 200, "{}", soon.body);
    let firing = eventually(PATIENCE, "the alert to fire", || async {
        alerts(&app, "state=firing").await.into_iter().next()
    })
    .await;
    assert_eq!(firing["subject"], "secret/edge-cert");
    let summary = firing["summary"].as_str().unwrap();
    assert!(summary.contains("certificate chain expires"), "{summary}");
    let renewed = app
        .put(&format!("{BASE}/secrets/edge-cert"), &tls_secret(400), &[])
        .await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    let resolved = eventually(PATIENCE, "the alert to resolve", || async {
        alerts(&app, "state=resolved").await.into_iter().next()
    })
    .await;
    assert_eq!(resolved["id"], firing["id"]);
    let feed = eventually(PATIENCE, "both in the feed", || async {
        let feed = feed_types(&app, "alert.fired,alert.resolved").await;
        (feed.len() >= 2).then_some(feed)
    })
    .await;
    assert_eq!(feed[0]["payload"]["subject"], "secret/edge-cert");
}

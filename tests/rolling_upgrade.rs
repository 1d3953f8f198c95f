//! A rolling upgrade (NFR-AV-005): two replicas, two Envoys whose bootstraps name both; replica A
//! stopped with SIGTERM and started again on its addresses (the same build, as an upgrade would
//! start the next one) while a client sends traffic through the Envoys and another writes
//! configuration through whichever replica answers, as a client behind a load balancer does. No
//! request through Envoy fails, every write answered is in the log with what it wrote, and both
//! proxies end SYNCED on the last write.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use efms_domain::Role;
use efms_tests::fleet::{
    cluster_to, drift_states, eventually, free_port, ingress_listener, Behaviour, Envoy, Upstream,
    ENVOY,
};
use efms_tests::replica::{bootstrap_from, leased, ServeProcess};
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(60);
const BASE: &str = "/api/v1/tenants/acme";

/// Route `main` to `backend`, with the response header `x-write: n`.
fn route(n: u32) -> Value {
    json!({ "name": "main", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "backend" },
            "response_headers_to_add": [{ "header": { "key": "x-write", "value": n.to_string() } }] }] }] })
}

/// The `x-write` of Envoy's answer on `port`, or why it failed.
async fn through(http: &reqwest::Client, port: u16) -> Result<u32, String> {
    let response = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .map_err(|error| error.to_string())?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    response
        .headers()
        .get("x-write")
        .and_then(|value| value.to_str().ok()?.parse().ok())
        .ok_or_else(|| "no x-write".to_owned())
}

/// Whether both proxies are connected and SYNCED.
async fn both_synced(app: &TestApp) -> bool {
    let proxies = app.get(&format!("{BASE}/proxies")).await.body;
    let Some(items) = proxies["items"].as_array() else {
        return false;
    };
    items.len() == 2
        && items
            .iter()
            .all(|proxy| proxy["connected"] == true && proxy["status"] == "SYNCED")
}

/// Writes `route(n)` for n = 1, 2, … until `stop`, each through the first of `replicas` that
/// answers (a connection refused or a 503 is tried on the next); records each write answered
/// 2xx with the revision its `ETag` names.
async fn write_until(
    replicas: Vec<String>,
    token: String,
    stop: watch::Receiver<bool>,
    written: Arc<Mutex<Vec<(u32, u64)>>>,
) {
    let http = reqwest::Client::new();
    let mut n = 0;
    while !*stop.borrow() {
        n += 1;
        let mut done = false;
        for _attempt in 0..50 {
            for replica in &replicas {
                let answer = http
                    .put(format!("{replica}{BASE}/routes/main"))
                    .bearer_auth(&token)
                    .json(&route(n))
                    .send()
                    .await;
                let Ok(answer) = answer else { continue };
                if answer.status() == 503 {
                    continue;
                }
                assert!(
                    answer.status().is_success(),
                    "write {n}: {}",
                    answer.status()
                );
                let revision = answer
                    .headers()
                    .get("etag")
                    .and_then(|etag| etag.to_str().ok()?.trim_matches('"').parse().ok())
                    .expect("a write answers its revision");
                written.lock().unwrap().push((n, revision));
                done = true;
                break;
            }
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(done, "write {n} found no replica to take it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_replica_stopped_and_started_again_fails_no_request_through_envoy_and_loses_no_write(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    let upstream = Upstream::start("backend", Behaviour::Named).await;
    app.create_tenant("acme", "Acme").await;
    let port = free_port();
    for (collection, body) in [
        ("clusters", cluster_to("backend", &upstream)),
        ("routes", route(0)),
        ("listeners", ingress_listener(port)),
        (
            "groups",
            json!({ "name": "edge", "resources": [{ "kind": "listener", "name": "ingress" }] }),
        ),
    ] {
        let answer = app.post(&format!("{BASE}/{collection}"), &body).await;
        assert_eq!(answer.status, 201, "{collection}: {}", answer.body);
    }
    let mut a = ServeProcess::start(&pool, "2s").await;
    leased(&pool, &a.grpc).await;
    let b = ServeProcess::start(&pool, "2s").await;
    leased(&pool, &b.grpc).await;
    let token = app.token(Role::Operator, Some("acme"));
    // Each Envoy's bootstrap names the replica that made it first, then the other.
    let _on_a = Envoy::start(ENVOY, &bootstrap_from(&a, &token, "edge-a").await);
    let _on_b = Envoy::start(ENVOY, &bootstrap_from(&b, &token, "edge-b").await);
    // A connection per request: the kernel spreads them over both Envoys (they share the port).
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    eventually(PATIENCE, "both proxies SYNCED and serving", || async {
        (both_synced(&app).await && through(&http, port).await == Ok(0)).then_some(())
    })
    .await;

    let (stop, stopped) = watch::channel(false);
    let traffic = {
        let http = http.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let (mut sent, mut failures) = (0_u32, Vec::new());
            while !*stopped.borrow() {
                sent += 1;
                if let Err(why) = through(&http, port).await {
                    failures.push(why);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (sent, failures)
        })
    };
    let written = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn(write_until(
        vec![a.base.clone(), b.base.clone()],
        token.clone(),
        stopped,
        written.clone(),
    ));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let exit = a.terminate();
    assert!(exit.success(), "replica A stops cleanly on SIGTERM: {exit}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.start_again().await;
    leased(&pool, &a.grpc).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.send_replace(true);
    writer.await.unwrap();
    let (sent, failures) = traffic.await.unwrap();

    assert!(sent > 100, "{sent} requests through Envoy");
    assert!(
        failures.is_empty(),
        "of {sent} requests through Envoy: {failures:?}"
    );
    let written = written.lock().unwrap().clone();
    // A write goes out every 100 ms but takes longer on a loaded machine: what matters is that
    // writes went on, and that every one answered is there.
    assert!(written.len() > 5, "{} writes", written.len());
    // Every write answered is in the log, as written, at the revision it was answered with.
    for (n, revision) in &written {
        let at = app
            .get(&format!("{BASE}/routes/main?revision={revision}"))
            .await;
        assert_eq!(at.status, 200, "revision {revision}: {}", at.body);
        let value = &at.body["virtual_hosts"][0]["routes"][0]["response_headers_to_add"][0]
            ["header"]["value"];
        assert_eq!(
            value,
            &json!(n.to_string()),
            "write {n} at revision {revision}"
        );
    }
    let last = written.last().unwrap().0;
    eventually(
        PATIENCE,
        "both proxies SYNCED on the last write",
        || async {
            let synced = both_synced(&app).await && drift_states(&app, BASE).await.is_empty();
            let mut serving = true;
            // Both Envoys share the port; of a few connections, some reach each.
            for _ in 0..8 {
                serving &= through(&http, port).await == Ok(last);
            }
            (synced && serving).then_some(())
        },
    )
    .await;
    assert!(a.log().contains("efms stopped"), "{}", a.log());
    // A write in flight when SIGTERM came was answered once its read models showed it, not with
    // what they held before (its projectors stop after the requests in flight).
    for replica in [&a, &b] {
        assert!(
            !replica.log().contains("lags behind a commit"),
            "{}",
            replica.log()
        );
    }
    drop(b);
}

//! With the database gone (its connections broken, new ones refused, as when Postgres stops),
//! requests answer 503 with `Retry-After` at once instead of waiting for a connection, `/readyz`
//! says why, liveness and metrics still answer, and everything recovers by itself once the
//! database is back.

use std::time::{Duration, Instant};

use efms_tests::fleet::eventually;
use efms_tests::tcp_gate::TcpGate;
use efms_tests::TestApp;
use serde_json::json;
use sqlx::PgPool;

const CLUSTER: &str = "/api/v1/tenants/acme/clusters/a";
/// Far above what fail-fast takes (the test prints it): the machine is shared.
const DEADLINE: Duration = Duration::from_secs(8);

fn cluster(timeout: &str) -> serde_json::Value {
    json!({ "name": "a", "type": "STATIC", "connect_timeout": timeout })
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn with_the_database_gone_requests_answer_503_at_once_and_all_recovers_when_it_is_back(
    pool: PgPool,
) {
    let direct = (*pool.connect_options()).clone();
    let gate = TcpGate::open_to("127.0.0.1:5432".parse().unwrap()).await;
    let through_gate = efms_api::db::pool_options(10)
        .connect_with(direct.port(gate.port()))
        .await
        .unwrap();
    let app = TestApp::spawn(through_gate).await;
    app.create_tenant("acme", "Acme").await;
    let created = app.put(CLUSTER, &cluster("1s"), &[]).await;
    assert_eq!(created.status, 201, "{}", created.body);

    gate.close();
    let started = Instant::now();
    let refused = app.put(CLUSTER, &cluster("2s"), &[]).await;
    let first = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), "2");
    assert_eq!(refused.body["type"], "urn:efms:problem:unavailable");
    // Once the watch has seen it, every request is answered without touching the pool.
    eventually(DEADLINE, "the database watch to find it down", || async {
        let ready = app.get("/readyz").await;
        (ready.status == 503).then_some(ready)
    })
    .await;
    let started = Instant::now();
    let read = app.get(CLUSTER).await;
    let later = started.elapsed();
    assert_eq!(read.status, 503, "{}", read.body);
    assert!(
        read.body["detail"]
            .as_str()
            .unwrap()
            .contains("the database does not answer (since"),
        "{}",
        read.body
    );
    println!("503 with the database gone: first write {first:?}, a read once seen {later:?}");
    assert!(first < DEADLINE && later < DEADLINE, "{first:?}, {later:?}");
    assert_eq!(app.get("/healthz").await.status, 200, "alive all the same");
    let metrics = tokio::time::timeout(DEADLINE, app.metrics_text()).await;
    assert!(metrics.is_ok(), "metrics answer without the database");

    gate.reopen().await;
    eventually(
        Duration::from_secs(30),
        "writes to succeed again",
        || async {
            let answer = app.put(CLUSTER, &cluster("2s"), &[]).await;
            (answer.status == 200).then_some(())
        },
    )
    .await;
    assert_eq!(app.get("/readyz").await.status, 200);
    assert_eq!(app.get(CLUSTER).await.body["connect_timeout"], "2s");
}

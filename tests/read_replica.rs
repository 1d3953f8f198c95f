//! Reads on a real streaming replica (NFR-SC-002; `scripts/pg-replica.sh`: `pg_basebackup -R`
//! of the local Postgres, on a port of its own): a read goes to the replica once it has replayed
//! every write answered before it, so a client always reads its own writes; a replica held back
//! or gone leaves the read to the primary, which answers it all the same.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use efms_tests::fleet::eventually;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Runs `scripts/pg-replica.sh` with `command`; what it printed.
fn replica_script(command: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-replica.sh");
    let ran = Command::new(script)
        .arg(command)
        .output()
        .expect("scripts/pg-replica.sh runs");
    assert!(
        ran.status.success(),
        "scripts/pg-replica.sh {command} failed: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    String::from_utf8_lossy(&ran.stdout).trim().to_owned()
}

/// The replica, started for the test and stopped (its data removed) after it: it replays every
/// write of the server while it runs.
struct Replica(u16);

impl Replica {
    fn start() -> Self {
        Self(replica_script("start").parse().unwrap())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        replica_script("stop");
    }
}

/// A pool on `replica` of the test's own database, once the replica has it.
async fn replica_of(pool: &PgPool, replica: &Replica) -> PgPool {
    let options = pool.connect_options().as_ref().clone().port(replica.0);
    eventually(
        Duration::from_secs(30),
        "the replica to have the test's database",
        || async {
            PgPoolOptions::new()
                .max_connections(5)
                .acquire_timeout(Duration::from_secs(1))
                .connect_with(options.clone())
                .await
                .ok()
        },
    )
    .await
}

/// A cluster named `name` whose connect timeout is `seconds`.
fn cluster(name: &str, seconds: u32) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": format!("{seconds}s") })
}

/// The counter `name` of the server's metrics.
async fn counter(app: &TestApp, name: &str) -> u64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .parse()
        .unwrap()
}

/// How many changes the cluster's history holds, as the API answers it.
async fn changes(app: &TestApp, name: &str) -> usize {
    let history = app
        .get(&format!("/api/v1/tenants/acme/clusters/{name}/history"))
        .await;
    assert_eq!(history.status, 200, "{}", history.body);
    history.body.as_array().unwrap().len()
}

#[sqlx::test(migrations = "../migrations")]
async fn every_write_is_read_back_through_the_replica_and_a_replica_held_back_leaves_reads_to_the_primary(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let standby = Replica::start();
    let replica = replica_of(&pool, &standby).await;
    app.set_read_replica(replica.clone(), Duration::from_secs(10));

    // Each write, read back at once, is there: the replica had replayed it before it answered.
    let created = app
        .post("/api/v1/tenants/acme/clusters", &cluster("payments", 1))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    for seconds in 2..=21 {
        let written = app
            .put(
                "/api/v1/tenants/acme/clusters/payments",
                &cluster("payments", seconds),
                &[],
            )
            .await;
        assert_eq!(written.status, 200, "{}", written.body);
        assert_eq!(
            changes(&app, "payments").await,
            usize::try_from(seconds).unwrap(),
            "the write just answered is read back"
        );
    }
    assert!(counter(&app, "efms_read_replica_reads_total").await >= 20);
    assert_eq!(counter(&app, "efms_read_replica_fallbacks_total").await, 0);

    // Held back, the replica cannot show a new write: the read waits its bound, then the
    // primary answers it, and the write is read back all the same.
    app.set_read_replica(replica.clone(), Duration::from_millis(200));
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica)
        .await
        .unwrap();
    let written = app
        .put(
            "/api/v1/tenants/acme/clusters/payments",
            &cluster("payments", 30),
            &[],
        )
        .await;
    assert_eq!(written.status, 200, "{}", written.body);
    let read = changes(&app, "payments").await;
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica)
        .await
        .unwrap();
    assert_eq!(read, 22, "the write is read back from the primary");
    assert_eq!(counter(&app, "efms_read_replica_fallbacks_total").await, 1);

    // A replica that does not answer at all: reads go on, from the primary.
    let gone = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy_with(pool.connect_options().as_ref().clone().port(1));
    app.set_read_replica(gone, Duration::from_secs(1));
    assert_eq!(changes(&app, "payments").await, 22);
    let proxies = app.get("/api/v1/tenants/acme/proxies").await;
    assert_eq!(proxies.status, 200, "{}", proxies.body);
    assert_eq!(counter(&app, "efms_read_replica_fallbacks_total").await, 3);
}

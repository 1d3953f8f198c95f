//! Replicas keep leases on the streams they hold (ADR 0006, NFR-OB-004): a replica killed with
//! `kill -9` leaves none of its proxies shown connected once its lease expires; proxies whose
//! bootstrap lists another replica move to it; a replica whose lease was reaped while it lived
//! writes back what it holds.

use std::time::Duration;

use efms_domain::Role;
use efms_tests::fleet::{
    cluster_to, drift_states, eventually, free_port, Behaviour, Envoy, Upstream, ENVOY,
};
use efms_tests::replica::{bootstrap_from, leased, ServeProcess};
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const PATIENCE: Duration = Duration::from_secs(60);

/// The replicas' lease: short, unless `EFMS_BENCH_REPLICA_LEASE` asks for another (the
/// benchmark of docs/benchmarks.md runs this test with the default, 15s, and reads the time it
/// prints).
fn lease() -> String {
    std::env::var("EFMS_BENCH_REPLICA_LEASE").unwrap_or_else(|_| "2s".to_owned())
}
const BASE: &str = "/api/v1/tenants/acme";

/// Tenant `acme` with group `edge` of one cluster, `backend`.
async fn edge_of_one_cluster(app: &TestApp, upstream: &Upstream) {
    app.create_tenant("acme", "Acme").await;
    for (collection, body) in [
        ("clusters", cluster_to("backend", upstream)),
        (
            "groups",
            json!({ "name": "edge", "resources": [{ "kind": "cluster", "name": "backend" }] }),
        ),
    ] {
        let answer = app.post(&format!("{BASE}/{collection}"), &body).await;
        assert_eq!(answer.status, 201, "{collection}: {}", answer.body);
    }
}

/// The xDS servers a bootstrap names, as `host:port`.
fn xds_servers(bootstrap: &Value) -> Vec<String> {
    bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|endpoint| {
            let address = &endpoint["endpoint"]["address"]["socket_address"];
            format!(
                "{}:{}",
                address["address"].as_str().unwrap(),
                address["port_value"]
            )
        })
        .collect()
}

/// The replicas (by address) recorded as holding a stream of `node`.
async fn holders(pool: &PgPool, node: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT coalesce(r.advertised, s.replica_id::text) FROM proxy_replica_streams s \
         LEFT JOIN xds_replicas r USING (replica_id) WHERE s.node_id = $1 ORDER BY 1",
    )
    .bind(node)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Whether the API shows `node` connected (false while it has never connected).
async fn connected(app: &TestApp, node: &str) -> bool {
    let proxy = app.get(&format!("{BASE}/proxies/{node}")).await;
    if proxy.status == 404 {
        return false;
    }
    assert_eq!(proxy.status, 200, "{}", proxy.body);
    proxy.body["connected"] == true
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_killed_replicas_proxies_read_disconnected_once_its_lease_expires_and_those_listing_another_move(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    let upstream = Upstream::start("backend", Behaviour::Named).await;
    edge_of_one_cluster(&app, &upstream).await;

    let admin = app.token(Role::Admin, Some("acme"));
    let mut doomed = ServeProcess::start(&pool, &lease()).await;
    leased(&pool, &doomed.grpc).await;
    // Only the doomed replica is up (the test's own server announces no address): the bootstrap
    // of `alone` names it alone.
    let alone = bootstrap_from(&doomed, &admin, "alone").await;
    assert_eq!(xds_servers(&alone), [doomed.grpc.clone()]);
    let survivor = ServeProcess::start(&pool, &lease()).await;
    leased(&pool, &survivor.grpc).await;
    let both = bootstrap_from(&doomed, &admin, "mover").await;
    assert_eq!(
        xds_servers(&both),
        [doomed.grpc.clone(), survivor.grpc.clone()],
        "a bootstrap names the replica that made it, then every other live one"
    );

    let _alone = Envoy::start(ENVOY, &alone);
    eventually(PATIENCE, "`alone` on the doomed replica", || async {
        (holders(&pool, "alone").await == [doomed.grpc.clone()]).then_some(())
    })
    .await;
    // `mover` must start on the doomed replica for its move to be seen: Envoy picks one of its
    // two servers, so start it again until it picks that one.
    let mut mover = None;
    for _ in 0..20 {
        let envoy = Envoy::start(ENVOY, &both);
        let held = eventually(PATIENCE, "`mover` on a replica", || async {
            let held = holders(&pool, "mover").await;
            (!held.is_empty()).then_some(held)
        })
        .await;
        if held == [doomed.grpc.clone()] {
            mover = Some(envoy);
            break;
        }
        drop(envoy);
        eventually(PATIENCE, "`mover` gone", || async {
            holders(&pool, "mover").await.is_empty().then_some(())
        })
        .await;
    }
    let _mover = mover.expect("`mover` connects to the doomed replica within 20 starts");
    eventually(PATIENCE, "both proxies in sync", || async {
        drift_states(&app, BASE).await.is_empty().then_some(())
    })
    .await;
    assert!(connected(&app, "alone").await && connected(&app, "mover").await);

    doomed.kill();
    let killed = std::time::Instant::now();
    let (mut away_after, mut moved_after) = (None, None);
    while away_after.is_none() || moved_after.is_none() {
        assert!(
            killed.elapsed() < PATIENCE,
            "`alone` disconnected ({away_after:?}) and `mover` on the survivor ({moved_after:?})"
        );
        if away_after.is_none()
            && drift_states(&app, BASE).await == [("alone".to_owned(), "DISCONNECTED".to_owned())]
        {
            away_after = Some(killed.elapsed());
        }
        if moved_after.is_none() && holders(&pool, "mover").await == [survivor.grpc.clone()] {
            moved_after = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "lease {}: `alone` DISCONNECTED {:?} after kill -9, `mover` on the survivor after {:?}",
        lease(),
        away_after.unwrap_or_default(),
        moved_after.unwrap_or_default()
    );
    assert!(!connected(&app, "alone").await);
    assert!(connected(&app, "mover").await);
    // No stream is recorded against a replica without a lease, and the dead one's lease is gone.
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM proxy_replica_streams s \
         WHERE NOT EXISTS (SELECT 1 FROM xds_replicas r WHERE r.replica_id = s.replica_id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM xds_replicas WHERE advertised = $1")
        .bind(&doomed.grpc)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "the killed replica's lease is reaped");
    // The proxies' own counts agree with the replicas' records.
    let streams: Vec<(String, i32)> =
        sqlx::query_as("SELECT node_id, streams FROM proxies ORDER BY node_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(streams[0], ("alone".to_owned(), 0));
    assert!(streams[1].0 == "mover" && streams[1].1 >= 1, "{streams:?}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_replica_whose_lease_was_reaped_while_it_lived_writes_back_the_streams_it_holds(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    app.set_replica(efms_xds::ReplicaSettings {
        lease: Duration::from_secs(3),
        advertised: Some(app.grpc.to_string()),
    });
    let upstream = Upstream::start("backend", Behaviour::Named).await;
    edge_of_one_cluster(&app, &upstream).await;
    let answer = app
        .get(&format!(
            "{BASE}/groups/edge/bootstrap?node_id=edge-1&admin_port={}",
            free_port()
        ))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let _envoy = Envoy::start(ENVOY, &answer.body);
    eventually(PATIENCE, "edge-1 connected", || async {
        connected(&app, "edge-1").await.then_some(())
    })
    .await;

    // As if Postgres had been out of reach longer than the lease: another replica reaps it.
    sqlx::query("UPDATE xds_replicas SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(efms_xds::replicas::reap(&pool).await.unwrap(), 1);
    assert!(
        !connected(&app, "edge-1").await,
        "a reaped replica's proxy reads disconnected"
    );

    eventually(PATIENCE, "edge-1 connected again", || async {
        connected(&app, "edge-1").await.then_some(())
    })
    .await;
    assert_eq!(holders(&pool, "edge-1").await, [app.grpc.to_string()]);
    let streams: i32 = sqlx::query_scalar("SELECT streams FROM proxies WHERE node_id = 'edge-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(streams, 1, "the stream is counted once, not twice");
}

//! Writes into a large tenant and writes from two replicas, through the HTTP API of real servers on
//! one database. Each replica's command bus keeps the tenant's state warm in memory; these tests pin
//! that it decides every kind of commit right on a large state, and that a replica whose warm state
//! another replica has moved past refuses nothing wrongly and writes nothing wrong.

use std::collections::BTreeSet;
use std::time::Duration;

use efms_tests::TestApp;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

/// Resources the large tenant holds (built by two bulk jobs).
const LARGE: usize = 20_000;

fn cluster(name: &str, port: u32) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
            "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] }] } })
}

fn port_of(document: &Value) -> &Value {
    &document["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"]
}

/// Runs a bulk request (as a job when large) and returns the revision it landed in.
async fn bulk(app: &TestApp, path: &str, operations: Vec<Value>) -> i64 {
    let answer = app
        .post(
            path,
            &json!({ "message": "bulk", "operations": operations }),
        )
        .await;
    match answer.status {
        200 => answer.body["revision"].as_i64().unwrap(),
        202 => {
            let location = answer.header("location").to_owned();
            loop {
                let job = app.get(&location).await;
                assert_eq!(job.status, 200, "{}", job.body);
                if job.body["finished_at"].is_string() {
                    assert_eq!(job.body["state"], "succeeded", "{}", job.body);
                    return job.body["revision"].as_i64().unwrap();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        status => panic!("bulk answered {status}: {}", answer.body),
    }
}

/// The names of the clusters on `branch`, from the read model.
async fn cluster_names(pool: &PgPool, branch: &str) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT name FROM config_resources WHERE branch = $1 AND kind = 'cluster' ORDER BY name",
    )
    .bind(branch)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// The tenant's revisions on `main`, in order.
async fn revisions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT revision FROM config_revisions WHERE branch = 'main' ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// 1, 2, … `n`.
fn continuous(n: usize) -> Vec<i64> {
    (1..=i64::try_from(n).unwrap()).collect()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_large_tenant_built_by_bulk_takes_a_single_write_a_bulk_a_rollback_and_a_merge_right(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    for half in 0..2 {
        let operations = (half * LARGE / 2..(half + 1) * LARGE / 2)
            .map(|i| json!({ "op": "create", "kind": "clusters", "resource": cluster(&format!("c-{i}"), 8080) }))
            .collect();
        bulk(&app, &format!("{BASE}/bulk"), operations).await;
    }
    let mut expected: BTreeSet<String> = (0..LARGE).map(|i| format!("c-{i}")).collect();
    assert_eq!(cluster_names(&pool, "main").await, expected);

    // A single write: a replacement, then a reference to the new cluster, which may then not go.
    let put = app
        .put(&format!("{BASE}/clusters/c-7"), &cluster("c-7", 9007), &[])
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.header("etag"), "\"3\"");
    let route = json!({ "name": "r", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "c-19999" } }] }] });
    assert_eq!(
        app.post(&format!("{BASE}/routes"), &route).await.status,
        201
    );
    let refused = app
        .send(
            Method::DELETE,
            &format!("{BASE}/clusters/c-19999"),
            None,
            &[],
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let stale = app
        .put(
            &format!("{BASE}/clusters/c-7"),
            &cluster("c-7", 1),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(stale.status, 412, "{}", stale.body);

    // A bulk: creations, a replacement and deletions, in one revision.
    let mut operations: Vec<Value> = (0..50)
        .map(|i| json!({ "op": "create", "kind": "clusters", "resource": cluster(&format!("new-{i}"), 8080) }))
        .collect();
    operations
        .push(json!({ "op": "replace", "kind": "clusters", "resource": cluster("c-8", 9008) }));
    operations.extend(
        (100..120).map(|i| json!({ "op": "delete", "kind": "clusters", "name": format!("c-{i}") })),
    );
    let before_bulk = revisions(&pool).await.last().copied().unwrap();
    let bulk_revision = bulk(&app, &format!("{BASE}/bulk"), operations).await;
    assert_eq!(bulk_revision, before_bulk + 1);
    expected.extend((0..50).map(|i| format!("new-{i}")));
    for i in 100..120 {
        expected.remove(&format!("c-{i}"));
    }
    assert_eq!(cluster_names(&pool, "main").await, expected);

    // A rollback of the whole tenant to before the bulk.
    let rolled = app
        .send(
            Method::POST,
            &format!("{BASE}/rollback"),
            Some(("application/json", &json!({ "to_revision": before_bulk }))),
            &[],
        )
        .await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    expected.retain(|name| !name.starts_with("new-"));
    expected.extend((100..120).map(|i| format!("c-{i}")));
    assert_eq!(cluster_names(&pool, "main").await, expected);
    let c8 = app.get(&format!("{BASE}/clusters/c-8")).await;
    assert_eq!(port_of(&c8.body), 8080);

    // A branch of the large tenant, changed and merged back.
    let branched = app
        .post(&format!("{BASE}/branches"), &json!({ "name": "feature" }))
        .await;
    assert_eq!(branched.status, 201, "{}", branched.body);
    let on_branch = app
        .put(
            &format!("{BASE}/clusters/c-9?branch=feature"),
            &cluster("c-9", 9009),
            &[],
        )
        .await;
    assert_eq!(on_branch.status, 200, "{}", on_branch.body);
    let deleted = app
        .send(
            Method::DELETE,
            &format!("{BASE}/clusters/c-10?branch=feature"),
            None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let merged = app
        .post(&format!("{BASE}/branches/feature/merge"), &json!({}))
        .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    expected.remove("c-10");
    assert_eq!(cluster_names(&pool, "main").await, expected);
    let c9 = app.get(&format!("{BASE}/clusters/c-9")).await;
    assert_eq!(port_of(&c9.body), 9009);
    let all = revisions(&pool).await;
    assert_eq!(all, continuous(all.len()));
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn two_replicas_writing_alternately_refuse_nothing_wrongly_and_write_nothing_wrong(
    pool: PgPool,
) {
    let replicas = [
        TestApp::spawn(pool.clone()).await,
        TestApp::spawn(pool.clone()).await,
    ];
    replicas[0].create_tenant("acme", "Acme").await;
    let mut expected = BTreeSet::new();
    let mut version = std::collections::BTreeMap::new();
    for round in 0..30_u32 {
        let this = &replicas[(round % 2) as usize];
        // A creation the other replica's warm state has not seen.
        let name = format!("r-{round}");
        let created = this
            .post(&format!("{BASE}/clusters"), &cluster(&name, 8080))
            .await;
        assert_eq!(created.status, 201, "round {round}: {}", created.body);
        expected.insert(name.clone());
        version.insert(name, created.header("etag").to_owned());
        if round == 0 {
            continue;
        }
        // A replacement, expecting the version the other replica wrote last round.
        let previous = format!("r-{}", round - 1);
        let replaced = this
            .put(
                &format!("{BASE}/clusters/{previous}"),
                &cluster(&previous, 9000 + round),
                &[("if-match", version[&previous].as_str())],
            )
            .await;
        assert_eq!(replaced.status, 200, "round {round}: {}", replaced.body);
        version.insert(previous.clone(), replaced.header("etag").to_owned());
        // A stale expectation is still refused.
        let stale = this
            .put(
                &format!("{BASE}/clusters/{previous}"),
                &cluster(&previous, 1),
                &[("if-match", "\"1\"")],
            )
            .await;
        assert_eq!(stale.status, 412, "round {round}: {}", stale.body);
        // Every third round: delete what the other replica created, then create it again.
        if round % 3 == 0 {
            let deleted = this
                .send(
                    Method::DELETE,
                    &format!("{BASE}/clusters/{previous}"),
                    None,
                    &[],
                )
                .await;
            assert_eq!(deleted.status, 204, "round {round}: {}", deleted.body);
            expected.remove(&previous);
            version.remove(&previous);
        }
        if round % 3 == 1 && round > 3 {
            let gone = format!("r-{}", round - 2);
            let again = this
                .post(&format!("{BASE}/clusters"), &cluster(&gone, 7000))
                .await;
            assert_eq!(again.status, 201, "round {round}: {}", again.body);
            expected.insert(gone.clone());
            version.insert(gone, again.header("etag").to_owned());
        }
    }
    assert_eq!(cluster_names(&pool, "main").await, expected);
    let all = revisions(&pool).await;
    assert_eq!(all, continuous(all.len()));
    let sequences: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM events WHERE aggregate_type = 'config' AND aggregate_id = 'main' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(sequences, continuous(sequences.len()));
    // Each resource's version is the revision of its last change, as the replicas answered.
    for (name, etag) in &version {
        let stored: i64 = sqlx::query_scalar(
            "SELECT version FROM config_resources WHERE branch = 'main' AND kind = 'cluster' AND name = $1",
        )
        .bind(name)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(format!("\"{stored}\""), *etag, "{name}");
    }
}

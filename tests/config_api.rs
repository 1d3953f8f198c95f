//! The configuration store over HTTP against a real Postgres: Envoy resources with validation,
//! references, optimistic locking, history, time travel, diff and rollback.

use efms_domain::Role;
use efms_tests::{fixture, Answer, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

/// The fixtures in an order that never leaves a dangling reference.
const STACK: [(&str, &str, &str); 6] = [
    ("endpoints", "service_a", "endpoints_service_a"),
    ("clusters", "service_a", "cluster_eds_circuit_breakers"),
    ("secrets", "client_cert", "secret_tls_certificate"),
    ("clusters", "service_b", "cluster_tls_sds"),
    ("routes", "main_routes", "route_weighted_retry_headers"),
    ("listeners", "ingress_http", "listener_http_rds"),
];

async fn app_with_tenant(pool: PgPool) -> TestApp {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app
}

async fn create_stack(app: &TestApp) {
    for (collection, name, fixture_name) in STACK {
        let answer = app
            .post(&format!("{BASE}/{collection}"), &fixture(fixture_name))
            .await;
        assert_eq!(answer.status, 201, "{collection}/{name}: {:?}", answer.body);
        assert_eq!(
            answer.header("location"),
            format!("{BASE}/{collection}/{name}")
        );
    }
}

fn pointers(answer: &Answer) -> Vec<String> {
    answer.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["pointer"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn every_kind_supports_create_get_list_replace_patch_and_delete(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    create_stack(&app).await;

    // Get: the canonical Envoy JSON, private key material withheld.
    let cluster = app.get(&format!("{BASE}/clusters/service_a")).await;
    assert_eq!(cluster.status, 200);
    assert_eq!(
        cluster.body["circuit_breakers"]["thresholds"][0]["max_requests"],
        50
    );
    let etag = cluster.header("etag").to_owned();
    let secret = app.get(&format!("{BASE}/secrets/client_cert")).await;
    assert!(
        !secret.body.to_string().contains("PRIVATE KEY"),
        "{}",
        secret.body
    );
    assert!(secret.body.to_string().contains("BEGIN CERTIFICATE"));

    // List, with a name filter and paging.
    let list = app.get(&format!("{BASE}/clusters?limit=1")).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["next_cursor"], "service_a");
    let filtered = app
        .get(&format!("{BASE}/clusters?name_prefix=service_b"))
        .await;
    assert_eq!(filtered.body["items"][0]["name"], "service_b");
    assert_eq!(filtered.body["items"].as_array().unwrap().len(), 1);

    // Replace with If-Match.
    let mut changed = fixture("cluster_eds_circuit_breakers");
    changed["connect_timeout"] = json!("2s");
    let replaced = app
        .put(
            &format!("{BASE}/clusters/service_a"),
            &changed,
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(replaced.status, 200, "{:?}", replaced.body);
    assert_eq!(replaced.body["connect_timeout"], "2s");
    assert_ne!(replaced.header("etag"), etag);

    // JSON Patch and merge patch.
    let patch = json!([{ "op": "replace", "path": "/filter_chains/0/filters/0/typed_config/stat_prefix", "value": "edge" }]);
    let patched = app
        .send(
            Method::PATCH,
            &format!("{BASE}/listeners/ingress_http"),
            Some(("application/json-patch+json", &patch)),
            &[],
        )
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(
        patched.body["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"],
        "edge"
    );
    let merge = json!({ "connect_timeout": "3s" });
    let merged = app
        .send(
            Method::PATCH,
            &format!("{BASE}/clusters/service_b"),
            Some(("application/merge-patch+json", &merge)),
            &[],
        )
        .await;
    assert_eq!(merged.status, 200, "{:?}", merged.body);
    assert_eq!(merged.body["connect_timeout"], "3s");

    // Delete in dependency order.
    for path in [
        "listeners/ingress_http",
        "routes/main_routes",
        "clusters/service_a",
        "endpoints/service_a",
    ] {
        let deleted = app
            .send(Method::DELETE, &format!("{BASE}/{path}"), None, &[])
            .await;
        assert_eq!(deleted.status, 204, "{path}: {:?}", deleted.body);
        assert_eq!(
            app.get(&format!("{BASE}/{path}")).await.status,
            404,
            "{path}"
        );
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_listener_with_a_misspelled_field_is_422_naming_the_pointer(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    let mut listener = fixture("listener_http_rds");
    listener["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefx"] = json!("x");
    let answer = app.post(&format!("{BASE}/listeners"), &listener).await;
    assert_eq!(answer.status, 422);
    assert_eq!(answer.header("content-type"), "application/problem+json");
    assert_eq!(
        pointers(&answer),
        ["/filter_chains/0/filters/0/typed_config/stat_prefx"]
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_route_to_a_missing_cluster_is_422_naming_the_cluster(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    let answer = app
        .post(
            &format!("{BASE}/routes"),
            &fixture("route_weighted_retry_headers"),
        )
        .await;
    assert_eq!(answer.status, 422);
    assert!(
        answer
            .body
            .to_string()
            .contains("missing cluster `service_a`"),
        "{}",
        answer.body
    );
    assert_eq!(
        app.get(&format!("{BASE}/routes/main_routes")).await.status,
        404
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn deleting_a_cluster_that_a_route_uses_is_409_naming_the_route(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    create_stack(&app).await;
    let answer = app
        .send(
            Method::DELETE,
            &format!("{BASE}/clusters/service_a"),
            None,
            &[],
        )
        .await;
    assert_eq!(answer.status, 409);
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("route `main_routes`"),
        "{}",
        answer.body
    );
    assert_eq!(
        app.get(&format!("{BASE}/clusters/service_a")).await.status,
        200
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_stale_if_match_is_412_and_changes_nothing(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    app.post(
        &format!("{BASE}/endpoints"),
        &fixture("endpoints_service_a"),
    )
    .await;
    let etag = app
        .get(&format!("{BASE}/endpoints/service_a"))
        .await
        .header("etag")
        .to_owned();
    let mut first = fixture("endpoints_service_a");
    first["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = json!(5);
    assert_eq!(
        app.put(
            &format!("{BASE}/endpoints/service_a"),
            &first,
            &[("if-match", &etag)]
        )
        .await
        .status,
        200
    );
    let mut second = fixture("endpoints_service_a");
    second["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = json!(9);
    let stale = app
        .put(
            &format!("{BASE}/endpoints/service_a"),
            &second,
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(stale.status, 412, "{:?}", stale.body);
    let now = app.get(&format!("{BASE}/endpoints/service_a")).await;
    assert_eq!(
        now.body["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"],
        5
    );
}

/// Three edits of one cluster; returns the three bodies as stored.
async fn three_edits(app: &TestApp) -> Vec<Value> {
    app.post(
        &format!("{BASE}/endpoints"),
        &fixture("endpoints_service_a"),
    )
    .await;
    let mut bodies = Vec::new();
    for timeout in ["1s", "2s", "3s"] {
        let mut cluster = fixture("cluster_eds_circuit_breakers");
        cluster["connect_timeout"] = json!(timeout);
        let answer = app
            .put(
                &format!("{BASE}/clusters/service_a"),
                &cluster,
                &[("x-commit-message", &format!("timeout {timeout}"))],
            )
            .await;
        assert!(
            answer.status == 200 || answer.status == 201,
            "{:?}",
            answer.body
        );
        bodies.push(answer.body);
    }
    bodies
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn reads_answer_as_of_a_revision_or_a_time(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    let bodies = three_edits(&app).await;
    // Revision 1 made the endpoints; revisions 2, 3 and 4 are the three edits.
    let first = app
        .get(&format!("{BASE}/clusters/service_a?revision=2"))
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, bodies[0]);

    let revisions = app.get(&format!("{BASE}/revisions")).await.body;
    let time_of = |revision: i64| -> chrono::DateTime<chrono::Utc> {
        let item = revisions["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["revision"] == revision)
            .unwrap();
        item["recorded_at"].as_str().unwrap().parse().unwrap()
    };
    let between = time_of(3) + (time_of(4) - time_of(3)) / 2;
    let at = app
        .get(&format!(
            "{BASE}/clusters/service_a?at={}",
            urlencode(&between.to_rfc3339())
        ))
        .await;
    assert_eq!(at.status, 200, "{:?}", at.body);
    assert_eq!(at.body, bodies[1]);

    let listed = app.get(&format!("{BASE}/clusters?revision=2")).await;
    assert_eq!(listed.body["items"][0]["resource"], bodies[0]);
    assert_eq!(
        app.get(&format!("{BASE}/clusters/service_a?revision=1"))
            .await
            .status,
        404
    );
    assert_eq!(
        app.get(&format!("{BASE}/clusters/service_a?revision=99"))
            .await
            .status,
        404
    );
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn the_diff_patch_turns_the_from_state_into_the_to_state(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    let bodies = three_edits(&app).await;
    let diff = app.get(&format!("{BASE}/diff?from=2&to=4")).await;
    assert_eq!(diff.status, 200, "{:?}", diff.body);
    let changed = &diff.body["changed"][0];
    assert_eq!(changed["name"], "service_a");
    let patch: json_patch::Patch = serde_json::from_value(changed["patch"].clone()).unwrap();
    let mut state = bodies[0].clone();
    json_patch::patch(&mut state, &patch).unwrap();
    assert_eq!(state, bodies[2]);

    let from_empty = app.get(&format!("{BASE}/diff?from=0&to=4")).await;
    let added: Vec<_> = from_empty.body["added"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(added.len(), 2);
    let back = app.get(&format!("{BASE}/diff?from=4&to=1")).await;
    assert_eq!(back.body["removed"][0]["name"], "service_a");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn rollback_restores_the_earlier_state_and_shows_in_history_and_revisions(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    let bodies = three_edits(&app).await;
    let rolled = app
        .send(
            Method::POST,
            &format!("{BASE}/rollback"),
            Some(("application/json", &json!({ "to_revision": 2 }))),
            &[],
        )
        .await;
    assert_eq!(rolled.status, 200, "{:?}", rolled.body);
    assert_eq!(rolled.body["revision"], 5);
    assert_eq!(
        app.get(&format!("{BASE}/clusters/service_a")).await.body,
        bodies[0]
    );

    let history = app
        .get(&format!("{BASE}/clusters/service_a/history"))
        .await
        .body;
    let entries = history.as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0]["revision"], 5);
    assert_eq!(entries[0]["operation"], "rollback");
    assert_eq!(entries[1]["message"], "timeout 3s");
    assert_eq!(entries[3]["change"], "created");

    let revisions = app.get(&format!("{BASE}/revisions?limit=2")).await.body;
    assert_eq!(revisions["items"][0]["revision"], 5);
    assert_eq!(revisions["items"][0]["operation"], "rollback");
    assert_eq!(revisions["next_cursor"], 4);

    // One resource back to a revision in which it did not exist: deleted.
    let one = app
        .send(
            Method::POST,
            &format!("{BASE}/clusters/service_a/rollback"),
            Some(("application/json", &json!({ "to_revision": 1 }))),
            &[],
        )
        .await;
    assert_eq!(one.status, 204, "{:?}", one.body);
    assert_eq!(
        app.get(&format!("{BASE}/clusters/service_a")).await.status,
        404
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn another_tenants_configuration_is_404_and_viewers_cannot_write(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    app.create_tenant("globex", "Globex").await;
    app.post(
        &format!("{BASE}/endpoints"),
        &fixture("endpoints_service_a"),
    )
    .await;
    let outsider = app.token(Role::Admin, Some("globex"));
    let seen = app
        .client
        .get(app.url(&format!("{BASE}/endpoints/service_a")))
        .bearer_auth(&outsider)
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 404);
    let viewer = app.token(Role::Viewer, Some("acme"));
    let read = app
        .client
        .get(app.url(&format!("{BASE}/endpoints/service_a")))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let write = app
        .client
        .delete(app.url(&format!("{BASE}/endpoints/service_a")))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403);
    assert_eq!(app.get("/api/v1/tenants/nobody/clusters").await.status, 404);
    assert_eq!(app.get(&format!("{BASE}/gadgets")).await.status, 404);
}

/// Every row of the configuration read models, in a stable order.
async fn read_model_rows(pool: &PgPool) -> Vec<Value> {
    let mut rows = Vec::new();
    for query in [
        "SELECT to_jsonb(t) AS row FROM config_revisions t ORDER BY tenant_id, branch, revision",
        "SELECT to_jsonb(t) AS row FROM config_resources t ORDER BY tenant_id, branch, kind, name",
        "SELECT to_jsonb(t) AS row FROM config_resource_versions t ORDER BY tenant_id, branch, kind, name, valid_from",
    ] {
        let fetched: Vec<(Value,)> = sqlx::query_as(query).fetch_all(pool).await.unwrap();
        rows.extend(fetched.into_iter().map(|(row,)| row));
    }
    rows
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn rebuilding_the_configuration_read_models_from_the_log_gives_identical_rows(pool: PgPool) {
    use efms_projections::{ConfigProjection, Projector};
    let app = app_with_tenant(pool.clone()).await;
    create_stack(&app).await;
    three_edits(&app).await;
    app.send(
        Method::POST,
        &format!("{BASE}/rollback"),
        Some(("application/json", &json!({ "to_revision": 3 }))),
        &[],
    )
    .await;
    let before = read_model_rows(&pool).await;
    assert!(before.len() > 20, "the scenario fills the read models");

    let projector = Projector::new(pool.clone(), ConfigProjection);
    projector.reset().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while read_model_rows(&pool).await != before {
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuilt read models differ"
        );
        projector.catch_up().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn groups_form_a_hierarchy_attach_resources_and_protect_them(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    create_stack(&app).await;
    let root = json!({ "name": "all", "description": "every proxy", "resources": [{ "kind": "secret", "name": "client_cert" }] });
    assert_eq!(app.post(&format!("{BASE}/groups"), &root).await.status, 201);
    let edge = json!({
        "name": "edge",
        "parent": "all",
        "selector": { "node_cluster": "edge", "metadata": { "zone": "a" } },
        "resources": [{ "kind": "listener", "name": "ingress_http" }, { "kind": "cluster", "name": "service_a" }]
    });
    let created = app.post(&format!("{BASE}/groups"), &edge).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(
        created.body["resources"][0]["kind"], "cluster",
        "attachments are kept sorted"
    );

    let orphan = app
        .post(
            &format!("{BASE}/groups"),
            &json!({ "name": "lost", "parent": "nowhere" }),
        )
        .await;
    assert_eq!(orphan.status, 422, "{:?}", orphan.body);
    let cycle = app
        .put(
            &format!("{BASE}/groups/all"),
            &json!({ "name": "all", "parent": "edge" }),
            &[],
        )
        .await;
    assert_eq!(cycle.status, 422, "{:?}", cycle.body);
    let typo = app
        .post(
            &format!("{BASE}/groups"),
            &json!({ "name": "x", "selectr": {} }),
        )
        .await;
    assert_eq!(pointers(&typo), ["/selectr"]);

    let in_use = app
        .send(
            Method::DELETE,
            &format!("{BASE}/secrets/client_cert"),
            None,
            &[],
        )
        .await;
    assert_eq!(in_use.status, 409);
    assert!(
        in_use.body["detail"]
            .as_str()
            .unwrap()
            .contains("group `all`"),
        "{}",
        in_use.body
    );
    let history = app.get(&format!("{BASE}/groups/edge/history")).await;
    assert_eq!(history.body[0]["change"], "created");

    // A child gets what it attaches and what its ancestors attach.
    let effective = app.get(&format!("{BASE}/groups/edge/resources")).await;
    assert_eq!(effective.status, 200, "{:?}", effective.body);
    let got: Vec<(String, String, String)> = effective
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
                r["attached_by"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "cluster".to_owned(),
                "service_a".to_owned(),
                "edge".to_owned()
            ),
            (
                "listener".to_owned(),
                "ingress_http".to_owned(),
                "edge".to_owned()
            ),
            (
                "secret".to_owned(),
                "client_cert".to_owned(),
                "all".to_owned()
            ),
        ]
    );
    let clusters = app.get(&format!("{BASE}/clusters?group=edge")).await;
    let names: Vec<_> = clusters.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("service_a")],
        "service_b is not attached to edge or its ancestors"
    );
    assert_eq!(
        app.get(&format!("{BASE}/clusters?group=nowhere"))
            .await
            .status,
        404
    );
    assert_eq!(
        app.get(&format!("{BASE}/clusters/service_a/resources"))
            .await
            .status,
        404
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn concurrent_writes_of_different_resources_in_one_tenant_all_succeed(pool: PgPool) {
    let app = app_with_tenant(pool).await;
    let creates = (0..8).map(|n| {
        let mut endpoints = fixture("endpoints_service_a");
        endpoints["cluster_name"] = json!(format!("service_{n}"));
        let app = &app;
        async move {
            app.post(&format!("{BASE}/endpoints"), &endpoints)
                .await
                .status
        }
    });
    let statuses = futures::future::join_all(creates).await;
    assert_eq!(statuses, vec![201; 8]);
    let revisions = app.get(&format!("{BASE}/revisions")).await.body;
    assert_eq!(
        revisions["items"].as_array().unwrap().len(),
        8,
        "one revision per write"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_replica_serves_another_replicas_change_once_its_projector_has_it(pool: PgPool) {
    let a = TestApp::spawn(pool.clone()).await;
    let b = TestApp::spawn(pool).await;
    a.create_tenant("acme", "Acme").await;
    assert_eq!(
        b.get(&format!("{BASE}/clusters")).await.body["items"],
        json!([]),
        "an empty list is cached too"
    );
    let mut cluster = efms_tests::fixture("cluster_tls_sds");
    cluster.as_object_mut().unwrap().remove("transport_socket");
    assert_eq!(
        a.post(&format!("{BASE}/clusters"), &cluster).await.status,
        201
    );
    let path = format!("{BASE}/clusters/service_b");
    efms_tests::fleet::eventually(
        std::time::Duration::from_secs(5),
        "replica b to see the cluster",
        || async { (b.get(&path).await.status == 200).then_some(()) },
    )
    .await;
    let mut changed = cluster.clone();
    changed["connect_timeout"] = json!("7s");
    assert_eq!(a.put(&path, &changed, &[]).await.status, 200);
    efms_tests::fleet::eventually(
        std::time::Duration::from_secs(5),
        "replica b to serve the new version",
        || async { (b.get(&path).await.body["connect_timeout"] == "7s").then_some(()) },
    )
    .await;
    efms_tests::fleet::eventually(
        std::time::Duration::from_secs(5),
        "replica b to list the new version",
        || async {
            let list = b.get(&format!("{BASE}/clusters")).await.body;
            (list["items"][0]["resource"]["connect_timeout"] == "7s").then_some(())
        },
    )
    .await;
    assert_eq!(
        a.get(&path).await.body["connect_timeout"],
        "7s",
        "a reads its own write"
    );
}

fn static_cluster(name: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
            "socket_address": { "address": "127.0.0.1", "port_value": 8080 } } } }] }] } })
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_bulk_request_with_one_invalid_operation_changes_nothing_and_names_it(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let mut operations: Vec<Value> = (0..1_000)
        .map(|i| json!({ "op": "create", "kind": "clusters", "resource": static_cluster(&format!("c{i}")) }))
        .collect();
    operations[637]["resource"]["connect_timeout"] = json!("soon");
    let answer = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": operations }),
        )
        .await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let pointers: Vec<&str> = answer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/operations/637/resource/connect_timeout"]);
    let revisions = app.get(&format!("{BASE}/revisions")).await;
    assert_eq!(revisions.body["items"], json!([]), "nothing was committed");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_bulk_request_lands_as_one_revision_across_kinds(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    for existing in ["old", "kept"] {
        let answer = app
            .post(&format!("{BASE}/clusters"), &static_cluster(existing))
            .await;
        assert_eq!(answer.status, 201);
    }
    let mut operations: Vec<Value> = (0..2_000)
        .map(|i| json!({ "op": "create", "kind": "clusters", "resource": static_cluster(&format!("c{i}")) }))
        .collect();
    operations.push(
        json!({ "op": "create", "kind": "routes", "resource": { "name": "main",
        "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [
            { "match": { "prefix": "/" }, "route": { "cluster": "c1999" } }] }] } }),
    );
    operations.push(json!({ "op": "patch", "kind": "clusters", "name": "kept",
        "merge_patch": { "connect_timeout": "3s" } }));
    operations.push(json!({ "op": "delete", "kind": "clusters", "name": "old" }));
    // More than 1,000 operations: a job, answered at once.
    let answer = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "message": "fleet import", "operations": operations }),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["total"], 2_003);
    let location = answer.header("location").to_owned();
    assert_eq!(
        location,
        format!("{BASE}/jobs/{}", answer.body["id"].as_str().unwrap())
    );
    let job = finished_job(&app, &location).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["revision"], 3);
    assert_eq!(job["applied"], 2_003);
    assert_eq!(job["validated"], 2_003);
    let revisions = app.get(&format!("{BASE}/revisions?limit=1")).await;
    let head = &revisions.body["items"][0];
    assert_eq!(head["operation"], "bulk");
    assert_eq!(head["message"], "fleet import");
    assert_eq!(head["changes"], 2_003);
    assert_eq!(
        app.get(&format!("{BASE}/clusters/kept")).await.body["connect_timeout"],
        "3s"
    );
    assert_eq!(app.get(&format!("{BASE}/clusters/old")).await.status, 404);

    let again = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": [
                { "op": "delete", "kind": "clusters", "name": "c5" },
                { "op": "create", "kind": "clusters", "resource": static_cluster("c9") } ] }),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(
        again.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("operation 1:"),
        "{}",
        again.body
    );
    assert_eq!(
        app.get(&format!("{BASE}/clusters/c5")).await.status,
        200,
        "all or nothing"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_bulk_patch_of_a_group_changes_every_resource_it_attaches_in_one_revision(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    for name in ["a", "b", "c", "d"] {
        let answer = app
            .post(&format!("{BASE}/clusters"), &static_cluster(name))
            .await;
        assert_eq!(answer.status, 201);
    }
    for group in [
        json!({ "name": "all", "resources": [{ "kind": "cluster", "name": "c" }] }),
        json!({ "name": "edge", "parent": "all", "resources": [
            { "kind": "cluster", "name": "a" }, { "kind": "cluster", "name": "b" }] }),
    ] {
        assert_eq!(
            app.post(&format!("{BASE}/groups"), &group).await.status,
            201
        );
    }
    let answer = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "message": "slower edge", "operations": [
                { "op": "patch", "kind": "clusters", "group": "edge", "merge_patch": { "connect_timeout": "7s" } }
            ] }),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["operations"], 3);
    for (name, timeout) in [("a", "7s"), ("b", "7s"), ("c", "7s"), ("d", "1s")] {
        assert_eq!(
            app.get(&format!("{BASE}/clusters/{name}")).await.body["connect_timeout"],
            timeout,
            "{name}"
        );
    }
    let head = app.get(&format!("{BASE}/revisions?limit=1")).await;
    assert_eq!(head.body["items"][0]["changes"], 3);

    let bad = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": [
                { "op": "patch", "kind": "clusters", "group": "edge", "merge_patch": { "connect_timeout": "soon" } }
            ] }),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(
        bad.body["errors"][0]["pointer"],
        "/operations/0/patch/connect_timeout"
    );
    let unknown = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": [
                { "op": "patch", "kind": "clusters", "group": "nope", "merge_patch": {} }
            ] }),
        )
        .await;
    assert_eq!(unknown.status, 422, "{}", unknown.body);
    assert_eq!(unknown.body["errors"][0]["pointer"], "/operations/0/group");
}

/// Polls a bulk job until it ends.
async fn finished_job(app: &TestApp, location: &str) -> Value {
    for _ in 0..600 {
        let job = app.get(location).await;
        assert_eq!(job.status, 200, "{}", job.body);
        if job.body["finished_at"].is_string() {
            return job.body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the job did not finish in 30 s");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_large_bulk_job_with_one_invalid_operation_fails_naming_it_and_changes_nothing(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let mut operations: Vec<Value> = (0..1_500)
        .map(|i| json!({ "op": "create", "kind": "clusters", "resource": static_cluster(&format!("c{i}")) }))
        .collect();
    operations[1_234]["resource"]["connect_timeout"] = json!("soon");
    let answer = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": operations }),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let job = finished_job(&app, answer.header("location")).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["problem"]["status"], 422);
    assert_eq!(
        job["problem"]["errors"][0]["pointer"],
        "/operations/1234/resource/connect_timeout"
    );
    assert!(job.get("revision").is_none());
    let revisions = app.get(&format!("{BASE}/revisions")).await;
    assert_eq!(revisions.body["items"], json!([]), "nothing was committed");
    let unknown = app
        .get(&format!("{BASE}/jobs/0190d1c6-0000-7000-8000-000000000000"))
        .await;
    assert_eq!(unknown.status, 404);
}

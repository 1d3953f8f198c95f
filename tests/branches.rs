//! Branches and merges over HTTP against a real Postgres: a branch is a copy of its base that takes
//! writes of its own; merging it back is one revision, or a 409 listing every conflict and changing
//! nothing.

use efms_tests::{Answer, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

fn static_cluster(name: &str, timeout: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": timeout, "load_assignment": {
        "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
            "socket_address": { "address": "127.0.0.1", "port_value": 8080 } } } }] }] } })
}

fn route(name: &str, cluster: &str) -> Value {
    json!({ "name": name, "match": { "prefix": format!("/{name}") }, "route": { "cluster": cluster } })
}

fn route_config(routes: &[Value]) -> Value {
    json!({ "name": "edge", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }] })
}

async fn app_with_config(pool: PgPool) -> TestApp {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    for cluster in ["a", "b"] {
        let created = app
            .post(&format!("{BASE}/clusters"), &static_cluster(cluster, "1s"))
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
    }
    let created = app
        .post(&format!("{BASE}/routes"), &route_config(&[route("a", "a")]))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    app
}

async fn branch(app: &TestApp, name: &str) -> Answer {
    app.post(&format!("{BASE}/branches"), &json!({ "name": name }))
        .await
}

async fn patch_timeout(app: &TestApp, cluster: &str, branch: Option<&str>, timeout: &str) {
    let query = branch.map_or(String::new(), |b| format!("?branch={b}"));
    let answer = app
        .send(
            Method::PATCH,
            &format!("{BASE}/clusters/{cluster}{query}"),
            Some((
                "application/merge-patch+json",
                &json!({ "connect_timeout": timeout }),
            )),
            &[],
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

async fn timeout_of(app: &TestApp, cluster: &str, branch: &str) -> Value {
    let answer = app
        .get(&format!("{BASE}/clusters/{cluster}?branch={branch}"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["connect_timeout"].clone()
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_branch_starts_as_its_base_and_takes_writes_of_its_own(pool: PgPool) {
    let app = app_with_config(pool).await;
    let created = branch(&app, "canary").await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["base_branch"], "main");
    assert_eq!(created.body["base_revision"], 3);
    assert_eq!(created.body["fork_revision"], 4);
    assert_eq!(
        created.header("location"),
        format!("{BASE}/branches/canary")
    );

    let listed = app.get(&format!("{BASE}/clusters?branch=canary")).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 2);
    patch_timeout(&app, "a", Some("canary"), "7s").await;
    assert_eq!(timeout_of(&app, "a", "canary").await, "7s");
    assert_eq!(timeout_of(&app, "a", "main").await, "1s");

    // History and time travel per branch.
    let history = app
        .get(&format!("{BASE}/clusters/a/history?branch=canary"))
        .await;
    let changes: Vec<&str> = history
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["replaced", "created"]);
    let then = app
        .get(&format!("{BASE}/clusters/a?branch=canary&revision=4"))
        .await;
    assert_eq!(then.body["connect_timeout"], "1s");

    // The branch's diff shows what it changed since its base.
    let diff = app.get(&format!("{BASE}/branches/canary/diff")).await;
    assert_eq!(diff.status, 200, "{}", diff.body);
    assert_eq!(diff.body["from"], 4);
    assert_eq!(diff.body["changed"][0]["name"], "a");
    assert_eq!(
        diff.body["changed"][0]["patch"],
        json!([{ "op": "replace", "path": "/connect_timeout", "value": "7s" }])
    );

    assert_eq!(branch(&app, "canary").await.status, 409);
    assert_eq!(branch(&app, "main").await.status, 422);
    assert_eq!(
        app.get(&format!("{BASE}/clusters?branch=nope"))
            .await
            .status,
        404
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_branch_edited_while_main_moves_on_merges_cleanly_as_one_revision(pool: PgPool) {
    let app = app_with_config(pool).await;
    assert_eq!(branch(&app, "feature").await.status, 201);
    patch_timeout(&app, "a", Some("feature"), "7s").await;
    let created = app
        .post(
            &format!("{BASE}/clusters?branch=feature"),
            &static_cluster("c", "2s"),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    // Main moves on, on another resource.
    patch_timeout(&app, "b", None, "9s").await;

    let merged = app
        .post(
            &format!("{BASE}/branches/feature/merge"),
            &json!({ "message": "ship feature" }),
        )
        .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    assert_eq!(merged.body["into"], "main");
    assert_eq!(merged.body["revision"], 5);
    let changed: Vec<(&str, &str)> = merged.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["change"].as_str().unwrap()))
        .collect();
    assert_eq!(changed, [("a", "replaced"), ("c", "created")]);

    assert_eq!(timeout_of(&app, "a", "main").await, "7s");
    assert_eq!(timeout_of(&app, "b", "main").await, "9s");
    assert_eq!(timeout_of(&app, "c", "main").await, "2s");
    let head = app.get(&format!("{BASE}/revisions?limit=1")).await;
    assert_eq!(head.body["items"][0]["operation"], "merge");
    assert_eq!(head.body["items"][0]["message"], "ship feature");
    assert_eq!(head.body["items"][0]["changes"], 2);

    // Merging again brings nothing; a later change on the branch merges from where the last
    // merge left off, so main's own edit of `a` since then is no conflict.
    let again = app
        .post(&format!("{BASE}/branches/feature/merge"), &json!({}))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(again.body.get("revision").is_none(), "{}", again.body);
    patch_timeout(&app, "a", None, "8s").await;
    patch_timeout(&app, "c", Some("feature"), "3s").await;
    let later = app
        .post(&format!("{BASE}/branches/feature/merge"), &json!({}))
        .await;
    assert_eq!(later.status, 200, "{}", later.body);
    assert_eq!(timeout_of(&app, "a", "main").await, "8s");
    assert_eq!(timeout_of(&app, "c", "main").await, "3s");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_conflicting_edit_is_409_with_the_pointer_and_changes_neither_side(pool: PgPool) {
    let app = app_with_config(pool).await;
    assert_eq!(branch(&app, "feature").await.status, 201);
    patch_timeout(&app, "a", Some("feature"), "7s").await;
    patch_timeout(&app, "b", Some("feature"), "4s").await;
    patch_timeout(&app, "a", None, "5s").await;
    let main_before = app.get(&format!("{BASE}/revisions")).await.body;

    let merged = app
        .post(&format!("{BASE}/branches/feature/merge"), &json!({}))
        .await;
    assert_eq!(merged.status, 409, "{}", merged.body);
    assert_eq!(merged.body["type"], "urn:efms:problem:merge-conflict");
    assert_eq!(
        merged.body["conflicts"],
        json!([{ "kind": "cluster", "name": "a", "pointer": "/connect_timeout",
                 "base": "1s", "ours": "5s", "theirs": "7s" }])
    );
    assert_eq!(
        app.get(&format!("{BASE}/revisions")).await.body,
        main_before
    );
    assert_eq!(timeout_of(&app, "a", "main").await, "5s");
    assert_eq!(timeout_of(&app, "b", "main").await, "1s");
    assert_eq!(timeout_of(&app, "a", "feature").await, "7s");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn routes_added_on_both_sides_merge_by_name(pool: PgPool) {
    let app = app_with_config(pool).await;
    assert_eq!(branch(&app, "feature").await.status, 201);
    let on_branch = app
        .put(
            &format!("{BASE}/routes/edge?branch=feature"),
            &route_config(&[route("a", "a"), route("from-branch", "b")]),
            &[],
        )
        .await;
    assert_eq!(on_branch.status, 200, "{}", on_branch.body);
    let on_main = app
        .put(
            &format!("{BASE}/routes/edge"),
            &route_config(&[route("a", "a"), route("from-main", "a")]),
            &[],
        )
        .await;
    assert_eq!(on_main.status, 200, "{}", on_main.body);

    let merged = app
        .post(&format!("{BASE}/branches/feature/merge"), &json!({}))
        .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    let routes = app.get(&format!("{BASE}/routes/edge")).await;
    let names: Vec<&str> = routes.body["virtual_hosts"][0]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "from-branch", "from-main"]);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_merge_that_would_break_a_reference_is_refused_and_changes_nothing(pool: PgPool) {
    let app = app_with_config(pool).await;
    assert_eq!(branch(&app, "feature").await.status, 201);
    // The branch points the route at `b`; main deletes `b` meanwhile: each side is valid alone.
    let on_branch = app
        .put(
            &format!("{BASE}/routes/edge?branch=feature"),
            &route_config(&[route("a", "b")]),
            &[],
        )
        .await;
    assert_eq!(on_branch.status, 200, "{}", on_branch.body);
    let deleted = app
        .send(Method::DELETE, &format!("{BASE}/clusters/b"), None, &[])
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let before = app.get(&format!("{BASE}/revisions")).await.body;

    let merged = app
        .post(&format!("{BASE}/branches/feature/merge"), &json!({}))
        .await;
    assert_eq!(merged.status, 422, "{}", merged.body);
    assert!(
        merged.body["detail"]
            .as_str()
            .unwrap()
            .contains("missing cluster `b`"),
        "{}",
        merged.body
    );
    assert_eq!(app.get(&format!("{BASE}/revisions")).await.body, before);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_deleted_branch_keeps_its_history_and_takes_no_writes(pool: PgPool) {
    let app = app_with_config(pool.clone()).await;
    assert_eq!(branch(&app, "gone").await.status, 201);
    patch_timeout(&app, "a", Some("gone"), "7s").await;
    let deleted = app
        .send(Method::DELETE, &format!("{BASE}/branches/gone"), None, &[])
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);

    assert_eq!(
        app.get(&format!("{BASE}/clusters/a?branch=gone"))
            .await
            .status,
        404
    );
    let listed = app.get(&format!("{BASE}/branches")).await;
    assert_eq!(listed.body, json!([]));
    let shown = app.get(&format!("{BASE}/branches/gone")).await;
    assert_eq!(shown.status, 200);
    assert!(shown.body["deleted_at"].is_string());
    assert_eq!(branch(&app, "gone").await.status, 409);
    // Its events stay in the log.
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'config' AND aggregate_id = 'gone'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(events >= 5, "{events}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_group_can_only_follow_a_live_branch_that_has_it(pool: PgPool) {
    let app = app_with_config(pool).await;
    let group = |name: &str, branch: Option<&str>| {
        let mut group = json!({ "name": name, "resources": [{ "kind": "cluster", "name": "a" }] });
        if let Some(branch) = branch {
            group["branch"] = json!(branch);
        }
        group
    };
    assert_eq!(
        app.post(&format!("{BASE}/groups"), &group("early", None))
            .await
            .status,
        201
    );
    assert_eq!(branch(&app, "next").await.status, 201);
    assert_eq!(
        app.post(&format!("{BASE}/groups"), &group("late", None))
            .await
            .status,
        201
    );

    let nowhere = app
        .put(
            &format!("{BASE}/groups/early"),
            &group("early", Some("nope")),
            &[],
        )
        .await;
    assert_eq!(nowhere.status, 422, "{}", nowhere.body);
    assert_eq!(nowhere.body["errors"][0]["pointer"], "/branch");
    let missing_there = app
        .put(
            &format!("{BASE}/groups/late"),
            &group("late", Some("next")),
            &[],
        )
        .await;
    assert_eq!(missing_there.status, 422, "{}", missing_there.body);
    assert!(
        missing_there.body["detail"]
            .as_str()
            .unwrap()
            .contains("does not exist on branch `next`"),
        "{}",
        missing_there.body
    );
    let badly_named = app
        .put(
            &format!("{BASE}/groups/early"),
            &group("early", Some("Not A Branch")),
            &[],
        )
        .await;
    assert_eq!(badly_named.status, 422, "{}", badly_named.body);

    let pinned = app
        .put(
            &format!("{BASE}/groups/early"),
            &group("early", Some("next")),
            &[],
        )
        .await;
    assert_eq!(pinned.status, 200, "{}", pinned.body);
    assert_eq!(pinned.body["branch"], "next");
    let deleting = app
        .send(Method::DELETE, &format!("{BASE}/branches/next"), None, &[])
        .await;
    assert_eq!(deleting.status, 409, "{}", deleting.body);
    assert!(deleting.body["detail"]
        .as_str()
        .unwrap()
        .contains("`early`"));
}

//! Quotas (FR-MT-004) against a real Postgres: the system role sets them, the tenant reads them
//! with its usage, and a write over one is refused with the documented answer and changes nothing.

use efms_domain::Role;
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

fn cluster(name: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s" })
}

async fn revisions(app: &TestApp) -> Value {
    app.get(&format!("{BASE}/revisions")).await.body
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_resource_count_quota_refuses_the_write_over_it_with_403_and_changes_nothing(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let set = app
        .put(
            &format!("{BASE}/quotas"),
            &json!({ "resources_per_kind": 2 }),
            &[],
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    for name in ["a", "b"] {
        assert_eq!(
            app.post(&format!("{BASE}/clusters"), &cluster(name))
                .await
                .status,
            201
        );
    }
    let before = revisions(&app).await;
    let over = app.post(&format!("{BASE}/clusters"), &cluster("c")).await;
    assert_eq!(over.status, 403, "{}", over.body);
    assert!(
        over.body["detail"]
            .as_str()
            .unwrap()
            .contains("quota `resources_per_kind` (2)"),
        "{}",
        over.body
    );
    let bulk = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": [
                { "op": "delete", "kind": "clusters", "name": "a" },
                { "op": "create", "kind": "clusters", "resource": cluster("c") },
                { "op": "create", "kind": "clusters", "resource": cluster("d") } ] }),
        )
        .await;
    assert_eq!(bulk.status, 403, "{}", bulk.body);
    assert_eq!(revisions(&app).await, before, "nothing was committed");
    // Within the quota again: a swap in one bulk lands.
    let swap = app
        .post(
            &format!("{BASE}/bulk"),
            &json!({ "operations": [
                { "op": "delete", "kind": "clusters", "name": "a" },
                { "op": "create", "kind": "clusters", "resource": cluster("c") } ] }),
        )
        .await;
    assert_eq!(swap.status, 200, "{}", swap.body);

    let shown = app
        .client
        .get(app.url(&format!("{BASE}/quotas")))
        .bearer_auth(app.token(Role::Viewer, Some("acme")))
        .send()
        .await
        .unwrap();
    let shown: Value = shown.json().await.unwrap();
    assert_eq!(shown["limits"]["resources_per_kind"], 2);
    assert_eq!(shown["usage"]["resources"]["cluster"], 2);
    let by_admin = app
        .client
        .put(app.url(&format!("{BASE}/quotas")))
        .bearer_auth(app.token(Role::Admin, Some("acme")))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(by_admin.status(), 403, "a tenant cannot lift its own quota");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_write_rate_quota_answers_429_with_retry_after_and_changes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let set = app
        .put(
            &format!("{BASE}/quotas"),
            &json!({ "writes_per_minute": 3 }),
            &[],
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    for name in ["a", "b", "c"] {
        assert_eq!(
            app.post(&format!("{BASE}/clusters"), &cluster(name))
                .await
                .status,
            201
        );
    }
    let before = revisions(&app).await;
    let over = app.post(&format!("{BASE}/clusters"), &cluster("d")).await;
    assert_eq!(over.status, 429, "{}", over.body);
    assert_eq!(over.header("retry-after"), "60");
    assert!(over.body["detail"]
        .as_str()
        .unwrap()
        .contains("writes_per_minute"));
    assert_eq!(revisions(&app).await, before);
    assert_eq!(app.get(&format!("{BASE}/clusters/d")).await.status, 404);
    let usage = app.get(&format!("{BASE}/quotas")).await;
    assert_eq!(usage.body["usage"]["writes_last_minute"], 3);
}

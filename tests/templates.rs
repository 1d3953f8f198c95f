//! Templates over HTTP against a real Postgres: resources declared from a template, re-rendered
//! with it in one revision, carried by branches and rollback.

use efms_tests::TestApp;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";

fn web_template(timeout: &str) -> Value {
    json!({
        "name": "web",
        "kind": "cluster",
        "description": "a static cluster on one port",
        "parameters": { "port": { "description": "the upstream port" }, "host": { "default": "127.0.0.1" } },
        "body": {
            "type": "STATIC", "connect_timeout": timeout,
            "load_assignment": { "cluster_name": "{{name}}", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                "address": { "socket_address": { "address": "{{host}}", "port_value": "{{port}}" } } } }] }] }
        }
    })
}

fn declare(name: &str, port: u16) -> Value {
    json!({ "$template": { "template": "web", "name": name, "parameters": { "port": port } } })
}

async fn app_with_template(pool: PgPool) -> TestApp {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let created = app
        .post(&format!("{BASE}/templates"), &web_template("1s"))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    for (name, port) in [("svc-a", 8081), ("svc-b", 8082), ("svc-c", 8083)] {
        let declared = app
            .post(&format!("{BASE}/clusters"), &declare(name, port))
            .await;
        assert_eq!(declared.status, 201, "{}", declared.body);
    }
    app
}

fn port_of(cluster: &Value) -> &Value {
    &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"]["port_value"]
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_declared_resource_is_rendered_with_parameters_defaults_and_overrides(pool: PgPool) {
    let app = app_with_template(pool).await;
    let cluster = app.get(&format!("{BASE}/clusters/svc-a")).await;
    assert_eq!(cluster.status, 200);
    assert_eq!(cluster.body["name"], "svc-a");
    assert_eq!(cluster.body["connect_timeout"], "1s");
    assert_eq!(port_of(&cluster.body), 8081);
    assert_eq!(cluster.body["load_assignment"]["cluster_name"], "svc-a");

    let overridden = app
        .put(
            &format!("{BASE}/clusters/svc-b"),
            &json!({ "$template": { "template": "web", "parameters": { "port": 9000 },
                     "overrides": { "connect_timeout": "4s" } } }),
            &[],
        )
        .await;
    assert_eq!(overridden.status, 200, "{}", overridden.body);
    assert_eq!(overridden.body["connect_timeout"], "4s");
    assert_eq!(port_of(&overridden.body), 9000);
    let declaration = app.get(&format!("{BASE}/clusters/svc-b/declaration")).await;
    assert_eq!(
        declaration.body,
        json!({ "template": "web", "parameters": { "port": 9000 }, "overrides": { "connect_timeout": "4s" } })
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_template_change_re_renders_its_derived_resources_in_one_revision_and_the_diff_lists_each(
    pool: PgPool,
) {
    let app = app_with_template(pool).await;
    let before = app.get(&format!("{BASE}/revisions?limit=1")).await.body["items"][0]["revision"]
        .as_i64()
        .unwrap();
    let changed = app
        .put(&format!("{BASE}/templates/web"), &web_template("2s"), &[])
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    let head = app.get(&format!("{BASE}/revisions?limit=1")).await;
    assert_eq!(
        head.body["items"][0]["revision"],
        before + 1,
        "one revision"
    );
    assert_eq!(
        head.body["items"][0]["changes"], 4,
        "the template and three resources"
    );
    for name in ["svc-a", "svc-b", "svc-c"] {
        let cluster = app.get(&format!("{BASE}/clusters/{name}")).await;
        assert_eq!(cluster.body["connect_timeout"], "2s", "{name}");
    }
    let diff = app
        .get(&format!("{BASE}/diff?from={before}&to={}", before + 1))
        .await;
    assert_eq!(diff.status, 200, "{}", diff.body);
    let changed: Vec<(&str, &str)> = diff.body["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        changed,
        [
            ("cluster", "svc-a"),
            ("cluster", "svc-b"),
            ("cluster", "svc-c"),
            ("template", "web")
        ]
    );
    assert_eq!(
        diff.body["changed"][0]["patch"],
        json!([{ "op": "replace", "path": "/connect_timeout", "value": "2s" }])
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_template_change_that_breaks_a_derived_resource_is_422_naming_it_and_changes_nothing(
    pool: PgPool,
) {
    let app = app_with_template(pool).await;
    let revisions = app.get(&format!("{BASE}/revisions")).await.body;
    let broken = app
        .put(&format!("{BASE}/templates/web"), &web_template("soon"), &[])
        .await;
    assert_eq!(broken.status, 422, "{}", broken.body);
    assert!(
        broken.body["detail"]
            .as_str()
            .unwrap()
            .contains("cluster `svc-a` from template `web`"),
        "{}",
        broken.body
    );
    assert_eq!(app.get(&format!("{BASE}/revisions")).await.body, revisions);

    let in_use = app
        .send(Method::DELETE, &format!("{BASE}/templates/web"), None, &[])
        .await;
    assert_eq!(in_use.status, 409, "{}", in_use.body);
    let missing = app
        .post(
            &format!("{BASE}/clusters"),
            &json!({ "$template": { "template": "web", "name": "svc-d" } }),
        )
        .await;
    assert_eq!(missing.status, 422, "{}", missing.body);
    assert_eq!(
        missing.body["errors"][0]["pointer"],
        "/$template/parameters/port"
    );
    let patched = app
        .send(
            Method::PATCH,
            &format!("{BASE}/clusters/svc-a"),
            Some((
                "application/merge-patch+json",
                &json!({ "connect_timeout": "9s" }),
            )),
            &[],
        )
        .await;
    assert_eq!(
        patched.status, 409,
        "a declared resource is changed through its declaration"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn declarations_travel_with_branches_merges_and_rollbacks(pool: PgPool) {
    let app = app_with_template(pool).await;
    let start = app.get(&format!("{BASE}/revisions?limit=1")).await.body["items"][0]["revision"]
        .as_i64()
        .unwrap();
    let branched = app
        .post(&format!("{BASE}/branches"), &json!({ "name": "slow" }))
        .await;
    assert_eq!(branched.status, 201, "{}", branched.body);
    let on_branch = app
        .get(&format!("{BASE}/clusters/svc-a/declaration?branch=slow"))
        .await;
    assert_eq!(on_branch.status, 200, "{}", on_branch.body);
    let changed = app
        .put(
            &format!("{BASE}/templates/web?branch=slow"),
            &web_template("8s"),
            &[],
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(
        app.get(&format!("{BASE}/clusters/svc-c?branch=slow"))
            .await
            .body["connect_timeout"],
        "8s"
    );
    assert_eq!(
        app.get(&format!("{BASE}/clusters/svc-c")).await.body["connect_timeout"],
        "1s"
    );
    let merged = app
        .post(&format!("{BASE}/branches/slow/merge"), &json!({}))
        .await;
    assert_eq!(merged.status, 200, "{}", merged.body);
    assert_eq!(
        app.get(&format!("{BASE}/clusters/svc-c")).await.body["connect_timeout"],
        "8s"
    );
    // Still declared: the next template change on main re-renders it.
    let again = app
        .put(&format!("{BASE}/templates/web"), &web_template("3s"), &[])
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(
        app.get(&format!("{BASE}/clusters/svc-c")).await.body["connect_timeout"],
        "3s"
    );

    let rolled = app
        .post(
            &format!("{BASE}/rollback"),
            &json!({ "to_revision": start }),
        )
        .await;
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    assert_eq!(
        app.get(&format!("{BASE}/clusters/svc-c")).await.body["connect_timeout"],
        "1s"
    );
    assert_eq!(
        app.get(&format!("{BASE}/clusters/svc-c/declaration"))
            .await
            .status,
        200
    );
}

//! A tenant's lifecycle: renamed (an event of its history), suspended (its own callers read but do
//! not write, its running Envoy keeps serving, a new Envoy is refused its stream) and resumed
//! (writes and pushes again), with the bad input each step refuses.

use std::time::Duration;

use efms_domain::Role;
use efms_tests::fleet::{
    body_through, eventually, free_port, group_bootstrap, Behaviour, Envoy, Upstream, ENVOY,
};
use efms_tests::TestApp;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const BASE: &str = "/api/v1/tenants/acme";
const SUSPENDED: &str = "urn:efms:problem:tenant-suspended";
const PATIENCE: Duration = Duration::from_secs(30);

fn static_cluster(name: &str, port: u16) -> Value {
    json!({ "name": name, "connect_timeout": "1s", "type": "STATIC",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } } } }] }] } })
}

fn routes_to(cluster: &str) -> Value {
    json!({ "name": "main", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] })
}

fn listener(port: u16) -> Value {
    json!({ "name": "http", "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "http", "rds": { "route_config_name": "main", "config_source": { "ads": {}, "resource_api_version": "V3" } },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }] }] })
}

/// The proxy `node` as the API shows it (`Null` until its stream is recorded).
async fn proxy(app: &TestApp, node: &str) -> Value {
    let answer = app.get(&format!("{BASE}/proxies/{node}")).await;
    match answer.status {
        200 => answer.body,
        404 => Value::Null,
        status => panic!("{status}: {}", answer.body),
    }
}

async fn until_synced(app: &TestApp, node: &str) {
    eventually(PATIENCE, &format!("{node} to be SYNCED"), || async {
        let proxy = proxy(app, node).await;
        (proxy["connected"] == true && proxy["status"] == "SYNCED").then_some(())
    })
    .await;
}

async fn bootstrap(app: &TestApp, node: &str) -> Value {
    group_bootstrap(app, node, "&protocol=delta").await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_suspended_tenant_keeps_its_envoy_serving_refuses_writes_and_new_streams_until_resumed(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    let a = Upstream::start("A", Behaviour::Named).await;
    let b = Upstream::start("B", Behaviour::Named).await;
    let port = free_port();
    for (collection, body) in [
        ("clusters", static_cluster("a", a.addr.port())),
        ("clusters", static_cluster("b", b.addr.port())),
        ("routes", routes_to("a")),
        ("listeners", listener(port)),
        (
            "groups",
            json!({ "name": "edge", "resources": [{ "kind": "listener", "name": "http" }] }),
        ),
    ] {
        let answer = app.post(&format!("{BASE}/{collection}"), &body).await;
        assert_eq!(answer.status, 201, "{collection}: {}", answer.body);
    }
    let first_bootstrap = bootstrap(&app, "edge-1").await;
    let second_bootstrap = bootstrap(&app, "edge-2").await;
    let _first = Envoy::start(ENVOY, &first_bootstrap);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    eventually(PATIENCE, "Envoy to route / to A", || async {
        (body_through(&http, port).await? == "A").then_some(())
    })
    .await;
    until_synced(&app, "edge-1").await;

    let suspended = app
        .post(
            &format!("{BASE}/suspend"),
            &json!({ "reason": "invoice 2026-11 unpaid" }),
        )
        .await;
    assert_eq!(suspended.status, 200, "{}", suspended.body);
    assert_eq!(suspended.body["state"], "suspended");
    assert_eq!(
        suspended.body["suspension"]["reason"],
        "invoice 2026-11 unpaid"
    );

    // The tenant's own callers read, and are refused every change with the suspension's type.
    let admin = app.token(Role::Admin, Some("acme"));
    let to_b = routes_to("b");
    let route_to_b = || {
        app.send_as(
            &admin,
            Method::PUT,
            "/api/v1/tenants/acme/routes/main",
            Some(&to_b),
        )
    };
    let refused = route_to_b().await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.body["type"], SUSPENDED, "{}", refused.body);
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("invoice 2026-11 unpaid"),
        "{}",
        refused.body
    );
    let created = app
        .send_as(
            &admin,
            Method::POST,
            &format!("{BASE}/clusters"),
            Some(&static_cluster("c", b.addr.port())),
        )
        .await;
    assert_eq!(created.body["type"], SUSPENDED, "{}", created.body);
    let read = app
        .send_as(&admin, Method::GET, &format!("{BASE}/routes/main"), None)
        .await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body, routes_to("a"), "nothing was written");

    // The running Envoy keeps its stream and its configuration; a new one is refused its stream
    // (once the xDS server's reading of the tenant, from the first Envoy's stream, has aged).
    tokio::time::sleep(efms_xds::TENANT_STANDING_TTL).await;
    let second = Envoy::start(ENVOY, &second_bootstrap);
    eventually(PATIENCE, "the second Envoy to be refused", || async {
        second
            .log()
            .contains("%60acme%60%20is%20suspended")
            .then_some(())
    })
    .await;
    assert_eq!(proxy(&app, "edge-2").await, Value::Null, "never connected");
    assert_eq!(body_through(&http, port).await.as_deref(), Some("A"));
    let first = proxy(&app, "edge-1").await;
    assert_eq!(first["connected"], true, "{first}");
    assert_eq!(first["status"], "SYNCED", "{first}");

    let resumed = app.post(&format!("{BASE}/resume"), &json!({})).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.body["state"], "active");
    let changed = route_to_b().await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    eventually(PATIENCE, "Envoy to route / to B", || async {
        (body_through(&http, port).await? == "B").then_some(())
    })
    .await;
    // Envoy retries a refused stream with a growing backoff; once resumed it is let in.
    until_synced(&app, "edge-2").await;
    until_synced(&app, "edge-1").await;
}

#[sqlx::test(migrations = "../migrations")]
async fn renames_and_suspensions_are_the_tenants_history_and_bad_input_changes_nothing(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("globex", "Globex").await;
    let admin = app.token(Role::Admin, Some("acme"));
    let operator = app.token(Role::Operator, Some("acme"));
    let viewer = app.token(Role::Viewer, Some("acme"));
    let other_admin = app.token(Role::Admin, Some("globex"));
    let patch = |token: String, body: Value| {
        let app = &app;
        async move { app.send_as(&token, Method::PATCH, BASE, Some(&body)).await }
    };

    let renamed = patch(admin.clone(), json!({ "name": "Acme Corporation" })).await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);
    assert_eq!(renamed.body["name"], "Acme Corporation");
    assert_eq!(renamed.body["slug"], "acme", "the slug never changes");
    for (token, body, status, pointer) in [
        (admin.clone(), json!({ "name": "" }), 422, Some("/name")),
        (
            admin.clone(),
            json!({ "name": "n".repeat(201) }),
            422,
            Some("/name"),
        ),
        (
            admin.clone(),
            json!({ "name": " Acme" }),
            422,
            Some("/name"),
        ),
        (operator.clone(), json!({ "name": "Ops" }), 403, None),
        (other_admin.clone(), json!({ "name": "Mine" }), 404, None),
    ] {
        let answer = patch(token, body.clone()).await;
        assert_eq!(answer.status, status, "{body}: {}", answer.body);
        if let Some(pointer) = pointer {
            assert_eq!(
                answer.body["errors"][0]["pointer"], pointer,
                "{}",
                answer.body
            );
        }
    }
    let tenant = app.get(BASE).await;
    assert_eq!(
        tenant.body["name"], "Acme Corporation",
        "nothing else changed"
    );

    // Only the system role suspends; a reason is required; twice is a conflict.
    let suspend = format!("{BASE}/suspend");
    let by_admin = app
        .send_as(
            &admin,
            Method::POST,
            &suspend,
            Some(&json!({ "reason": "x" })),
        )
        .await;
    assert_eq!(by_admin.status, 403, "{}", by_admin.body);
    for body in [
        json!({}),
        json!({ "reason": "" }),
        json!({ "reason": "r".repeat(501) }),
    ] {
        let answer = app.post(&suspend, &body).await;
        assert!(
            matches!(answer.status, 400 | 422),
            "{body}: {}",
            answer.body
        );
    }
    let blank = app.post(&suspend, &json!({ "reason": "" })).await;
    assert_eq!(
        blank.body["errors"][0]["pointer"], "/reason",
        "{}",
        blank.body
    );
    let not_suspended = app.post(&format!("{BASE}/resume"), &json!({})).await;
    assert_eq!(not_suspended.status, 409, "{}", not_suspended.body);
    let first = app
        .post(&suspend, &json!({ "reason": "card declined" }))
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = app.post(&suspend, &json!({ "reason": "other" })).await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(
        again.body["detail"]
            .as_str()
            .unwrap()
            .contains("card declined"),
        "{}",
        again.body
    );

    // Suspended: reads stay for every role (a managing action's reads included), writes do not,
    // and neither the system role nor another tenant is held back.
    for (token, path) in [
        (&viewer, format!("{BASE}/clusters")),
        (&admin, format!("{BASE}/webhooks")),
        (&admin, BASE.to_owned()),
    ] {
        let answer = app.send_as(token, Method::GET, &path, None).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
    }
    let renamed_while_suspended = patch(admin.clone(), json!({ "name": "Sneaky" })).await;
    assert_eq!(renamed_while_suspended.body["type"], SUSPENDED);
    let webhook = app
        .send_as(
            &admin,
            Method::POST,
            &format!("{BASE}/webhooks"),
            Some(&json!({ "url": "https://hooks.example.com/x", "types": ["commit"] })),
        )
        .await;
    assert_eq!(webhook.body["type"], SUSPENDED, "{}", webhook.body);
    let by_system = app
        .post(&format!("{BASE}/clusters"), &static_cluster("s", 9))
        .await;
    assert_eq!(by_system.status, 201, "{}", by_system.body);
    let elsewhere = app
        .send_as(
            &other_admin,
            Method::POST,
            "/api/v1/tenants/globex/clusters",
            Some(&static_cluster("g", 9)),
        )
        .await;
    assert_eq!(elsewhere.status, 201, "{}", elsewhere.body);

    let resumed = app.post(&format!("{BASE}/resume"), &json!({})).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert!(resumed.body.get("suspension").is_none(), "{}", resumed.body);

    let history = app
        .send_as(&viewer, Method::GET, &format!("{BASE}/history"), None)
        .await;
    assert_eq!(history.status, 200, "{}", history.body);
    let items = history.body["items"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "TenantCreated",
            "TenantRenamed",
            "TenantSuspended",
            "TenantResumed"
        ]
    );
    assert_eq!(items[1]["data"]["name"], "Acme Corporation");
    assert_eq!(items[1]["actor"], "tester (admin)");
    assert_eq!(items[2]["data"]["reason"], "card declined");
    let others = app
        .send_as(&other_admin, Method::GET, &format!("{BASE}/history"), None)
        .await;
    assert_eq!(others.status, 404, "another tenant's history is not there");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_suspended_tenants_rollouts_wait_until_it_is_resumed(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("globex", "Globex").await;
    let rollout = |slug: &str| {
        (
            efms_domain::TenantSlug::parse(slug).unwrap().tenant_id(),
            uuid::Uuid::now_v7(),
        )
    };
    let (acme, globex) = (rollout("acme"), rollout("globex"));
    for (tenant_id, rollout_id) in [acme, globex] {
        sqlx::query(
            "INSERT INTO rollouts (tenant_id, rollout_id, group_name, image, state, requested_by,
                                   started_at, updated_at, document, version)
             VALUES ($1, $2, 'edge', 'envoy:next', 'running', 'test', now(), now(), '{}', 1)",
        )
        .bind(tenant_id)
        .bind(rollout_id)
        .execute(&pool)
        .await
        .unwrap();
    }
    let driven = || async {
        let mut driven = efms_projections::fleet::rollouts::running(&pool)
            .await
            .unwrap();
        driven.sort();
        driven
    };
    let mut both = vec![acme, globex];
    both.sort();
    assert_eq!(driven().await, both);

    let suspended = app
        .post(&format!("{BASE}/suspend"), &json!({ "reason": "unpaid" }))
        .await;
    assert_eq!(suspended.status, 200, "{}", suspended.body);
    assert_eq!(driven().await, vec![globex], "acme's rollout waits");

    let resumed = app.post(&format!("{BASE}/resume"), &json!({})).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(driven().await, both, "and goes on once resumed");
}

//! A tenant deleted: refused everything while kept whole for its grace period, restored as it
//! was, or purged for good once the period is over, leaving nothing of it in the database but
//! its deletion record while another tenant's Envoy never notices; with the bad input each step
//! refuses.

use std::time::Duration;

use efms_domain::Role;
use efms_tests::fleet::{
    body_through, cluster_to, eventually, free_port, main_route_to, tenant_bootstrap,
    tenant_edge_group, Behaviour, Envoy, Upstream, ENVOY,
};
use efms_tests::{database_dump, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const PATIENCE: Duration = Duration::from_secs(30);
/// A name nothing but acme's cluster carries, to look for in a dump of the database.
const MARKED_CLUSTER: &str = "acme-payments-q7x3";
/// Likewise for acme's user.
const MARKED_USER: &str = "alice-z9k4";

/// A cluster `name` of no endpoint.
fn cluster(name: &str) -> Value {
    json!({ "name": name, "type": "STATIC", "connect_timeout": "1s" })
}

/// Envoy's own word on whether its xDS stream is up (`control_plane.connected_state`).
async fn connected_state(http: &reqwest::Client, envoy: &Envoy) -> Option<String> {
    let response = http
        .get(format!(
            "http://127.0.0.1:{}/stats?filter=^control_plane.connected_state$",
            envoy.admin
        ))
        .send()
        .await
        .ok()?;
    let text = response.text().await.ok()?;
    text.split(':').nth(1).map(|value| value.trim().to_owned())
}

async fn create_user(app: &TestApp) -> String {
    let admin = app.token(Role::Admin, Some("acme"));
    let body =
        json!({ "username": MARKED_USER, "role": "operator", "password": "correct horse battery" });
    let created = app
        .send_as(
            &admin,
            Method::POST,
            "/api/v1/tenants/acme/users",
            Some(&body),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let login = app
        .client
        .post(app.url("/api/v1/auth/token"))
        .json(&json!({ "tenant": "acme", "username": MARKED_USER, "password": "correct horse battery" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let token: Value = login.json().await.unwrap();
    token["access_token"].as_str().unwrap().to_owned()
}

#[sqlx::test(migrations = "../migrations")]
async fn a_deleted_tenant_is_refused_everything_and_a_restore_brings_all_of_it_back(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("beta", "Beta").await;
    let created = app
        .post("/api/v1/tenants/acme/clusters", &cluster(MARKED_CLUSTER))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let user = create_user(&app).await;
    let admin = app.token(Role::Admin, Some("acme"));
    let before = app.get("/api/v1/tenants/acme/clusters").await.body;
    let revisions = app.get("/api/v1/tenants/acme/revisions").await.body;

    let deleted = app
        .send(Method::DELETE, "/api/v1/tenants/acme", None, &[])
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(deleted.body["state"], "deleted");
    let purge_after: chrono::DateTime<chrono::Utc> = deleted.body["deletion"]["purge_after"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let days = (purge_after - chrono::Utc::now()).num_hours();
    assert!(
        (167..=168).contains(&days),
        "seven days of grace by default: {days} h"
    );

    // Everything of it is refused: its admin's reads and writes (410), its user's token (401).
    for (method, path, body) in [
        (Method::GET, "/api/v1/tenants/acme/clusters", None),
        (Method::GET, "/api/v1/tenants/acme", None),
        (
            Method::POST,
            "/api/v1/tenants/acme/clusters",
            Some(cluster("another")),
        ),
    ] {
        let refused = app.send_as(&admin, method, path, body.as_ref()).await;
        assert_eq!(refused.status, 410, "{path}: {}", refused.body);
        assert!(
            refused.body["detail"]
                .as_str()
                .unwrap()
                .contains("restores"),
            "{}",
            refused.body
        );
    }
    let by_user = app
        .send_as(&user, Method::GET, "/api/v1/tenants/acme/clusters", None)
        .await;
    assert_eq!(by_user.status, 401, "{}", by_user.body);
    // The system role sees it deleted, and may do nothing else with it but restore it.
    assert_eq!(
        app.get("/api/v1/tenants/acme").await.body["state"],
        "deleted"
    );
    let suspended = app
        .post("/api/v1/tenants/acme/suspend", &json!({ "reason": "late" }))
        .await;
    assert_eq!(suspended.status, 410, "{}", suspended.body);
    let twice = app
        .send(Method::DELETE, "/api/v1/tenants/acme", None, &[])
        .await;
    assert_eq!(twice.status, 409, "{}", twice.body);
    assert!(
        twice.body["detail"].as_str().unwrap().contains("deleted"),
        "{}",
        twice.body
    );
    let listed = app.get("/api/v1/tenants").await.body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    let with_deleted = app.get("/api/v1/tenants?include_deleted=true").await.body;
    assert_eq!(with_deleted["items"][0]["slug"], "acme", "{with_deleted}");
    assert_eq!(with_deleted["items"][0]["state"], "deleted");
    let not_system = app
        .send_as(
            &app.token(Role::Admin, Some("beta")),
            Method::GET,
            "/api/v1/tenants?include_deleted=true",
            None,
        )
        .await;
    assert_eq!(not_system.status, 403, "{}", not_system.body);
    let by_admin = app
        .send_as(&admin, Method::POST, "/api/v1/tenants/acme/restore", None)
        .await;
    assert!(matches!(by_admin.status, 403 | 410), "{}", by_admin.body);

    let restored = app.post("/api/v1/tenants/acme/restore", &json!({})).await;
    assert_eq!(restored.status, 200, "{}", restored.body);
    assert_eq!(restored.body["state"], "active");
    assert!(restored.body.get("deletion").is_none(), "{}", restored.body);
    let again = app.post("/api/v1/tenants/acme/restore", &json!({})).await;
    assert_eq!(again.status, 409, "{}", again.body);

    // All of it is back as it was: its resources, its history, its user, its writes.
    assert_eq!(app.get("/api/v1/tenants/acme/clusters").await.body, before);
    assert_eq!(
        app.get("/api/v1/tenants/acme/revisions").await.body,
        revisions
    );
    let by_user = app
        .send_as(&user, Method::GET, "/api/v1/tenants/acme/clusters", None)
        .await;
    assert_eq!(by_user.status, 200, "{}", by_user.body);
    let written = app
        .send_as(
            &admin,
            Method::POST,
            "/api/v1/tenants/acme/clusters",
            Some(&cluster("after")),
        )
        .await;
    assert_eq!(written.status, 201, "{}", written.body);
    let history = app.get("/api/v1/tenants/acme/history").await.body;
    let kinds: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["TenantCreated", "TenantDeleted", "TenantRestored"]);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_tenant_others_refer_to_is_not_deleted_and_the_refusal_names_the_references(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("beta", "Beta").await;
    let shared = app
        .post("/api/v1/tenants/acme/clusters", &cluster("payments"))
        .await;
    assert_eq!(shared.status, 201, "{}", shared.body);
    let granted = app
        .post(
            "/api/v1/tenants/acme/grants",
            &json!({ "grantee": "beta", "kind": "cluster", "name": "payments" }),
        )
        .await;
    assert_eq!(granted.status, 201, "{}", granted.body);
    let route = json!({ "name": "checkout", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "acme/payments" } }] }] });
    let referring = app.post("/api/v1/tenants/beta/routes", &route).await;
    assert_eq!(referring.status, 201, "{}", referring.body);

    let refused = app
        .send(Method::DELETE, "/api/v1/tenants/acme", None, &[])
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let detail = refused.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("beta")
            && detail.contains("checkout")
            && detail.contains("cluster:acme/payments"),
        "{detail}"
    );
    assert_eq!(
        app.get("/api/v1/tenants/acme").await.body["state"],
        "active"
    );

    // Once nothing refers to it, it may go; and nothing may come to refer to it meanwhile.
    let unreferenced = app
        .send(
            Method::DELETE,
            "/api/v1/tenants/beta/routes/checkout",
            None,
            &[],
        )
        .await;
    assert!(unreferenced.status < 300, "{}", unreferenced.body);
    let deleted = app
        .send(Method::DELETE, "/api/v1/tenants/acme", None, &[])
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let late = app.post("/api/v1/tenants/beta/routes", &route).await;
    assert_eq!(late.status, 422, "{}", late.body);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_purged_tenant_leaves_only_its_deletion_record_and_another_tenants_envoy_never_notices(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    app.set_purge_grace(Duration::from_secs(1));
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("beta", "Beta").await;
    let upstream = Upstream::start("B", Behaviour::Named).await;
    let (acme_port, beta_port) = (free_port(), free_port());
    for (tenant, cluster, port) in [
        ("acme", MARKED_CLUSTER, acme_port),
        ("beta", "payments", beta_port),
    ] {
        let routes = main_route_to(cluster);
        tenant_edge_group(
            &app,
            tenant,
            vec![cluster_to(cluster, &upstream)],
            routes,
            port,
        )
        .await;
    }
    create_user(&app).await;
    let acme_envoy = Envoy::start(ENVOY, &tenant_bootstrap(&app, "acme", "acme-1", "").await);
    let _beta_envoy = Envoy::start(ENVOY, &tenant_bootstrap(&app, "beta", "beta-1", "").await);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    for port in [acme_port, beta_port] {
        eventually(PATIENCE, "both Envoys to route to B", || async {
            (body_through(&http, port).await? == "B").then_some(())
        })
        .await;
    }
    // Envoy may route before its ACK is recorded: the status is waited for, not assumed.
    let beta_proxy = eventually(PATIENCE, "beta's Envoy to be recorded SYNCED", || async {
        let proxy = app.get("/api/v1/tenants/beta/proxies/beta-1").await.body;
        (proxy["status"] == "SYNCED").then_some(proxy)
    })
    .await;

    // beta's traffic is watched throughout: a request every 50 ms, every one must succeed.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let watcher = {
        let http = http.clone();
        tokio::spawn(async move {
            let (mut sent, mut failed) = (0_u32, 0_u32);
            while !*stopped.borrow() {
                sent += 1;
                if body_through(&http, beta_port).await.as_deref() != Some("B") {
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (sent, failed)
        })
    };

    let deleted = app
        .send(Method::DELETE, "/api/v1/tenants/acme", None, &[])
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    eventually(PATIENCE, "acme's Envoy to lose its stream", || async {
        (connected_state(&http, &acme_envoy).await.as_deref() == Some("0")).then_some(())
    })
    .await;
    let purged = eventually(PATIENCE, "acme to be purged", || async {
        let listed = app.get("/api/v1/tenants?include_deleted=true").await.body;
        listed["items"]
            .as_array()?
            .iter()
            .find(|item| item["slug"] == "acme" && item["state"] == "purged")
            .cloned()
    })
    .await;
    assert!(
        purged["purged_rows"]["events"].as_i64().unwrap() > 0,
        "{purged}"
    );
    assert_eq!(purged["purged_rows"]["users"], 1, "{purged}");
    assert_eq!(
        purged["deleted_by"], deleted.body["deletion"]["by"],
        "{purged}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    let (sent, failed) = watcher.await.unwrap();
    assert!(sent > 5, "{sent} requests through beta's Envoy");
    assert_eq!(failed, 0, "of {sent} requests through beta's Envoy");
    let beta_after = app.get("/api/v1/tenants/beta/proxies/beta-1").await.body;
    assert_eq!(beta_after["status"], "SYNCED", "{beta_after}");
    assert_eq!(
        beta_after["connected_at"], beta_proxy["connected_at"],
        "beta's stream never broke"
    );
    assert_eq!(
        app.get("/api/v1/tenants/beta/clusters/payments")
            .await
            .status,
        200
    );

    // A dump of the whole database holds nothing of acme but its deletion record.
    let dump = database_dump(&pool);
    assert!(dump.contains("payments"), "the dump holds beta's data");
    assert!(!dump.contains(MARKED_CLUSTER), "acme's cluster is gone");
    assert!(!dump.contains(MARKED_USER), "acme's user is gone");
    let acme_id = efms_domain::TenantSlug::parse("acme")
        .unwrap()
        .tenant_id()
        .to_string();
    let holding: Vec<&str> = dump
        .split("\\.\n")
        .filter(|table| table.contains(&acme_id))
        .filter_map(|table| table.lines().find(|line| line.starts_with("COPY ")))
        .collect();
    assert_eq!(holding.len(), 1, "acme's id remains in {holding:?}");
    assert!(
        holding[0].starts_with("COPY public.tenant_deletions "),
        "{holding:?}"
    );

    // Its slug is never given again, and nothing remains to restore.
    let reused = app
        .post(
            "/api/v1/tenants",
            &json!({ "slug": "acme", "name": "Acme again" }),
        )
        .await;
    assert_eq!(reused.status, 409, "{}", reused.body);
    let restore = app.post("/api/v1/tenants/acme/restore", &json!({})).await;
    assert_eq!(restore.status, 410, "{}", restore.body);
    let deleted_again = app
        .send(Method::DELETE, "/api/v1/tenants/acme", None, &[])
        .await;
    assert_eq!(deleted_again.status, 410, "{}", deleted_again.body);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_deleted_tenants_agent_is_cut_and_refused_until_the_tenant_is_restored(pool: PgPool) {
    use efms_tests::agent_stream::{acme, Agent};
    let app = TestApp::spawn(pool).await;
    let token = acme(&app).await;
    let (mut agent, _) = Agent::connect(&app, &token, "epoch-a").await.unwrap();
    let deleted = app
        .send(Method::DELETE, "/api/v1/tenants/acme", None, &[])
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let end = agent.ended(PATIENCE).await;
    assert!(end.is_some(), "the stream ends with a status");
    let refused = Agent::connect(&app, &token, "epoch-a").await.err().unwrap();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let restored = app.post("/api/v1/tenants/acme/restore", &json!({})).await;
    assert_eq!(restored.status, 200, "{}", restored.body);
    assert!(
        Agent::connect(&app, &token, "epoch-a").await.is_ok(),
        "the same join token works again"
    );
}

//! `efms replay`: every read model rebuilt from the log gives the rows the projectors kept, of
//! all tenants at once or of one tenant without touching the others.

use efms_projections::config::held::HeldChanges;
use efms_projections::{ConfigProjection, Projector, Rebuild};
use efms_tests::TestApp;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Every table a replay rebuilds.
const READ_MODELS: [&str; 7] = [
    "tenants",
    "config_revisions",
    "config_resources",
    "config_resource_versions",
    "config_branches",
    "vms",
    "containers",
];

/// Every row of the read models, in a stable order, without the moments rows were written
/// (`updated_at` and the like come from the events, so they are kept too).
async fn rows(pool: &PgPool, tenant: Option<&str>) -> Vec<Value> {
    let mut all = Vec::new();
    for table in READ_MODELS {
        let query = format!(
            "SELECT to_jsonb(t) AS row FROM {table} t
             WHERE $1::uuid IS NULL OR tenant_id = $1 ORDER BY to_jsonb(t)::text"
        );
        let tenant_id = tenant.map(tenant_id);
        let fetched: Vec<(Value,)> = sqlx::query_as(&query)
            .bind(tenant_id)
            .fetch_all(pool)
            .await
            .unwrap();
        all.extend(fetched.into_iter().map(|(row,)| json!({ table: row })));
    }
    all
}

fn tenant_id(slug: &str) -> uuid::Uuid {
    efms_domain::TenantSlug::parse(slug).unwrap().tenant_id()
}

fn cluster(name: &str, timeout: &str) -> Value {
    json!({ "name": name, "connect_timeout": timeout, "type": "STRICT_DNS",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{
                "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": 8080 } } } }] }] } })
}

/// Two tenants with history: resources created, replaced, deleted and created again; a branch
/// with a change of its own; a VM.
async fn two_tenants(app: &TestApp) {
    for slug in ["acme", "beta"] {
        app.create_tenant(slug, slug).await;
        let base = format!("/api/v1/tenants/{slug}");
        for name in ["a", "b", "c"] {
            let created = app
                .post(&format!("{base}/clusters"), &cluster(name, "1s"))
                .await;
            assert_eq!(created.status, 201, "{}", created.body);
        }
        let replaced = app
            .put(&format!("{base}/clusters/a"), &cluster("a", "2s"), &[])
            .await;
        assert_eq!(replaced.status, 200, "{}", replaced.body);
        let deleted = app
            .send(
                reqwest::Method::DELETE,
                &format!("{base}/clusters/c"),
                None,
                &[],
            )
            .await;
        assert_eq!(deleted.status, 204, "{}", deleted.body);
        let again = app
            .post(&format!("{base}/clusters"), &cluster("c", "3s"))
            .await;
        assert_eq!(again.status, 201, "created again: {}", again.body);
        let branch = app
            .post(&format!("{base}/branches"), &json!({ "name": "canary" }))
            .await;
        assert_eq!(branch.status, 201, "{}", branch.body);
        let on_branch = app
            .put(
                &format!("{base}/clusters/b?branch=canary"),
                &cluster("b", "4s"),
                &[],
            )
            .await;
        assert_eq!(on_branch.status, 200, "{}", on_branch.body);
        let vm = app
            .post(&format!("{base}/vms"), &json!({ "name": "vm-1" }))
            .await;
        assert_eq!(vm.status, 201, "{}", vm.body);
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn replaying_every_read_model_gives_the_rows_the_projectors_kept(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    two_tenants(&app).await;
    let kept = rows(&pool, None).await;
    assert!(
        kept.len() > 20,
        "the scenario fills the read models: {}",
        kept.len()
    );
    // A damaged row, which the replay must put right.
    sqlx::query("UPDATE config_resources SET document = '{}' WHERE name = 'a'")
        .execute(&pool)
        .await
        .unwrap();

    let replayed = efms_api::replay::replay(&pool, Rebuild::All).await.unwrap();
    assert_eq!(rows(&pool, None).await, kept);
    let open_index: Option<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'config_resource_versions_open'",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert!(
        open_index.is_some_and(|def| def.contains("UNIQUE") && def.contains("valid_to IS NULL")),
        "the index of open versions is back after the rebuild"
    );
    let config = replayed
        .iter()
        .find(|done| done.projection == "config")
        .unwrap();
    assert!(config.replayed.events > 10, "{replayed:?}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn replaying_one_tenant_rebuilds_its_rows_and_leaves_the_others_alone(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    two_tenants(&app).await;
    let acme = rows(&pool, Some("acme")).await;
    // Both tenants' rows damaged; only the replayed tenant's are put right.
    sqlx::query("UPDATE config_resources SET document = '{}' WHERE name = 'b'")
        .execute(&pool)
        .await
        .unwrap();
    let beta_damaged = rows(&pool, Some("beta")).await;

    efms_api::replay::replay(&pool, Rebuild::Tenant(tenant_id("acme")))
        .await
        .unwrap();
    assert_eq!(rows(&pool, Some("acme")).await, acme);
    assert_eq!(rows(&pool, Some("beta")).await, beta_damaged);

    // The projectors go on from where they stood: a later write shows.
    let later = app
        .post("/api/v1/tenants/acme/clusters", &cluster("d", "1s"))
        .await;
    assert_eq!(later.status, 201, "{}", later.body);
    assert_eq!(app.get("/api/v1/tenants/acme/clusters/d").await.status, 200);
}

/// More history than [`two_tenants`]: one resource changed many times, deleted between two
/// changes; a branch changed then deleted, and another started.
async fn churn(app: &TestApp) {
    let base = "/api/v1/tenants/acme";
    for round in 2..8 {
        let replaced = app
            .put(
                &format!("{base}/clusters/a"),
                &cluster("a", &format!("{round}s")),
                &[],
            )
            .await;
        assert_eq!(replaced.status, 200, "{}", replaced.body);
        if round == 4 {
            let deleted = app
                .send(
                    reqwest::Method::DELETE,
                    &format!("{base}/clusters/a"),
                    None,
                    &[],
                )
                .await;
            assert_eq!(deleted.status, 204, "{}", deleted.body);
            let again = app
                .post(&format!("{base}/clusters"), &cluster("a", "1s"))
                .await;
            assert_eq!(again.status, 201, "{}", again.body);
        }
    }
    let on_branch = app
        .put(
            &format!("{base}/clusters/a?branch=canary"),
            &cluster("a", "9s"),
            &[],
        )
        .await;
    assert_eq!(on_branch.status, 200, "{}", on_branch.body);
    let deleted = app
        .send(
            reqwest::Method::DELETE,
            &format!("{base}/branches/canary"),
            None,
            &[],
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    let branch = app
        .post(&format!("{base}/branches"), &json!({ "name": "canary-2" }))
        .await;
    assert_eq!(branch.status, 201, "{}", branch.body);
    let on_branch = app
        .put(
            &format!("{base}/clusters/b?branch=canary-2"),
            &cluster("b", "8s"),
            &[],
        )
        .await;
    assert_eq!(on_branch.status, 200, "{}", on_branch.body);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_replay_holding_few_or_many_changes_back_gives_the_rows_the_projector_kept(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    two_tenants(&app).await;
    churn(&app).await;
    let kept = rows(&pool, None).await;
    // Holding one resource writes nearly every change out before the next one comes (through
    // the projector's statements); holding many closes every version in memory.
    for limit in [1, 2, 1_000] {
        let projector = Projector::new(pool.clone(), ConfigProjection);
        projector
            .replay_with(Rebuild::All, HeldChanges::holding(limit), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(rows(&pool, None).await, kept, "holding {limit}");
    }
}

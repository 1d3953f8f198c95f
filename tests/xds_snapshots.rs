//! The xDS snapshot store against a real Postgres: snapshots kept current change by change (only
//! what changed read, only the groups that see it built again) equal snapshots built afresh from
//! the read models, through resource changes, an ancestor's attachments, a followed group created,
//! overrides by name and a group pinned to a branch and back.

use std::sync::Arc;

use efms_domain::envoy::ResourceKind;
use efms_domain::TenantSlug;
use efms_projections::{GroupSnapshot, SnapshotStore};
use efms_tests::{Answer, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

const BASE: &str = "/api/v1/tenants/acme";
const CLUSTER: ResourceKind = ResourceKind::Cluster;
const GROUPS: [&str; 5] = ["all", "eu", "solo", "orphan", "ghost"];

fn cluster(name: &str, timeout: &str) -> Value {
    json!({ "name": name, "connect_timeout": timeout, "type": "STATIC", "load_assignment": {
        "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
            "socket_address": { "address": "127.0.0.1", "port_value": 9 } } } }] }] } })
}

fn route(cluster: &str) -> Value {
    json!({ "name": "r", "virtual_hosts": [{ "name": "all", "domains": ["*"],
        "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": cluster } }] }] })
}

fn listener() -> Value {
    json!({ "name": "l",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 10_000 } },
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "l", "rds": { "route_config_name": "r",
                    "config_source": { "ads": {}, "resource_api_version": "V3" } },
                "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }] }] })
}

fn ok(answer: &Answer, what: &str) {
    assert!(
        (200..300).contains(&answer.status),
        "{what}: {} {}",
        answer.status,
        answer.body
    );
}

async fn put(app: &TestApp, path: &str, body: &Value) {
    ok(&app.put(&format!("{BASE}/{path}"), body, &[]).await, path);
}

/// The groups' snapshots as the store keeps them.
struct Watched {
    tenant_id: Uuid,
    receivers: Vec<(&'static str, watch::Receiver<Arc<GroupSnapshot>>)>,
}

impl Watched {
    async fn follow(app: &TestApp) -> Self {
        let tenant_id = TenantSlug::parse("acme").unwrap().tenant_id();
        let mut receivers = Vec::new();
        for group in GROUPS {
            receivers.push((group, app.snapshots.watch(tenant_id, group).await.unwrap()));
        }
        Self {
            tenant_id,
            receivers,
        }
    }

    fn of(&self, group: &str) -> Arc<GroupSnapshot> {
        let (_, receiver) = self.receivers.iter().find(|(g, _)| *g == group).unwrap();
        receiver.borrow().clone()
    }

    /// Brings the store up to the head and checks every group against a store loaded afresh.
    async fn agree(&self, app: &TestApp, step: &str) {
        let fresh: SnapshotStore = app.fresh_snapshots();
        for (group, receiver) in &self.receivers {
            let built = fresh.current(self.tenant_id, group).await.unwrap();
            // The store follows the projector on its own; it is refreshed here too, until it
            // reached the revision the fresh store read.
            for _ in 0..100 {
                app.snapshots.refresh().await.unwrap();
                if receiver.borrow().revision >= built.revision {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let kept = receiver.borrow().clone();
            assert_eq!(*kept, *built, "{step}: group {group}");
        }
    }
}

fn group(name: &str, parent: Option<&str>, resources: &Value) -> Value {
    json!({ "name": name, "parent": parent, "resources": resources })
}

/// Clusters c1-c3, route r → c2, listener l (RDS r); groups `all` (l), `eu` under it (c3 served as
/// c2), `solo` (c1), `later` (nothing) and `orphan` under it (c1).
async fn configured(app: &TestApp) {
    app.create_tenant("acme", "Acme").await;
    for name in ["c1", "c2", "c3"] {
        put(app, &format!("clusters/{name}"), &cluster(name, "1s")).await;
    }
    put(app, "routes/r", &route("c2")).await;
    put(app, "listeners/l", &listener()).await;
    put(
        app,
        "groups/all",
        &group("all", None, &json!([{ "kind": "listener", "name": "l" }])),
    )
    .await;
    put(
        app,
        "groups/eu",
        &group(
            "eu",
            Some("all"),
            &json!([{ "kind": "cluster", "name": "c3", "as": "c2" }]),
        ),
    )
    .await;
    put(
        app,
        "groups/solo",
        &group("solo", None, &json!([{ "kind": "cluster", "name": "c1" }])),
    )
    .await;
    put(app, "groups/later", &group("later", None, &json!([]))).await;
    put(
        app,
        "groups/orphan",
        &group(
            "orphan",
            Some("later"),
            &json!([{ "kind": "cluster", "name": "c1" }]),
        ),
    )
    .await;
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn snapshots_kept_change_by_change_equal_snapshots_built_afresh(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    configured(&app).await;
    let watched = Watched::follow(&app).await;
    watched.agree(&app, "loaded").await;

    put(&app, "clusters/c2", &cluster("c2", "2s")).await;
    watched
        .agree(&app, "a cluster the route uses changed")
        .await;

    let solo = watched.of("solo");
    put(&app, "clusters/c4", &cluster("c4", "1s")).await;
    watched.agree(&app, "a cluster nobody uses created").await;
    let after = watched.of("solo");
    assert!(
        Arc::ptr_eq(&solo.resources[&CLUSTER], &after.resources[&CLUSTER]),
        "a group that sees nothing of a change keeps its resources as they were"
    );

    put(&app, "routes/r", &route("c1")).await;
    watched.agree(&app, "the route changed cluster").await;

    put(
        &app,
        "groups/later",
        &group("later", None, &json!([{ "kind": "cluster", "name": "c4" }])),
    )
    .await;
    watched.agree(&app, "an ancestor attached a cluster").await;

    put(
        &app,
        "groups/ghost",
        &group("ghost", None, &json!([{ "kind": "cluster", "name": "c2" }])),
    )
    .await;
    watched.agree(&app, "a followed group created").await;

    put(
        &app,
        "groups/eu",
        &group(
            "eu",
            Some("all"),
            &json!([{ "kind": "cluster", "name": "c3" }]),
        ),
    )
    .await;
    watched.agree(&app, "an override dropped").await;

    ok(
        &app.post(&format!("{BASE}/branches"), &json!({ "name": "canary" }))
            .await,
        "branch",
    );
    put(&app, "clusters/c1?branch=canary", &cluster("c1", "5s")).await;
    watched.agree(&app, "a branch nobody follows changed").await;

    put(
        &app,
        "groups/solo",
        &json!({ "name": "solo", "branch": "canary",
                 "resources": [{ "kind": "cluster", "name": "c1" }] }),
    )
    .await;
    watched.agree(&app, "a group pinned to the branch").await;

    put(&app, "clusters/c1?branch=canary", &cluster("c1", "6s")).await;
    watched.agree(&app, "the pinned branch changed").await;

    put(&app, "groups/later", &group("later", None, &json!([]))).await;
    ok(
        &app.send(Method::DELETE, &format!("{BASE}/clusters/c4"), None, &[])
            .await,
        "delete c4",
    );
    watched
        .agree(&app, "an ancestor's cluster dropped and deleted")
        .await;

    put(
        &app,
        "groups/solo",
        &group("solo", None, &json!([{ "kind": "cluster", "name": "c1" }])),
    )
    .await;
    watched.agree(&app, "unpinned").await;
}

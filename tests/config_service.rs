//! The configuration service's rules, called directly (no HTTP) against a real Postgres: quotas,
//! pins of groups to branches, and an owner's changes to what it shares. The HTTP tests
//! (`quotas.rs`, `branches.rs`, `sharing.rs`) pin how the same refusals are answered.

use std::sync::Arc;
use std::time::Duration;

use efms_api::config_services::ReadModelsAndMetrics;
use efms_api::metrics::Metrics;
use efms_commands::configuration::bulk::BulkError;
use efms_commands::configuration::{
    CommitRequest, ConfigService, ConfigServiceError, ConfigServices,
};
use efms_commands::{CommandBus, CommitBell, CommitMetadata, Keyring};
use efms_domain::config::bulk::{BulkOp, BulkOperation, Stored};
use efms_domain::config::inheritance::Inherited;
use efms_domain::config::limits::Limits;
use efms_domain::config::{Change, Expect, Operation};
use efms_domain::envoy::ResourceKind;
use efms_domain::secrets::Key;
use efms_domain::TenantSlug;
use efms_projections::{ConfigProjection, Projector};
use efms_tests::{TestApp, MASTER_KEY};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// A configuration service over `pool`, as `efms serve` builds one, with its own projector.
fn service(pool: &PgPool) -> ConfigService {
    let projector = Projector::new(pool.clone(), ConfigProjection)
        .spawn(Duration::from_millis(50), futures::future::pending());
    ConfigService::new(
        pool.clone(),
        CommandBus::new(pool.clone(), CommitBell::spawn(pool)),
        Keyring::new(pool.clone(), Key::from_base64(MASTER_KEY).unwrap()),
        Limits::default(),
        Arc::new(ReadModelsAndMetrics {
            pool: pool.clone(),
            config: projector,
            metrics: Metrics::new(),
        }),
    )
}

fn tenant_id(slug: &str) -> Uuid {
    TenantSlug::parse(slug).unwrap().tenant_id()
}

fn on(slug: &str, branch: &str) -> CommitRequest {
    CommitRequest {
        tenant_id: tenant_id(slug),
        branch: branch.to_owned(),
        metadata: CommitMetadata::by("service-test"),
    }
}

fn cluster(name: &str) -> Value {
    json!({ "name": name, "connect_timeout": "1s", "type": "STRICT_DNS",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{
                "endpoint": { "address": { "socket_address": {
                    "address": "127.0.0.1", "port_value": 8080 } } } }] }] } })
}

fn create(kind: ResourceKind, document: &Value) -> Vec<Change> {
    vec![Change::put(kind, document, Expect::Absent).unwrap()]
}

async fn set_quota(pool: &PgPool, slug: &str, column: &str, limit: i32) {
    sqlx::query(&format!(
        "INSERT INTO tenant_quotas (tenant_id, {column}, updated_at, updated_by)
         VALUES ($1, $2, now(), 'test')
         ON CONFLICT (tenant_id) DO UPDATE SET {column} = $2"
    ))
    .bind(tenant_id(slug))
    .bind(limit)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_commit_over_the_resources_per_kind_quota_is_refused_and_writes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    set_quota(&pool, "acme", "resources_per_kind", 1).await;
    let service = service(&pool);
    let request = on("acme", "main");
    let first = service
        .commit(
            &request,
            Operation::Create,
            create(ResourceKind::Cluster, &cluster("a")),
        )
        .await;
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    let second = service
        .commit(
            &request,
            Operation::Create,
            create(ResourceKind::Cluster, &cluster("b")),
        )
        .await;
    let Err(ConfigServiceError::QuotaExceeded(detail)) = second else {
        panic!("{second:?}");
    };
    assert!(detail.contains("resources_per_kind"), "{detail}");
    let clusters: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM config_resources WHERE kind = 'cluster' AND branch = 'main'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(clusters, 1);
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_commit_over_the_writes_per_minute_quota_is_refused_with_a_retry_time(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    set_quota(&pool, "acme", "writes_per_minute", 1).await;
    let service = service(&pool);
    let request = on("acme", "main");
    service
        .commit(
            &request,
            Operation::Create,
            create(ResourceKind::Cluster, &cluster("a")),
        )
        .await
        .unwrap();
    let refused = service
        .commit(
            &request,
            Operation::Create,
            create(ResourceKind::Cluster, &cluster("b")),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(ConfigServiceError::RateLimited {
                retry_after_seconds: 60,
                ..
            })
        ),
        "{refused:?}"
    );
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_group_may_pin_only_a_live_branch_that_has_it(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let service = service(&pool);
    let main = on("acme", "main");
    let group = |pin: &str| json!({ "name": "web", "branch": pin });
    let missing = service
        .commit(
            &main,
            Operation::Create,
            create(ResourceKind::Group, &group("canary")),
        )
        .await;
    let Err(ConfigServiceError::Pin(detail)) = missing else {
        panic!("{missing:?}");
    };
    assert!(detail.contains("no branch `canary`"), "{detail}");

    let forked = app
        .post(
            "/api/v1/tenants/acme/branches",
            &json!({ "name": "canary" }),
        )
        .await;
    assert_eq!(forked.status, 201, "{}", forked.body);
    let without_group = service
        .commit(
            &main,
            Operation::Create,
            create(ResourceKind::Group, &group("canary")),
        )
        .await;
    let Err(ConfigServiceError::Pin(detail)) = without_group else {
        panic!("{without_group:?}");
    };
    assert!(
        detail.contains("does not exist on branch `canary`"),
        "{detail}"
    );

    service
        .commit(
            &on("acme", "canary"),
            Operation::Create,
            create(ResourceKind::Group, &json!({ "name": "web" })),
        )
        .await
        .unwrap();
    let pinned = service
        .commit(
            &main,
            Operation::Create,
            create(ResourceKind::Group, &group("canary")),
        )
        .await;
    assert!(matches!(pinned, Ok(Some(_))), "{pinned:?}");
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn an_owner_cannot_delete_what_it_shares(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    app.create_tenant("beta", "Beta").await;
    let service = service(&pool);
    let main = on("acme", "main");
    service
        .commit(
            &main,
            Operation::Create,
            create(ResourceKind::Cluster, &cluster("payments")),
        )
        .await
        .unwrap();
    let granted = app
        .post(
            "/api/v1/tenants/acme/grants",
            &json!({ "grantee": "beta", "kind": "cluster", "name": "payments" }),
        )
        .await;
    assert_eq!(granted.status, 201, "{}", granted.body);
    let delete = vec![Change::Delete {
        kind: ResourceKind::Cluster,
        name: "payments".to_owned(),
        expect: Expect::Present,
    }];
    let refused = service.commit(&main, Operation::Delete, delete).await;
    let Err(ConfigServiceError::Shared(detail)) = refused else {
        panic!("{refused:?}");
    };
    assert!(detail.contains("shared with beta"), "{detail}");
}

fn merge_patch(kind: &str, target: (&str, &str), patch: Value) -> BulkOperation {
    let (field, value) = target;
    BulkOperation {
        op: BulkOp::Patch,
        kind: kind.to_owned(),
        name: (field == "name").then(|| value.to_owned()),
        group: (field == "group").then(|| value.to_owned()),
        resource: None,
        patch: None,
        merge_patch: Some(patch),
        if_match: None,
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_bulk_patch_of_a_group_reaches_what_its_ancestors_attach(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let service = service(&pool);
    let main = on("acme", "main");
    let mut setup = create(ResourceKind::Cluster, &cluster("inherited"));
    setup.extend(create(ResourceKind::Cluster, &cluster("own")));
    setup.extend(create(ResourceKind::Cluster, &cluster("elsewhere")));
    let base = json!({ "name": "base", "resources": [{ "kind": "cluster", "name": "inherited" }] });
    let edge = json!({ "name": "edge", "parent": "base",
                       "resources": [{ "kind": "cluster", "name": "own" }] });
    setup.extend(create(ResourceKind::Group, &base));
    setup.extend(create(ResourceKind::Group, &edge));
    service.commit(&main, Operation::Bulk, setup).await.unwrap();

    let operations = [merge_patch(
        "clusters",
        ("group", "edge"),
        json!({ "connect_timeout": "7s" }),
    )];
    let outcome = service.bulk(&main, &operations, None).await.unwrap();
    assert_eq!(outcome.changes, 2);
    assert!(outcome.revision.is_some());
    let tenant = tenant_id("acme");
    for (name, timeout) in [("inherited", "7s"), ("own", "7s"), ("elsewhere", "1s")] {
        let row = efms_projections::config::get_resource(
            &pool,
            tenant,
            "main",
            ResourceKind::Cluster,
            name,
            efms_projections::config::AsOf::Now,
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(row.document["connect_timeout"], timeout, "{name}");
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_bulk_names_every_operation_at_fault_and_writes_nothing(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let service = service(&pool);
    let main = on("acme", "main");
    let create_fine = BulkOperation {
        op: BulkOp::Create,
        resource: Some(cluster("fine")),
        merge_patch: None,
        ..merge_patch("clusters", ("name", "fine"), Value::Null)
    };
    let operations = [
        create_fine,
        merge_patch("clusters", ("name", "absent"), json!({})),
        merge_patch("widgets", ("name", "x"), json!({})),
        merge_patch("clusters", ("group", "nobody"), json!({})),
    ];
    let refused = service.bulk(&main, &operations, None).await;
    let Err(BulkError::Faults(faults)) = refused else {
        panic!("{refused:?}");
    };
    let at: Vec<(usize, &str)> = faults
        .iter()
        .map(|fault| (fault.operation, fault.fault.pointer.as_str()))
        .collect();
    assert_eq!(at, [(1, "/name"), (2, "/kind"), (3, "/group")]);
    let head = efms_projections::config::head_revision(&pool, tenant_id("acme"), "main");
    assert_eq!(head.await.unwrap(), 0, "nothing was committed");
}

/// The read models of [`ReadModelsAndMetrics`], recording every position a write waits for.
struct RecordingWaits {
    inner: ReadModelsAndMetrics,
    waited: std::sync::Mutex<Vec<efms_commands::Position>>,
}

impl ConfigServices for RecordingWaits {
    fn stored_resource<'a>(
        &'a self,
        tenant_id: Uuid,
        branch: &'a str,
        kind: ResourceKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, ConfigServiceError>> {
        self.inner.stored_resource(tenant_id, branch, kind, name)
    }

    fn group_resources<'a>(
        &'a self,
        tenant_id: Uuid,
        branch: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Inherited, ConfigServiceError>> {
        self.inner.group_resources(tenant_id, branch, group)
    }

    fn head_revision<'a>(
        &'a self,
        tenant_id: Uuid,
        branch: &'a str,
    ) -> BoxFuture<'a, Result<i64, ConfigServiceError>> {
        self.inner.head_revision(tenant_id, branch)
    }

    fn wait_for_read_models(
        &self,
        position: efms_commands::Position,
        timeout: Duration,
    ) -> BoxFuture<'_, bool> {
        self.waited.lock().unwrap().push(position);
        self.inner.wait_for_read_models(position, timeout)
    }

    fn record_outcome(&self, outcome: &'static str) {
        self.inner.record_outcome(outcome);
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_write_that_changes_nothing_waits_for_the_read_models_to_show_the_commit_it_repeats(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let recording = Arc::new(RecordingWaits {
        inner: ReadModelsAndMetrics {
            pool: pool.clone(),
            config: Projector::new(pool.clone(), ConfigProjection)
                .spawn(Duration::from_millis(50), futures::future::pending()),
            metrics: Metrics::new(),
        },
        waited: std::sync::Mutex::default(),
    });
    let service = ConfigService::new(
        pool.clone(),
        CommandBus::new(pool.clone(), CommitBell::spawn(&pool)),
        Keyring::new(pool.clone(), Key::from_base64(MASTER_KEY).unwrap()),
        Limits::default(),
        recording.clone(),
    );
    let main = on("acme", "main");
    let put = || vec![Change::put(ResourceKind::Cluster, &cluster("a"), Expect::Anything).unwrap()];
    let committed = service
        .commit(&main, Operation::Replace, put())
        .await
        .unwrap()
        .expect("the first write commits");
    // The same write again, as a client retries one whose answer was lost (through another
    // replica, whose read models may not show the first yet): nothing to commit, and its answer
    // is read once the read models show the commit it repeats.
    let repeated = service
        .commit(&main, Operation::Replace, put())
        .await
        .unwrap();
    assert_eq!(repeated, None);
    assert_eq!(
        *recording.waited.lock().unwrap(),
        [committed, committed],
        "the repeat waited for the commit it repeats"
    );
}

//! The proxies' history by day (DB-005): every ACK and NACK is a row of `proxy_transitions`,
//! partitioned by day and dropped by age by efms's own upkeep; the history written before the
//! partitioning stays readable beside it until all of it is past the retention, then goes whole.

use std::time::Duration;

use chrono::{DateTime, Utc};
use efms_commands::fleet::upkeep::UpkeepSettings;
use efms_tests::fleet::eventually;
use efms_tests::TestApp;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// When `days` days ago was.
fn days_ago(days: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(days)
}

/// Records that `node` accepted `version` at `at`, in `table` (with `seq` when given: the
/// history from before the partitioning had its own).
async fn accepted(
    pool: &PgPool,
    table: &str,
    tenant: Uuid,
    version: &str,
    at: DateTime<Utc>,
    seq: Option<i64>,
) {
    let sql = match seq {
        Some(_) => format!(
            "INSERT INTO {table} (tenant_id, node_id, type_url, at, outcome, version, seq)
             OVERRIDING SYSTEM VALUE VALUES ($1, 'edge-1', $2, $3, 'acked', $4, $5)"
        ),
        None => format!(
            "INSERT INTO {table} (tenant_id, node_id, type_url, at, outcome, version)
             VALUES ($1, 'edge-1', $2, $3, 'acked', $4)"
        ),
    };
    let query = sqlx::query(&sql)
        .bind(tenant)
        .bind(CLUSTERS)
        .bind(at)
        .bind(version);
    match seq {
        Some(seq) => query.bind(seq).execute(pool).await,
        None => query.execute(pool).await,
    }
    .unwrap();
}

/// The versions of the proxy's history, newest first.
async fn history(app: &TestApp) -> Vec<String> {
    let page = app
        .get("/api/v1/tenants/acme/proxies/edge-1/history?limit=100")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["version"].as_str().unwrap().to_owned())
        .collect()
}

/// The version the proxy ran `days` days ago, as the API answers it.
async fn ran(app: &TestApp, days: i64) -> Value {
    let at = days_ago(days).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let proxy = app
        .get(&format!("/api/v1/tenants/acme/proxies/edge-1?at={at}"))
        .await;
    assert_eq!(proxy.status, 200, "{}", proxy.body);
    proxy.body["ran_at"][0]["version"].clone()
}

async fn table_exists(pool: &PgPool, table: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn the_history_is_dropped_by_day_past_its_retention_and_the_older_table_goes_whole(
    pool: PgPool,
) {
    // A history begun before the partitioning (the upgrade 15 days ago) and gone on after it.
    let app = TestApp::spawn(pool.clone()).await;
    app.create_tenant("acme", "Acme").await;
    let tenant: Uuid = efms_domain::TenantSlug::parse("acme").unwrap().tenant_id();
    sqlx::query(
        "INSERT INTO proxies (tenant_id, node_id, protocol, connected_at, last_seen_at)
         VALUES ($1, 'edge-1', 'sotw', now() - interval '200 days', now())",
    )
    .bind(tenant)
    .execute(&pool)
    .await
    .unwrap();
    let before = "proxy_transitions_before";
    accepted(&pool, before, tenant, "v0", days_ago(200), Some(-2)).await;
    accepted(&pool, before, tenant, "v1", days_ago(20), Some(-1)).await;
    sqlx::query("UPDATE retired_tables SET newest_at = now() - interval '15 days'")
        .execute(&pool)
        .await
        .unwrap();
    for days in [13, 10] {
        // The partitions those days had when they were today.
        let day = days_ago(days).date_naive();
        sqlx::query(&format!(
            "CREATE TABLE proxy_transitions_{} PARTITION OF proxy_transitions
             FOR VALUES FROM ('{day}') TO ('{}')",
            day.format("%Y%m%d"),
            day.succ_opt().unwrap()
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    accepted(&pool, "proxy_transitions", tenant, "v2", days_ago(13), None).await;
    accepted(&pool, "proxy_transitions", tenant, "v3", days_ago(10), None).await;
    accepted(&pool, "proxy_transitions", tenant, "v4", Utc::now(), None).await;

    // Both tables read as one history, in order.
    assert_eq!(history(&app).await, ["v4", "v3", "v2", "v1", "v0"]);
    assert_eq!(ran(&app, 100).await, "v0");
    assert_eq!(ran(&app, 14).await, "v1");
    drop(app);

    // Kept 12 days: the day of v2 goes, and the older table, all of it older than that, too.
    let settings = UpkeepSettings {
        proxy_history_days: 12,
        ..UpkeepSettings::default()
    };
    let app = TestApp::spawn_with_fleet(pool.clone(), settings).await;
    eventually(
        Duration::from_secs(30),
        "the older table to be dropped",
        || async { (!table_exists(&pool, before).await).then_some(()) },
    )
    .await;
    assert_eq!(history(&app).await, ["v4", "v3"]);
    assert!(
        !table_exists(
            &pool,
            &format!("proxy_transitions_{}", days_ago(13).format("%Y%m%d"))
        )
        .await
    );
    assert_eq!(ran(&app, 5).await, "v3");
    assert_eq!(
        ran(&app, 100).await,
        Value::Null,
        "nothing is known that far back now"
    );

    // The history goes on being written and read.
    accepted(&pool, "proxy_transitions", tenant, "v5", Utc::now(), None).await;
    assert_eq!(history(&app).await, ["v5", "v4", "v3"]);
    let tomorrow = (Utc::now() + chrono::Duration::days(1)).format("%Y%m%d");
    assert!(
        table_exists(&pool, &format!("proxy_transitions_{tomorrow}")).await,
        "tomorrow's partition is there before it is needed"
    );
}

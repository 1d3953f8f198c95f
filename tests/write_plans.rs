//! The configuration projector's statements that find rows by the keys a commit changes keep plans
//! of index lookups, one per key, against a large tenant: with fresh statistics, with statistics
//! taken when the table was small, and as generic plans. Each runs the projector's very statement
//! text under `EXPLAIN (FORMAT JSON)` and fails on any other way of reading the table (a sequential
//! scan, a bitmap scan over a range of the tenant, a hash of the whole tenant).

use efms_commands::Scope;
use efms_projections::config::tables::CLOSE_OPEN_VERSIONS;
use efms_projections::config::tables::DELETE_CURRENT;
use efms_tests::plans::{planning, reads_of};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// Resources in the large tenant; each has one closed and one open version.
const RESOURCES: i64 = 50_000;

const TENANT: Uuid = Uuid::from_u128(0x0e3f_5c1a_0000_4000_8000_0000_0000_0001);

/// Fills the current state and the temporal table of [`TENANT`]'s `main` with `count` clusters
/// from `first` on (two versions each: a creation closed at revision 2, a replacement open).
async fn fill(pool: &PgPool, first: i64, count: i64) {
    sqlx::query(
        r"INSERT INTO config_resource_versions (tenant_id, branch, kind, name, valid_from, valid_to,
                                                 change, document, hash, recorded_at, actor)
           SELECT $1, 'main', 'cluster', 'c-' || i, v, CASE WHEN v = 1 THEN 2 END,
                  CASE WHEN v = 1 THEN 'created' ELSE 'replaced' END,
                  jsonb_build_object('name', 'c-' || i), repeat('a', 64), now(), 'test'
           FROM generate_series($2::bigint, $2 + $3 - 1) AS i, generate_series(1, 2) AS v",
    )
    .bind(TENANT)
    .bind(first)
    .bind(count)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        r"INSERT INTO config_resources (tenant_id, branch, kind, name, document, hash, version,
                                         created_at, updated_at, updated_by)
           SELECT $1, 'main', 'cluster', 'c-' || i, jsonb_build_object('name', 'c-' || i),
                  repeat('a', 64), 2, now(), now(), 'test'
           FROM generate_series($2::bigint, $2 + $3 - 1) AS i",
    )
    .bind(TENANT)
    .bind(first)
    .bind(count)
    .execute(pool)
    .await
    .unwrap();
}

async fn analyze(pool: &PgPool) {
    sqlx::query("ANALYZE config_resource_versions, config_resources")
        .execute(pool)
        .await
        .unwrap();
}

/// The keys of a commit of `count` clusters: half existing, half new (when more than one).
fn keys(count: usize) -> (Vec<String>, Vec<String>) {
    let resources = usize::try_from(RESOURCES).expect("a small count");
    let names = (0..count)
        .map(|i| {
            if i % 2 == 0 {
                format!("c-{}", i * 7 % resources)
            } else {
                format!("new-{i}")
            }
        })
        .collect();
    (vec!["cluster".to_owned(); count], names)
}

/// The plan of `statement` with `count` keys, as the projector's transaction (role
/// `efms_system`) would run it, generic or custom.
async fn plan(pool: &PgPool, statement: &str, count: usize, generic: bool) -> Value {
    let (kinds, names) = keys(count);
    let mut tx = planning(pool, generic).await;
    let explain = format!("EXPLAIN (FORMAT JSON) {statement}");
    let query = sqlx::query_scalar::<_, Value>(&explain)
        .bind(TENANT)
        .bind("main");
    let query = if statement == CLOSE_OPEN_VERSIONS {
        query.bind(3_i64)
    } else {
        query
    };
    let plan = query
        .bind(&kinds)
        .bind(&names)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    plan
}

/// Fails unless `statement` reads `table` only by one index lookup per key (`index`) and by the
/// address of the row found (TID), for a commit of one key and of 10,000.
async fn assert_key_lookups(pool: &PgPool, statement: &str, table: &str, index: &str, when: &str) {
    for count in [1, 10_000] {
        for generic in [false, true] {
            let plan = plan(pool, statement, count, generic).await;
            let reads = reads_of(&plan, table);
            let by_key = reads
                .iter()
                .filter(|(node, used)| node == "Index Scan" && used.as_deref() == Some(index))
                .count();
            let by_address = reads.iter().filter(|(node, _)| node == "Tid Scan").count();
            assert!(
                by_key == 1 && by_address == 1 && reads.len() == 2,
                "{table} read otherwise than by key and address ({when}, {count} keys, \
                 generic plan: {generic}): {reads:?}\n{plan:#}"
            );
        }
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn closing_open_versions_and_deleting_current_rows_look_up_each_key_in_a_large_tenant(
    pool: PgPool,
) {
    // Statistics taken while the tenant was small, then the tenant grows.
    fill(&pool, 0, 10).await;
    analyze(&pool).await;
    fill(&pool, 10, RESOURCES - 10).await;
    let cases = [
        (
            CLOSE_OPEN_VERSIONS,
            "config_resource_versions",
            "config_resource_versions_open",
        ),
        (DELETE_CURRENT, "config_resources", "config_resources_pkey"),
    ];
    for (statement, table, index) in cases {
        assert_key_lookups(&pool, statement, table, index, "stale statistics").await;
    }
    analyze(&pool).await;
    for (statement, table, index) in cases {
        assert_key_lookups(&pool, statement, table, index, "fresh statistics").await;
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn the_lookups_hold_in_a_large_tenant_the_tables_were_never_analyzed_with(pool: PgPool) {
    // A table that grew faster than autovacuum analyzes it has no statistics at all.
    fill(&pool, 0, RESOURCES).await;
    let cases = [
        (
            CLOSE_OPEN_VERSIONS,
            "config_resource_versions",
            "config_resource_versions_open",
        ),
        (DELETE_CURRENT, "config_resources", "config_resources_pkey"),
    ];
    for (statement, table, index) in cases {
        assert_key_lookups(&pool, statement, table, index, "no statistics").await;
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn closing_open_versions_closes_exactly_the_changed_resources(pool: PgPool) {
    fill(&pool, 0, 100).await;
    let mut tx = Scope::System.begin(&pool).await.unwrap();
    let closed = sqlx::query(CLOSE_OPEN_VERSIONS)
        .bind(TENANT)
        .bind("main")
        .bind(3_i64)
        .bind(vec!["cluster", "cluster", "cluster"])
        .bind(vec!["c-1", "c-42", "absent"])
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    tx.commit().await.unwrap();
    assert_eq!(closed, 2);
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM config_resource_versions WHERE valid_to = 3 ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(open, ["c-1", "c-42"]);
}

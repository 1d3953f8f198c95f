//! The fleet's statements run on every agent report keep plans of key lookups in a tenant of
//! 20,000 containers, with statistics and without (a table that grew faster than it was analyzed):
//! a report must never cost a read of the tenant's whole fleet, nor a projection batch a read of
//! every VM.

use efms_projections::fleet::queries::CONTAINERS_ELSEWHERE;
use efms_projections::fleet::{BUMP_VERSIONS, COUNT_LIVE};
use efms_tests::plans::{planning, reads_of};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0x0f1e_e700_0000_4000_8000_0000_0000_0001);

/// 1,000 VMs of 20 containers each.
async fn fill(pool: &PgPool) {
    sqlx::query(
        r"INSERT INTO containers (tenant_id, container_id, vm_name, name, image, state, health,
                                  restart_count, limits, ports, labels, first_seen_at, updated_at,
                                  document)
          SELECT $1, encode(sha256(i::text::bytea), 'hex'), 'vm-' || (i / 20), 'envoy-' || i,
                 'envoy:1', 'running', 'healthy', 0, '{}', '[]', '{}', now(), now(), '{}'
          FROM generate_series(1, 20000) AS i",
    )
    .bind(TENANT)
    .execute(pool)
    .await
    .unwrap();
}

async fn plan(pool: &PgPool, ids: usize, generic: bool) -> Value {
    let ids: Vec<String> = (1..=ids).map(|i| format!("{:064x}", i * 7919)).collect();
    let mut tx = planning(pool, generic).await;
    let plan =
        sqlx::query_scalar::<_, Value>(&format!("EXPLAIN (FORMAT JSON) {CONTAINERS_ELSEWHERE}"))
            .bind(TENANT)
            .bind("vm-1")
            .bind(&ids)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    plan
}

async fn assert_key_lookups(pool: &PgPool, when: &str) {
    for ids in [1, 20] {
        for generic in [false, true] {
            let plan = plan(pool, ids, generic).await;
            let reads = reads_of(&plan, "containers");
            assert!(
                reads.len() == 1
                    && reads[0].0 == "Index Scan"
                    && reads[0].1.as_deref() == Some("containers_pkey"),
                "containers read otherwise than by key ({when}, {ids} ids, generic plan: \
                 {generic}): {reads:?}\n{plan:#}"
            );
        }
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn checking_a_reports_containers_against_other_vms_looks_up_each_id(pool: PgPool) {
    fill(&pool).await;
    assert_key_lookups(&pool, "never analyzed").await;
    sqlx::query("ANALYZE containers")
        .execute(&pool)
        .await
        .unwrap();
    assert_key_lookups(&pool, "analyzed").await;
}

/// 1,000 VMs.
async fn fill_vms(pool: &PgPool) {
    sqlx::query(
        r"INSERT INTO vms (tenant_id, name, state, state_since, registered_at, registered_by,
                           version, updated_at)
          SELECT $1, 'vm-' || i, 'ready', now(), now(), 'test', 1, now()
          FROM generate_series(1, 1000) AS i",
    )
    .bind(TENANT)
    .execute(pool)
    .await
    .unwrap();
}

/// How `statement` reads `vms` when it touches `count` VMs (its fourth parameter, when it has
/// one, is a time; its third a number).
async fn vm_update_reads(
    pool: &PgPool,
    statement: &str,
    count: usize,
    generic: bool,
) -> (Vec<(String, Option<String>)>, Value) {
    let tenants = vec![TENANT; count];
    let names: Vec<String> = (1..=count).map(|i| format!("vm-{}", i * 37)).collect();
    let mut tx = planning(pool, generic).await;
    let explain = format!("EXPLAIN (FORMAT JSON) {statement}");
    let query = sqlx::query_scalar::<_, Value>(&explain)
        .bind(&tenants)
        .bind(&names);
    let query = if statement.contains("$4") {
        query
            .bind(vec![2_i64; count])
            .bind(vec![chrono::Utc::now(); count])
    } else {
        query.bind(vec![1_i32; count])
    };
    let plan = query.fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    (reads_of(&plan, "vms"), plan)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_projection_batch_updates_its_vms_by_key_whatever_the_fleets_size(pool: PgPool) {
    fill_vms(&pool).await;
    for when in ["never analyzed", "analyzed"] {
        if when == "analyzed" {
            sqlx::query("ANALYZE vms").execute(&pool).await.unwrap();
        }
        for statement in [BUMP_VERSIONS, COUNT_LIVE] {
            for (count, generic) in [(1, false), (30, false), (30, true)] {
                let (reads, plan) = vm_update_reads(&pool, statement, count, generic).await;
                let by_key = |(node, index): &(String, Option<String>)| {
                    (node == "Index Scan" && index.as_deref() == Some("vms_pkey"))
                        || node == "Tid Scan"
                };
                assert!(
                    reads.len() == 2 && reads.iter().all(by_key),
                    "vms read otherwise than by key ({when}, {count} VMs, generic plan: \
                     {generic}): {reads:?}\n{plan:#}"
                );
            }
        }
    }
}

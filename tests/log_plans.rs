//! A replay's read of the log by aggregate type (`efms_commands::log::READ_BY_TYPE`, in a
//! transaction set by `read_in_commit_order`) keeps one plan whatever the log's statistics say,
//! none included (a log that grew faster than autovacuum looks): the commit-order index of each
//! partition, merged in order and read up to the batch's limit. Reading the type's rows through
//! the primary key and sorting them for every batch took a replay of a million events from about
//! 90 s to more than 10 minutes.

use efms_commands::log::{read_in_commit_order, READ_BY_TYPE};
use efms_tests::plans::planning;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0x0e3f_5c1a_0000_4000_8000_0000_0000_0002);

/// Every `(node type, index)` of the plan's nodes that read a partition of `events`, and whether a
/// node sorts.
fn reads_and_sorts(plan: &Value, reads: &mut Vec<(String, Option<String>)>, sorts: &mut bool) {
    match plan {
        Value::Array(items) => items
            .iter()
            .for_each(|item| reads_and_sorts(item, reads, sorts)),
        Value::Object(node) => {
            let node_type = node.get("Node Type").and_then(Value::as_str);
            *sorts |= matches!(node_type, Some("Sort" | "Incremental Sort"));
            let relation = node.get("Relation Name").and_then(Value::as_str);
            if let (Some(node_type), Some(relation)) = (node_type, relation) {
                if relation.starts_with("events_p") {
                    let index = node.get("Index Name").and_then(Value::as_str);
                    reads.push((node_type.to_owned(), index.map(str::to_owned)));
                }
            }
            node.values()
                .for_each(|value| reads_and_sorts(value, reads, sorts));
        }
        _ => {}
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn reading_the_log_by_type_follows_the_commit_order_index_with_or_without_statistics(
    pool: PgPool,
) {
    // 200,000 events, one in 20,000 of a rare type.
    sqlx::query(
        "INSERT INTO events (tenant_id, aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, event_id, actor)
         SELECT $1, CASE WHEN i % 20000 = 0 THEN 'tenant' ELSE 'config' END, 'a-' || i, 1, 'E',
                '1', '{}', gen_random_uuid(), 'test'
         FROM generate_series(1, 200000) AS i",
    )
    .bind(TENANT)
    .execute(&pool)
    .await
    .unwrap();
    for analyzed in [false, true] {
        if analyzed {
            sqlx::query("ANALYZE events").execute(&pool).await.unwrap();
        }
        for generic in [false, true] {
            for aggregate_type in ["config", "tenant"] {
                let mut tx = planning(&pool, generic).await;
                read_in_commit_order(&mut tx).await.unwrap();
                let plan: Value =
                    sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {READ_BY_TYPE}"))
                        .bind(aggregate_type)
                        .bind("0")
                        .bind(0_i64)
                        .bind(i64::MAX.to_string())
                        .bind(i64::MAX)
                        .bind(5000_i64)
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                tx.rollback().await.unwrap();
                let (mut reads, mut sorts) = (Vec::new(), false);
                reads_and_sorts(&plan, &mut reads, &mut sorts);
                let by_commit_order = !reads.is_empty()
                    && reads.iter().all(|(node, index)| {
                        node == "Index Scan"
                            && index
                                .as_deref()
                                .is_some_and(|name| name.ends_with("_tx_id_global_position_idx"))
                    });
                assert!(
                    by_commit_order && !sorts,
                    "{aggregate_type} (analyzed: {analyzed}, generic: {generic}): \
                     {reads:?}, sorts: {sorts}\n{plan:#}"
                );
            }
        }
    }
}

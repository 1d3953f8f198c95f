//! Reading Postgres plans (`EXPLAIN (FORMAT JSON)`) in tests that pin how a statement reads a table.

use efms_commands::Scope;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

/// A transaction to plan statements in, with generic plans forced when `generic` (what a prepared
/// statement gets once the planner stops planning it for its parameters).
pub async fn planning(pool: &PgPool, generic: bool) -> Transaction<'static, Postgres> {
    let mut tx = Scope::System.begin(pool).await.unwrap();
    if generic {
        sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx
}

/// Every `(node type, index)` of `plan` that reads `table` (writes to it left out).
pub fn reads_of(plan: &Value, table: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    collect(plan, table, &mut out);
    out
}

fn collect(plan: &Value, table: &str, out: &mut Vec<(String, Option<String>)>) {
    match plan {
        Value::Array(items) => items.iter().for_each(|item| collect(item, table, out)),
        Value::Object(node) => {
            let node_type = node.get("Node Type").and_then(Value::as_str);
            let relation = node.get("Relation Name").and_then(Value::as_str);
            if let (Some(node_type), Some(relation)) = (node_type, relation) {
                if relation == table && node_type != "ModifyTable" {
                    let index = node.get("Index Name").and_then(Value::as_str);
                    out.push((node_type.to_owned(), index.map(str::to_owned)));
                }
            }
            node.values().for_each(|value| collect(value, table, out));
        }
        _ => {}
    }
}

//! `commit` events: a `Committed` header of the log with the resources its transaction changed
//! (at most [`MAX_LISTED_CHANGES`] listed, all counted).

use efms_domain::config::ConfigEvent;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use super::LogRow;

/// The most changed resources a `commit` event lists (it counts them all).
pub const MAX_LISTED_CHANGES: i64 = 100;

/// The resources changed by the commits `headers` announce: per header, what a `commit` event
/// lists and how many there are in all.
pub(super) async fn changes_of(
    tx: &mut PgConnection,
    tenant_id: Uuid,
    headers: &[&LogRow],
) -> Result<Vec<(Vec<Value>, i64)>, sqlx::Error> {
    let transactions: Vec<String> = headers.iter().map(|h| h.tx_id.clone()).collect();
    let changes = sqlx::query!(
        r#"SELECT tx_id::text AS "tx_id!", aggregate_id AS "branch!", event_type AS "event_type!",
                  kind, name, total AS "total!"
           FROM (SELECT tx_id, aggregate_id, event_type,
                        payload -> event_type ->> 'kind' AS kind,
                        payload -> event_type ->> 'name' AS name,
                        row_number() OVER (PARTITION BY tx_id, aggregate_id ORDER BY global_position) AS n,
                        count(*) OVER (PARTITION BY tx_id, aggregate_id) AS total
                 FROM events
                 WHERE tenant_id = $1 AND aggregate_type = 'config'
                   AND tx_id = ANY($2::text[]::xid8[])
                   AND event_type IN ('ResourceCreated', 'ResourceReplaced', 'ResourceDeleted')) e
           WHERE n <= $3
           ORDER BY tx_id, aggregate_id, n"#,
        tenant_id,
        &transactions,
        MAX_LISTED_CHANGES,
    )
    .fetch_all(tx)
    .await?;
    Ok(headers
        .iter()
        .map(|header| {
            let of_commit: Vec<_> = changes
                .iter()
                .filter(|c| c.tx_id == header.tx_id && c.branch == header.aggregate_id)
                .collect();
            let total = of_commit.first().map_or(0, |c| c.total);
            let listed = of_commit
                .iter()
                .map(|c| {
                    json!({
                        "kind": c.kind,
                        "name": c.name,
                        "change": match c.event_type.as_str() {
                            "ResourceCreated" => "created",
                            "ResourceReplaced" => "replaced",
                            _ => "deleted",
                        },
                    })
                })
                .collect();
            (listed, total)
        })
        .collect())
}

/// The payload of the `commit` event `header` announces, with its `changes`; `None` for a header
/// that does not read as a commit.
pub(super) fn commit_payload(
    header: &LogRow,
    (changes, total): (Vec<Value>, i64),
) -> Option<Value> {
    let Ok(ConfigEvent::Committed {
        revision,
        message,
        operation,
        merged,
    }) = serde_json::from_value::<ConfigEvent>(header.payload.clone())
    else {
        return None;
    };
    let mut payload = json!({
        "branch": header.aggregate_id,
        "revision": revision,
        "actor": header.actor,
        "operation": operation.to_string(),
        "changes": changes,
        "changes_total": total,
    });
    if let Some(message) = message {
        payload["message"] = json!(message);
    }
    if let Some(merged) = merged {
        payload["merged"] = json!({ "branch": merged.branch, "revision": merged.revision });
    }
    Some(payload)
}

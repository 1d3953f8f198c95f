//! The tenant event feed, read (ADR 0014): `commit` events straight from the log, each a
//! `Committed` header with the resources its transaction changed, in commit order and only below
//! the oldest running transaction, so a page never skips an event that commits late.

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use efms_domain::config::ConfigEvent;
use efms_domain::feed::{FeedPosition, Source};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The most changed resources a `commit` event lists (it counts them all).
pub const MAX_LISTED_CHANGES: i64 = 100;

/// One event of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    /// Its place (the next read starts after it).
    pub at: FeedPosition,
    /// Its type.
    pub kind: &'static str,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// What happened.
    pub payload: Value,
}

/// Up to `limit` of `tenant_id`'s events after `after`, in order.
pub async fn read_feed(
    pool: &PgPool,
    tenant_id: Uuid,
    after: FeedPosition,
    limit: i64,
) -> Result<Vec<FeedEvent>, sqlx::Error> {
    // Log events sort before facts of the same transaction: after a fact, the log resumes at the
    // next transaction.
    let (tx_id, position) = match after.source {
        Source::Log => (after.tx_id, after.position),
        Source::Facts => (after.tx_id, i64::MAX),
    };
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let headers = sqlx::query!(
        r#"SELECT aggregate_id, payload, actor, recorded_at, global_position, tx_id::text AS "tx_id!"
           FROM events
           WHERE tenant_id = $1 AND aggregate_type = 'config' AND event_type = 'Committed'
             AND (tx_id, global_position) > ($2::text::xid8, $3::bigint)
             AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
           ORDER BY tx_id, global_position
           LIMIT $4"#,
        tenant_id,
        tx_id.to_string(),
        position,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
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
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut events = Vec::with_capacity(headers.len());
    for header in headers {
        let Ok(ConfigEvent::Committed {
            revision,
            message,
            operation,
            merged,
        }) = serde_json::from_value::<ConfigEvent>(header.payload)
        else {
            continue;
        };
        let of_commit: Vec<_> = changes
            .iter()
            .filter(|c| c.tx_id == header.tx_id && c.branch == header.aggregate_id)
            .collect();
        let total = of_commit.first().map_or(0, |c| c.total);
        let listed: Vec<Value> = of_commit
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
        let mut payload = json!({
            "branch": header.aggregate_id,
            "revision": revision,
            "actor": header.actor,
            "operation": operation.to_string(),
            "changes": listed,
            "changes_total": total,
        });
        if let Some(message) = message {
            payload["message"] = json!(message);
        }
        if let Some(merged) = merged {
            payload["merged"] = json!({ "branch": merged.branch, "revision": merged.revision });
        }
        events.push(FeedEvent {
            at: FeedPosition {
                tx_id: header.tx_id.parse().unwrap_or(i64::MAX),
                source: Source::Log,
                position: header.global_position,
            },
            kind: "commit",
            time: header.recorded_at,
            payload,
        });
    }
    Ok(events)
}

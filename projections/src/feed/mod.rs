//! The tenant event feed, read (ADR 0014). Two sources, merged in one order:
//!
//! - the log: `commit` events (a `Committed` header with the resources its transaction changed),
//!   and the fleet's `vm.state`, `container.lifecycle`, `job.finished` (container operations) and
//!   `rollout.progress`;
//! - `feed_facts`: `proxy.status`, `job.finished` (bulk jobs), `alert.fired` and
//!   `alert.resolved`, written by triggers in the transaction of the change they report.
//!
//! Both are read in `(tx_id, source, position)` order below one snapshot line, the oldest running
//! transaction, so a page never skips an event that commits late.

mod commits;
mod fleet;

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use efms_domain::feed::{FeedPosition, Source};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub use commits::MAX_LISTED_CHANGES;

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

/// An event of the log the feed shows.
#[derive(Debug)]
pub(crate) struct LogRow {
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: Value,
    actor: String,
    recorded_at: DateTime<Utc>,
    global_position: i64,
    tx_id: String,
}

/// The types of `feed_facts` rows the feed serves.
const FACT_TYPES: [&str; 4] = [
    "proxy.status",
    "job.finished",
    "alert.fired",
    "alert.resolved",
];

/// Whether `at` lies ahead of every transaction begun so far: a cursor no feed of this database
/// handed out (one of a restored older copy, say).
pub async fn is_ahead(pool: &PgPool, at: FeedPosition) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT $1::bigint >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS "ahead!""#,
        at.tx_id
    )
    .fetch_one(pool)
    .await
}

/// Whether facts of `tenant_id` after `at` have aged out of the feed (`EFMS_FEED_RETENTION_DAYS`):
/// reading on from `at` would miss them.
pub async fn has_aged_out(
    pool: &PgPool,
    tenant_id: Uuid,
    at: FeedPosition,
) -> Result<bool, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let aged_out = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM feed_horizons
                        WHERE tenant_id = $1
                          AND (tx_id::text::bigint, 1, position) > ($2, $3, $4))",
    )
    .bind(tenant_id)
    .bind(at.tx_id)
    .bind(at.source as i32)
    .bind(at.position)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(aged_out)
}

/// Up to `limit` of `tenant_id`'s events after `after`, in order.
pub async fn read_feed(
    pool: &PgPool,
    tenant_id: Uuid,
    after: FeedPosition,
    limit: i64,
) -> Result<Vec<FeedEvent>, sqlx::Error> {
    // Log events sort before facts of the same transaction: after a fact, the log resumes at the
    // next transaction; after a log event, the facts of its own transaction still follow.
    let (log_tx, log_position, facts_position) = match after.source {
        Source::Log => (after.tx_id, after.position, -1),
        Source::Facts => (after.tx_id, i64::MAX, after.position),
    };
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    // One line for both sources: each statement would otherwise take a snapshot of its own.
    let line =
        sqlx::query_scalar!(r#"SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS "line!""#)
            .fetch_one(&mut *tx)
            .await?;
    let rows = sqlx::query_as!(
        LogRow,
        r#"SELECT aggregate_type, aggregate_id, event_type, payload, actor, recorded_at,
                  global_position, tx_id::text AS "tx_id!"
           FROM events
           WHERE tenant_id = $1
             AND ((aggregate_type = 'config' AND event_type = 'Committed')
                  OR (aggregate_type = 'vm' AND event_type = ANY($6))
                  OR aggregate_type = 'rollout')
             AND (tx_id, global_position) > ($2::text::xid8, $3::bigint)
             AND tx_id < $5::text::xid8
           ORDER BY tx_id, global_position
           LIMIT $4"#,
        tenant_id,
        log_tx.to_string(),
        log_position,
        limit,
        line,
        &fleet::VM_EVENT_TYPES.map(str::to_owned),
    )
    .fetch_all(&mut *tx)
    .await?;
    let facts = sqlx::query!(
        r#"SELECT type AS kind, at, payload, position, tx_id::text AS "tx_id!"
           FROM feed_facts
           WHERE tenant_id = $1
             AND (tx_id, position) > ($2::text::xid8, $3::bigint)
             AND tx_id < $5::text::xid8
           ORDER BY tx_id, position
           LIMIT $4"#,
        tenant_id,
        after.tx_id.to_string(),
        facts_position,
        limit,
        line,
    )
    .fetch_all(&mut *tx)
    .await?;
    let headers: Vec<&LogRow> = rows
        .iter()
        .filter(|row| row.aggregate_type == "config")
        .collect();
    let mut changes = commits::changes_of(&mut tx, tenant_id, &headers)
        .await?
        .into_iter();
    tx.commit().await?;
    let mut events = Vec::with_capacity(rows.len() + facts.len());
    for row in &rows {
        let shown = match row.aggregate_type.as_str() {
            "config" => changes
                .next()
                .and_then(|changed| commits::commit_payload(row, changed))
                .map(|payload| ("commit", payload)),
            "vm" => fleet::vm_event(row),
            _ => fleet::rollout_event(row),
        };
        let at = FeedPosition {
            tx_id: row.tx_id.parse().unwrap_or(i64::MAX),
            source: Source::Log,
            position: row.global_position,
        };
        // An event that does not read still moves the reader past it.
        let (kind, payload) = shown.unwrap_or(("", Value::Null));
        events.push(FeedEvent {
            at,
            kind,
            time: row.recorded_at,
            payload,
        });
    }
    for fact in facts {
        events.push(FeedEvent {
            at: FeedPosition {
                tx_id: fact.tx_id.parse().unwrap_or(i64::MAX),
                source: Source::Facts,
                position: fact.position,
            },
            kind: FACT_TYPES
                .iter()
                .find(|known| **known == fact.kind)
                .copied()
                .unwrap_or(""),
            time: fact.at,
            payload: fact.payload,
        });
    }
    events.sort_by_key(|event| event.at);
    events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(events)
}

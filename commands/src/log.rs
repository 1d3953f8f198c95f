//! The commit-ordered log: how projections read every event exactly once (ADR 0002).
//!
//! Global positions come from a sequence, so they are handed out in insertion order but become
//! visible in commit order: a reader that simply followed positions would skip an event whose slow
//! transaction commits after a faster, later one, and never come back for it. Instead a reader only
//! reads rows written by transactions older than every transaction still running
//! (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`): those transactions are over, so no row can
//! ever appear below that line again. Ordered by `(tx_id, global_position)`, that line only moves
//! forward, and a checkpoint of the last `(tx_id, global_position)` read is exact.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use cqrs_es::persist::PersistenceError;

/// A place in the commit-ordered log: the writing transaction, then the event's global position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The id (`xid8`) of the transaction that wrote the event.
    pub tx_id: i64,
    /// The event's global position (unique across the log).
    pub global_position: i64,
}

impl Position {
    /// The position before the first event.
    pub const START: Position = Position {
        tx_id: 0,
        global_position: 0,
    };

    /// Builds a position from the text form of an `xid8` and a global position.
    pub fn from_columns(tx_id: &str, global_position: i64) -> Result<Self, PersistenceError> {
        let tx_id = tx_id.parse::<i64>().map_err(|error| {
            PersistenceError::UnknownError(format!("transaction id `{tx_id}`: {error}").into())
        })?;
        Ok(Self {
            tx_id,
            global_position,
        })
    }
}

/// An event as stored in the log, with everything the log knows about it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Where it stands in the commit-ordered log.
    pub position: Position,
    /// The tenant whose stream it belongs to.
    pub tenant_id: Uuid,
    /// The aggregate type (`tenant`, ...).
    pub aggregate_type: String,
    /// The aggregate id within the tenant.
    pub aggregate_id: String,
    /// Its place in its stream, from 1.
    pub sequence: i64,
    /// The event's type name.
    pub event_type: String,
    /// The version of the event's schema.
    pub event_version: String,
    /// The event itself.
    pub payload: Value,
    /// cqrs-es metadata: strings such as the actor and the commit message.
    pub metadata: Value,
    /// The event's unique id.
    pub event_id: Uuid,
    /// Who caused it.
    pub actor: String,
    /// When its transaction began.
    pub recorded_at: DateTime<Utc>,
}

/// Reads up to `limit` events after `after`, in commit order, from the transactions that are over.
///
/// `conn` must be in the system scope ([`crate::Scope::System`]) to see every tenant, or in a tenant
/// scope to see one. The caller stores the last returned position as its checkpoint; an empty answer
/// means nothing more is readable now.
/// With `payloads_of`, only events of that aggregate type carry their payload (others carry
/// `null`): a reader that ignores other aggregates neither fetches nor parses them.
pub async fn read_after(
    conn: &mut PgConnection,
    after: Position,
    limit: i64,
    payloads_of: Option<&str>,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let rows = sqlx::query_as!(
        EventRow,
        r#"SELECT tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
                  CASE WHEN $4::text IS NULL OR aggregate_type = $4 THEN payload
                       ELSE 'null'::jsonb END AS "payload!",
                  metadata, event_id, actor, recorded_at, global_position,
                  tx_id::text AS "tx_id!"
           FROM events
           WHERE (tx_id, global_position) > ($1::text::xid8, $2::bigint)
             AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
           ORDER BY tx_id, global_position
           LIMIT $3"#,
        after.tx_id.to_string(),
        after.global_position,
        limit,
        payloads_of,
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(EventRow::recorded).collect()
}

/// Where the stream `(aggregate_type, aggregate_id)` of `tenant_id` ends in the log: the position
/// of its last event, `None` for a stream without events. Found through the primary key.
pub async fn stream_end(
    pool: &sqlx::PgPool,
    tenant_id: Uuid,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<Position>, sqlx::Error> {
    let mut tx = crate::Scope::Tenant(tenant_id).begin(pool).await?;
    let last: Option<(String, i64)> = sqlx::query_as(
        "SELECT tx_id::text, global_position FROM events
         WHERE tenant_id = $1 AND aggregate_type = $2 AND aggregate_id = $3
         ORDER BY sequence DESC LIMIT 1",
    )
    .bind(tenant_id)
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    last.map(|(tx_id, global_position)| Position::from_columns(&tx_id, global_position))
        .transpose()
        .map_err(|error| sqlx::Error::Decode(Box::new(error)))
}

/// Reads up to `limit` of `tenant_id`'s events after `after` and up to `upto` (included), in
/// commit order: a rebuild of one tenant's read models up to where they stand.
pub async fn read_tenant_after(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    (after, upto): (Position, Position),
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let rows = sqlx::query_as!(
        EventRow,
        r#"SELECT tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
                  payload, metadata, event_id, actor, recorded_at, global_position,
                  tx_id::text AS "tx_id!"
           FROM events
           WHERE tenant_id = $1
             AND (tx_id, global_position) > ($2::text::xid8, $3::bigint)
             AND (tx_id, global_position) <= ($4::text::xid8, $5::bigint)
           ORDER BY tx_id, global_position
           LIMIT $6"#,
        tenant_id,
        after.tx_id.to_string(),
        after.global_position,
        upto.tx_id.to_string(),
        upto.global_position,
        limit,
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(EventRow::recorded).collect()
}

/// The end of the readable log: the position of the last event whose transaction is older than
/// every running one ([`Position::START`] when there is none). No event can be added at or before
/// it any more, so a read up to it always gives the same events.
pub async fn readable_end(conn: &mut PgConnection) -> Result<Position, sqlx::Error> {
    let last: Option<(String, i64)> = sqlx::query_as(
        "SELECT tx_id::text, global_position
         FROM events
         WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY tx_id DESC, global_position DESC
         LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    match last {
        None => Ok(Position::START),
        Some((tx_id, global_position)) => Position::from_columns(&tx_id, global_position)
            .map_err(|error| sqlx::Error::Decode(Box::new(error))),
    }
}

/// Makes the transaction on `conn` read the log by the commit-order index, whatever the log's
/// statistics say: without them (a log that grew faster than autovacuum looks) a planner facing
/// a range of positions may choose to read the range and sort it for every batch of a long read,
/// a sort of up to the whole log each time. With sorting ruled out, reading the index in order is
/// the plan left. For a transaction that only reads the log (a replay's reader).
pub async fn read_in_commit_order(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL enable_sort = off")
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// The statement of [`read_aggregate_type_after`] (public for the test that pins its plan).
pub const READ_BY_TYPE: &str =
    "SELECT tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version,
            CASE WHEN aggregate_type = $1 THEN payload ELSE 'null'::jsonb END AS payload,
            metadata, event_id, actor, recorded_at, global_position,
            tx_id::text AS tx_id
     FROM events
     WHERE (tx_id, global_position) > ($2::text::xid8, $3::bigint)
       AND (tx_id, global_position) <= ($4::text::xid8, $5::bigint)
     -- The table's columns: the output's `tx_id` is text, whose order is not the log's.
     ORDER BY events.tx_id, events.global_position
     LIMIT $6";

/// Reads up to `limit` events of every tenant after `after` and up to `upto` (included), in commit
/// order, with payloads only of `aggregate_type` (others carry `null`): a rebuild of a read model
/// that ignores other aggregates neither fetches nor parses their payloads.
///
/// The type is not a condition of the statement: with one, a planner without statistics on the
/// log (or with ones saying the type is rare) reads the type's rows through the primary key and
/// sorts all of them for every batch. Run it after [`read_in_commit_order`].
pub async fn read_aggregate_type_after(
    conn: &mut PgConnection,
    aggregate_type: &str,
    (after, upto): (Position, Position),
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let rows: Vec<EventRow> = sqlx::query_as(READ_BY_TYPE)
        .bind(aggregate_type)
        .bind(after.tx_id.to_string())
        .bind(after.global_position)
        .bind(upto.tx_id.to_string())
        .bind(upto.global_position)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter().map(EventRow::recorded).collect()
}

/// An event as a log read selects it.
#[derive(sqlx::FromRow)]
struct EventRow {
    tenant_id: Uuid,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Value,
    metadata: Value,
    event_id: Uuid,
    actor: String,
    recorded_at: DateTime<Utc>,
    global_position: i64,
    tx_id: String,
}

impl EventRow {
    fn recorded(self) -> Result<RecordedEvent, sqlx::Error> {
        Ok(RecordedEvent {
            position: Position::from_columns(&self.tx_id, self.global_position)
                .map_err(|error| sqlx::Error::Decode(Box::new(error)))?,
            tenant_id: self.tenant_id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: self.payload,
            metadata: self.metadata,
            event_id: self.event_id,
            actor: self.actor,
            recorded_at: self.recorded_at,
        })
    }
}

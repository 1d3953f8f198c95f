//! The commit-ordered log: how projections read every event exactly once (ADR 0002).
//!
//! Global positions come from a sequence, so they are handed out in insertion order but become
//! visible in commit order: a reader that simply followed positions would skip an event whose slow
//! transaction commits after a faster, later one, and never come back for it. Instead a reader only
//! reads rows written by transactions older than every transaction still running
//! (`tx_id < pg_snapshot_xmin(pg_current_snapshot())`): those transactions are over, so no row can
//! ever appear below that line again. Ordered by `(tx_id, global_position)`, that line only moves
//! forward, and a checkpoint of the last `(tx_id, global_position)` read is exact.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use cqrs_es::persist::PersistenceError;

/// The NOTIFY channel that tells log readers a commit landed.
pub const EVENTS_CHANNEL: &str = "efms_events";

/// The shortest time between two rings of a [`CommitBell`].
pub const RING_INTERVAL: Duration = Duration::from_millis(5);

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

/// An event as a log read selects it.
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

/// Rings the log readers' doorbell (NOTIFY on [`EVENTS_CHANNEL`]) after commits, from outside the
/// writing transactions.
///
/// A NOTIFY inside a writing transaction would make every commit wait for a database-wide lock held
/// through the WAL flush of every other notifying commit. Here commits only drop a token into a
/// one-slot queue; a background task sends one NOTIFY per token and then rests for
/// [`RING_INTERVAL`], so however fast commits come, readers are woken at most every few
/// milliseconds and the bell costs the database next to nothing. The task ends when every clone of
/// the bell is dropped.
#[derive(Debug, Clone)]
pub struct CommitBell {
    pending: tokio::sync::mpsc::Sender<()>,
}

impl CommitBell {
    /// Starts the task that sends the notifications over `pool`.
    pub fn spawn(pool: &PgPool) -> Self {
        let (pending, mut rings) = tokio::sync::mpsc::channel::<()>(1);
        let pool = pool.clone();
        tokio::spawn(async move {
            while rings.recv().await.is_some() {
                if let Err(error) = notify(&pool).await {
                    // Readers poll as well: a lost ring delays them by one polling interval.
                    tracing::warn!(%error, "cannot notify log readers of a commit");
                }
                tokio::time::sleep(RING_INTERVAL).await;
            }
        });
        Self { pending }
    }

    /// Records that a commit landed; never waits.
    pub fn ring(&self) {
        // A full queue already holds a ring that will be sent after this commit: nothing is lost.
        let _ = self.pending.try_send(());
    }
}

/// Sends one notification. A notifying transaction takes a transaction id and so writes a commit
/// record; it carries no data, so it need not wait for the WAL flush (the commits it announces
/// already did), which would otherwise double the flushes of every commit.
async fn notify(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool
        .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await?;
    sqlx::query!("SELECT pg_notify($1, '')", EVENTS_CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Wakes a log reader when a commit lands (LISTEN on [`EVENTS_CHANNEL`]), or after a polling
/// interval at the latest: a notification may be lost while the listening connection reconnects,
/// and a commit may only become readable once an older transaction has ended.
pub struct LogDoorbell {
    listener: Option<PgListener>,
    pool: PgPool,
    poll_interval: Duration,
}

impl LogDoorbell {
    /// A doorbell on `pool`'s database that rings at least every `poll_interval`.
    pub async fn connect(pool: &PgPool, poll_interval: Duration) -> Self {
        let mut doorbell = Self {
            listener: None,
            pool: pool.clone(),
            poll_interval,
        };
        doorbell.reconnect().await;
        doorbell
    }

    async fn reconnect(&mut self) {
        let listener = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(EVENTS_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listener {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for commits; polling only until it can");
                self.listener = None;
            }
        }
    }

    /// Waits for the next commit notification or the polling interval, whichever comes first, then
    /// swallows notifications that are already queued (one read serves them all).
    pub async fn wait(&mut self) {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(self.poll_interval).await;
            self.reconnect().await;
            return;
        };
        match tokio::time::timeout(self.poll_interval, listener.try_recv()).await {
            // A commit, the polling interval, or a dropped connection (PgListener reconnects on the
            // next call by itself): in every case the caller reads the log now.
            Err(_) | Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                self.listener = None;
                return;
            }
        }
        while listener.next_buffered().is_some() {}
    }
}

/// One `LISTEN` connection shared by every log reader of a process: a task waits on a
/// [`LogDoorbell`] and moves a counter on at each ring (and at each polling interval), which the
/// readers wait on. A process then holds one listening connection however many projections it
/// runs, which matters for small pools: each listener holds a connection of its pool for good.
#[derive(Debug, Clone)]
pub struct SharedDoorbell {
    rings: tokio::sync::watch::Receiver<u64>,
    poll_interval: Duration,
}

impl SharedDoorbell {
    /// Starts the listening task on `pool`; it ends once every reader is gone.
    pub fn spawn(pool: &PgPool, poll_interval: Duration) -> Self {
        let (ring, rings) = tokio::sync::watch::channel(0_u64);
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut doorbell = LogDoorbell::connect(&pool, poll_interval).await;
            loop {
                tokio::select! {
                    () = ring.closed() => return,
                    () = doorbell.wait() => {}
                }
                ring.send_modify(|count| *count = count.wrapping_add(1));
            }
        });
        Self {
            rings,
            poll_interval,
        }
    }

    /// Waits for the next ring, or the polling interval, whichever comes first.
    pub async fn wait(&mut self) {
        let _ = tokio::time::timeout(self.poll_interval, self.rings.changed()).await;
    }
}

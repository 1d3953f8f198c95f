//! Runs a projection over the commit-ordered log, checkpointed in the database.

use std::future::Future;
use std::time::Duration;

use efms_commands::log::{read_after, read_aggregate_type_after, read_tenant_after};
use efms_commands::{LogDoorbell, Position, RecordedEvent, Scope, SharedDoorbell};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

/// Events read and applied per transaction.
pub const BATCH_SIZE: i64 = 500;

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The event's payload does not decode as the projection expects.
    #[error("event {event_id} ({event_type}) does not decode: {source}")]
    Decode {
        /// The offending event.
        event_id: uuid::Uuid,
        /// Its type.
        event_type: String,
        /// What was wrong.
        source: serde_json::Error,
    },
    /// A read-model document could not be written or read back as JSON.
    #[error("read-model document: {0}")]
    Document(#[from] serde_json::Error),
}

/// The payload of `event` as `E` when the event belongs to aggregate type `aggregate_type`; `None`
/// for events of other aggregates, which a projection ignores.
pub fn payload_of<E: serde::de::DeserializeOwned>(
    event: &RecordedEvent,
    aggregate_type: &str,
) -> Result<Option<E>, ProjectionError> {
    if event.aggregate_type != aggregate_type {
        return Ok(None);
    }
    E::deserialize(&event.payload)
        .map(Some)
        .map_err(|source| ProjectionError::Decode {
            event_id: event.event_id,
            event_type: event.event_type.clone(),
            source,
        })
}

/// Which events a projector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    /// Every tenant's, as far as transactions are over; payloads only of the aggregate type
    /// named.
    Log {
        /// The aggregate type whose events' payloads are read.
        payloads_of: &'static str,
    },
    /// Every tenant's events of one aggregate type, up to a position (included).
    AggregateType {
        /// The aggregate type.
        aggregate_type: &'static str,
        /// The last position read.
        upto: Position,
    },
    /// One tenant's, up to a position (included).
    Tenant {
        /// The tenant.
        tenant_id: uuid::Uuid,
        /// The last position read.
        upto: Position,
    },
}

impl Range {
    pub(crate) async fn read(
        self,
        conn: &mut PgConnection,
        after: Position,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        match self {
            Range::Log { payloads_of } => read_after(conn, after, limit, Some(payloads_of)).await,
            Range::AggregateType {
                aggregate_type,
                upto,
            } => read_aggregate_type_after(conn, aggregate_type, (after, upto), limit).await,
            Range::Tenant { tenant_id, upto } => {
                read_tenant_after(conn, tenant_id, (after, upto), limit).await
            }
        }
    }
}

/// The next batch of readable events of `range`, ending on a transaction boundary: readers of the
/// read models (snapshots, caches) must never see half of a commit, and a projection may write a
/// commit's events together. A batch holds about `batch` events ([`BATCH_SIZE`] for the
/// projector); one transaction larger than that is read whole. With the events, whether more may be readable after them (the read
/// was full).
pub(crate) async fn whole_transactions(
    conn: &mut PgConnection,
    from: Position,
    range: Range,
    batch: i64,
) -> Result<(Vec<RecordedEvent>, bool), sqlx::Error> {
    let mut events = range.read(conn, from, batch).await?;
    if i64::try_from(events.len()).unwrap_or(i64::MAX) < batch {
        return Ok((events, false));
    }
    let last_tx = events.last().expect("a full batch").position.tx_id;
    if events.first().expect("a full batch").position.tx_id != last_tx {
        // Leave the last, possibly partial, transaction to the next batch.
        events.retain(|event| event.position.tx_id != last_tx);
        return Ok((events, true));
    }
    // One transaction fills the batch: read the rest of it.
    loop {
        let after = events.last().expect("not empty").position;
        let more = range.read(conn, after, batch).await?;
        let full = i64::try_from(more.len()).unwrap_or(i64::MAX) == batch;
        let before = events.len();
        events.extend(
            more.into_iter()
                .take_while(|event| event.position.tx_id == last_tx),
        );
        if !full || events.len() - before < usize::try_from(batch).unwrap_or(usize::MAX) {
            return Ok((events, true));
        }
    }
}

/// A read model kept from the log.
pub trait Projection: Send + Sync + 'static {
    /// The checkpoint's name; unique per projection.
    const NAME: &'static str;

    /// The aggregate type whose events it reads: events of other types reach it without their
    /// payload (it ignores them).
    const AGGREGATE_TYPE: &'static str;

    /// The tables it keeps (those [`Projection::reset`] empties), which a verification compares
    /// with a rebuild.
    const TABLES: &'static [&'static str];

    /// Applies one event inside the projector's transaction (system scope). Events of aggregate
    /// types the projection does not care about must be ignored.
    fn apply(
        &self,
        tx: &mut PgConnection,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Applies a batch of events, in order, inside the projector's transaction. The default
    /// applies them one by one; a projection may write a batch with fewer statements, as long
    /// as the result is the same.
    fn apply_all(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        async move {
            for event in events {
                self.apply(tx, event).await?;
            }
            Ok(())
        }
    }

    /// What a replay carries from one batch to the next (`()` for most).
    type Replaying: Default + Send;

    /// Applies a batch during a replay. A replay runs in one transaction that nothing reads
    /// until it commits, so a projection may hold rows back across batches in `replaying` and
    /// write them in [`Projection::finish_replay`], as long as the rows at the end are those
    /// [`Projection::apply_all`] would write. The default applies the batch as the projector does.
    fn replay_all(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
        replaying: &mut Self::Replaying,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        let _ = replaying;
        self.apply_all(tx, events)
    }

    /// Writes what a replay held back, at its end.
    fn finish_replay(
        &self,
        tx: &mut PgConnection,
        replaying: Self::Replaying,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send {
        let _ = (tx, replaying);
        async { Ok(()) }
    }

    /// Empties the read model, before a rebuild from the start of the log.
    fn reset(
        &self,
        tx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;

    /// Empties the read model of one tenant, before a rebuild from that tenant's events.
    fn reset_tenant(
        &self,
        tx: &mut PgConnection,
        tenant_id: uuid::Uuid,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}

/// Drives one [`Projection`].
#[derive(Debug, Clone)]
pub struct Projector<P> {
    pool: PgPool,
    projection: P,
}

/// A running projector: where it stands, and a way to wait for it.
#[derive(Debug, Clone)]
pub struct ProjectorHandle {
    checkpoint: watch::Receiver<Position>,
}

impl ProjectorHandle {
    /// A handle over positions published by something that follows a projector.
    pub(crate) fn from_watch(checkpoint: watch::Receiver<Position>) -> Self {
        Self { checkpoint }
    }

    /// The position up to which the read model reflects the log.
    pub fn checkpoint(&self) -> Position {
        *self.checkpoint.borrow()
    }

    /// Waits for the checkpoint to move; `None` once the projector has stopped.
    pub async fn changed(&mut self) -> Option<Position> {
        self.checkpoint.changed().await.ok()?;
        Some(*self.checkpoint.borrow_and_update())
    }

    /// Waits until the read model reflects the log up to `position`, at most `timeout`.
    /// Returns whether it got there.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut checkpoint = self.checkpoint.clone();
        tokio::time::timeout(timeout, checkpoint.wait_for(|reached| *reached >= position))
            .await
            .is_ok_and(|changed| changed.is_ok())
    }
}

impl<P: Projection> Projector<P> {
    /// A projector of `projection` over `pool`'s log.
    pub fn new(pool: PgPool, projection: P) -> Self {
        Self { pool, projection }
    }

    /// Applies the next batch of readable events in one transaction with the checkpoint.
    /// Returns the new checkpoint and how many events it applied.
    ///
    /// The checkpoint row is locked for the transaction, so projectors of several replicas take
    /// turns instead of applying an event twice.
    pub async fn run_batch(&self) -> Result<(Position, usize), ProjectionError> {
        let (position, applied, _) = self.next_batch().await?;
        Ok((position, applied))
    }

    /// [`Projector::run_batch`], also telling whether more events may be readable at once.
    async fn next_batch(&self) -> Result<(Position, usize, bool), ProjectionError> {
        let mut tx = Scope::System.begin(&self.pool).await?;
        let from = lock_checkpoint(&mut tx, P::NAME).await?;
        let (events, more) = whole_transactions(
            &mut tx,
            from,
            Range::Log {
                payloads_of: P::AGGREGATE_TYPE,
            },
            BATCH_SIZE,
        )
        .await?;
        let Some(last) = events.last().map(|event| event.position) else {
            tx.rollback().await?;
            return Ok((from, 0, false));
        };
        self.projection.apply_all(&mut tx, &events).await?;
        store_checkpoint(&mut tx, P::NAME, last).await?;
        tx.commit().await?;
        Ok((last, events.len(), more))
    }

    /// The projection.
    pub(crate) fn projection(&self) -> &P {
        &self.projection
    }

    /// The database.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies batches until nothing is readable. Returns the final checkpoint.
    pub async fn catch_up(&self) -> Result<Position, ProjectionError> {
        loop {
            let (position, applied) = self.run_batch().await?;
            if applied == 0 {
                return Ok(position);
            }
        }
    }

    /// Empties the read model and rewinds the checkpoint to the start of the log, in one
    /// transaction; the next batches rebuild it.
    pub async fn reset(&self) -> Result<(), ProjectionError> {
        let mut tx = Scope::System.begin(&self.pool).await?;
        self.projection.reset(&mut tx).await?;
        sqlx::query!(
            r#"INSERT INTO projection_checkpoints (projection) VALUES ($1)
               ON CONFLICT (projection) DO UPDATE
               SET tx_id = '0'::xid8, global_position = 0, updated_at = now()"#,
            P::NAME
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs the projector in the background until `shutdown` resolves: a batch whenever the log's
    /// doorbell rings or `poll_interval` passes. It listens on a connection of its own; a process
    /// running several projectors gives them one doorbell with [`Projector::spawn_with`].
    pub fn spawn(
        self,
        poll_interval: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> ProjectorHandle {
        self.run_in_background(
            move |pool| async move { Doorbell::Own(LogDoorbell::connect(&pool, poll_interval).await) },
            shutdown,
        )
    }

    /// [`Projector::spawn`] woken by a doorbell shared with the process's other log readers.
    pub fn spawn_with(
        self,
        doorbell: SharedDoorbell,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> ProjectorHandle {
        self.run_in_background(|_| async move { Doorbell::Shared(doorbell) }, shutdown)
    }

    fn run_in_background<F>(
        self,
        doorbell: impl FnOnce(PgPool) -> F + Send + 'static,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> ProjectorHandle
    where
        F: Future<Output = Doorbell> + Send,
    {
        let (publish, checkpoint) = watch::channel(Position::START);
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut doorbell = doorbell(self.pool.clone()).await;
            loop {
                match self.next_batch().await {
                    Ok((position, applied, more)) => {
                        publish.send_replace(position);
                        if applied > 0 {
                            tracing::debug!(projection = P::NAME, applied, ?position, "projected");
                        }
                        // After a batch, read again at once: a commit that rang while an
                        // older transaction (one that rings no bell) was still open becomes
                        // readable only later. A full read certainly left more.
                        if more || applied > 0 {
                            continue;
                        }
                    }
                    Err(error) => {
                        tracing::error!(projection = P::NAME, %error, "projection batch failed; retrying");
                    }
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = doorbell.wait_for(P::AGGREGATE_TYPE) => {}
                }
            }
            tracing::info!(projection = P::NAME, "projector stopped");
        });
        ProjectorHandle { checkpoint }
    }
}

/// The checkpoint of projection `name`, locked for the transaction (created at the start of the
/// log if it is new): projectors of several replicas, and a replay, take turns on it.
pub(crate) async fn lock_checkpoint(
    tx: &mut PgConnection,
    name: &str,
) -> Result<Position, sqlx::Error> {
    loop {
        let row = sqlx::query!(
            r#"SELECT tx_id::text AS "tx_id!", global_position
               FROM projection_checkpoints WHERE projection = $1 FOR UPDATE"#,
            name
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = row {
            return Position::from_columns(&row.tx_id, row.global_position)
                .map_err(|error| sqlx::Error::Decode(Box::new(error)));
        }
        // The first batch of a new projection: its checkpoint starts at the start of the log.
        sqlx::query!(
            "INSERT INTO projection_checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING",
            name
        )
        .execute(&mut *tx)
        .await?;
    }
}

/// Moves projection `name`'s checkpoint to `position`.
pub(crate) async fn store_checkpoint(
    tx: &mut PgConnection,
    name: &str,
    position: Position,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE projection_checkpoints
           SET tx_id = $2::text::xid8, global_position = $3, updated_at = now()
           WHERE projection = $1"#,
        name,
        position.tx_id.to_string(),
        position.global_position,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What wakes a projector: a listening connection of its own, or the process's shared one.
enum Doorbell {
    Own(LogDoorbell),
    Shared(SharedDoorbell),
}

impl Doorbell {
    async fn wait_for(&mut self, aggregate_type: &str) {
        match self {
            Self::Own(doorbell) => doorbell.wait_for(aggregate_type).await,
            Self::Shared(doorbell) => doorbell.wait_for(aggregate_type).await,
        }
    }
}

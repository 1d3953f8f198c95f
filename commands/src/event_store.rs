//! Our `PersistedEventRepository` for cqrs-es over the partitioned `events` table (ADR 0003).
//!
//! Why not postgres-es's: it inserts one row per round trip, has no global order, no tenant column,
//! no row-level security hook and builds its SQL at run time. Here a commit is one multi-row INSERT
//! bound to the tenant ([`Scope`]), sent as one statement that is its own transaction
//! ([`append_commit`]) unless a snapshot goes with it; the primary key
//! `(tenant_id, aggregate_type, aggregate_id, sequence)` turns a concurrent append into
//! [`PersistenceError::OptimisticLockError`], never a lost or partial write.

use std::sync::{Arc, Mutex};

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use futures::TryStreamExt as _;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::doorbell::CommitBell;
use crate::log::Position;
use crate::scope::Scope;

/// The metadata key that names who caused an event; required on every event.
pub const ACTOR_KEY: &str = "actor";

/// Events that [`PgEventRepository::stream_events`] buffers ahead of the consumer.
const STREAM_CHANNEL_SIZE: usize = 256;

/// The event repository of one tenant's streams.
///
/// Cheap to create: one per command is the intended use. It remembers the log [`Position`] of the
/// last commit it made, so that the caller can wait for projections to catch up (read-your-writes).
#[derive(Debug, Clone)]
pub struct PgEventRepository {
    pool: PgPool,
    tenant_id: Uuid,
    bell: Option<CommitBell>,
    last_commit: Arc<Mutex<Option<Position>>>,
}

impl PgEventRepository {
    /// A repository of `tenant_id`'s streams on `pool`.
    pub fn new(pool: PgPool, tenant_id: Uuid) -> Self {
        Self {
            pool,
            tenant_id,
            bell: None,
            last_commit: Arc::default(),
        }
    }

    /// Rings `bell` after every commit, so that log readers wake at once instead of at their next
    /// poll.
    #[must_use]
    pub fn with_bell(mut self, bell: CommitBell) -> Self {
        self.bell = Some(bell);
        self
    }

    /// The tenant whose streams this repository reads and writes.
    pub fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    /// Where the last commit through this repository (or a clone of it) landed in the log.
    pub fn last_commit(&self) -> Option<Position> {
        *self.last_commit.lock().expect("last_commit lock poisoned")
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, PersistenceError> {
        Scope::Tenant(self.tenant_id)
            .begin(&self.pool)
            .await
            .map_err(persistence_error)
    }

    async fn select_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query!(
            r#"SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
               FROM events
               WHERE tenant_id = $1 AND aggregate_type = $2 AND aggregate_id = $3 AND sequence > $4
               ORDER BY sequence"#,
            self.tenant_id,
            aggregate_type,
            aggregate_id,
            after_sequence,
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(persistence_error)?;
        tx.commit().await.map_err(persistence_error)?;
        rows.into_iter()
            .map(|row| {
                Ok(SerializedEvent {
                    aggregate_id: row.aggregate_id,
                    sequence: to_usize(row.sequence)?,
                    aggregate_type: row.aggregate_type,
                    event_type: row.event_type,
                    event_version: row.event_version,
                    payload: row.payload,
                    metadata: row.metadata,
                })
            })
            .collect()
    }

    /// Remembers where a commit of `aggregate_type` landed and wakes its log readers.
    fn committed(&self, position: Option<Position>, aggregate_type: &str) {
        if position.is_some() {
            *self.last_commit.lock().expect("last_commit lock poisoned") = position;
            if let Some(bell) = &self.bell {
                bell.ring(aggregate_type);
            }
        }
    }

    fn stream(&self, aggregate_type: String, aggregate_id: Option<String>) -> ReplayStream {
        let (mut feed, stream) = ReplayStream::new(STREAM_CHANNEL_SIZE);
        let repo = self.clone();
        tokio::spawn(async move {
            let result: Result<(), PersistenceError> = async {
                let mut tx = repo.begin().await?;
                let mut rows = sqlx::query!(
                    r#"SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
                       FROM events
                       WHERE tenant_id = $1 AND aggregate_type = $2
                         AND ($3::text IS NULL OR aggregate_id = $3)
                       ORDER BY aggregate_id, sequence"#,
                    repo.tenant_id,
                    aggregate_type,
                    aggregate_id,
                )
                .fetch(&mut *tx);
                while let Some(row) = rows.try_next().await.map_err(persistence_error)? {
                    let event = SerializedEvent {
                        aggregate_id: row.aggregate_id,
                        sequence: to_usize(row.sequence)?,
                        aggregate_type: row.aggregate_type,
                        event_type: row.event_type,
                        event_version: row.event_version,
                        payload: row.payload,
                        metadata: row.metadata,
                    };
                    feed.push(Ok(event)).await?;
                }
                Ok(())
            }
            .await;
            if let Err(error) = result {
                // The consumer may be gone already; then there is nobody left to tell.
                let _ = feed.push(Err(error)).await;
            }
        });
        stream
    }
}

/// Appends one commit's events to the log inside `conn`'s transaction, as one multi-row INSERT.
///
/// The transaction must be bound to `tenant_id` (see [`Scope`]). Every event needs an `actor` in its
/// metadata, and all metadata values must be strings. Returns the commit's position in the log (of
/// its last event). A sequence that is already taken fails the whole statement with a unique
/// violation, which [`persistence_error`] turns into an optimistic-lock error.
pub async fn append(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    events: &[SerializedEvent],
) -> Result<Option<Position>, PersistenceError> {
    if events.is_empty() {
        return Ok(None);
    }
    let columns = EventColumns::of(events)?;
    let rows = sqlx::query!(
        r#"INSERT INTO events (tenant_id, aggregate_type, aggregate_id, sequence, event_type,
                               event_version, payload, metadata, event_id, actor)
           SELECT $1, u.aggregate_type, u.aggregate_id, u.sequence, u.event_type,
                  u.event_version, u.payload, u.metadata, u.event_id, u.actor
           FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                       $7::jsonb[], $8::jsonb[], $9::uuid[], $10::text[])
                WITH ORDINALITY AS u(aggregate_type, aggregate_id, sequence, event_type, event_version,
                                     payload, metadata, event_id, actor, ord)
           ORDER BY u.ord
           RETURNING global_position, tx_id::text AS "tx_id!""#,
        tenant_id,
        &columns.aggregate_type,
        &columns.aggregate_id,
        &columns.sequence,
        &columns.event_type,
        &columns.event_version,
        &columns.payload,
        &columns.metadata,
        &columns.event_id,
        &columns.actor,
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(persistence_error)?;
    last_position(
        rows.iter()
            .map(|row| (row.tx_id.as_str(), row.global_position)),
    )
}

/// Commits `events` to `tenant_id`'s streams as one statement that is its own transaction.
///
/// The same append as [`append`] in a transaction bound to the tenant, through the database function
/// `append_commit`, which binds the role and the tenant for its own duration: one round trip
/// instead of three (ADR 0004). `pool` must log in as the user that ran the migrations, the only one
/// allowed to call it.
pub async fn append_commit(
    pool: &PgPool,
    tenant_id: Uuid,
    events: &[SerializedEvent],
) -> Result<Option<Position>, PersistenceError> {
    if events.is_empty() {
        return Ok(None);
    }
    let columns = EventColumns::of(events)?;
    let rows = sqlx::query!(
        r#"SELECT global_position AS "global_position!", tx_id AS "tx_id!"
           FROM append_commit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"#,
        tenant_id,
        &columns.aggregate_type,
        &columns.aggregate_id,
        &columns.sequence,
        &columns.event_type,
        &columns.event_version,
        &columns.payload,
        &columns.metadata,
        &columns.event_id,
        &columns.actor,
    )
    .fetch_all(pool)
    .await
    .map_err(persistence_error)?;
    last_position(
        rows.iter()
            .map(|row| (row.tx_id.as_str(), row.global_position)),
    )
}

/// The latest of the positions an append returned.
fn last_position<'a>(
    rows: impl Iterator<Item = (&'a str, i64)>,
) -> Result<Option<Position>, PersistenceError> {
    let mut last = None;
    for (tx_id, global_position) in rows {
        last = last.max(Some(Position::from_columns(tx_id, global_position)?));
    }
    Ok(last)
}

/// The events of one commit, column by column, as the UNNEST insert takes them.
struct EventColumns {
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    event_version: Vec<String>,
    payload: Vec<Value>,
    metadata: Vec<Value>,
    event_id: Vec<Uuid>,
    actor: Vec<String>,
}

impl EventColumns {
    fn of(events: &[SerializedEvent]) -> Result<Self, PersistenceError> {
        let mut columns = Self::with_capacity(events.len());
        for event in events {
            columns.push(event)?;
        }
        Ok(columns)
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            aggregate_type: Vec::with_capacity(n),
            aggregate_id: Vec::with_capacity(n),
            sequence: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            event_version: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, event: &SerializedEvent) -> Result<(), PersistenceError> {
        let metadata = event
            .metadata
            .as_object()
            .ok_or_else(|| invalid("event metadata must be a JSON object of strings".to_owned()))?;
        if let Some((key, _)) = metadata.iter().find(|(_, value)| !value.is_string()) {
            return Err(invalid(format!("event metadata `{key}` must be a string")));
        }
        let actor = metadata
            .get(ACTOR_KEY)
            .and_then(Value::as_str)
            .filter(|actor| !actor.is_empty())
            .ok_or_else(|| invalid("every event needs an `actor` in its metadata".to_owned()))?;
        self.aggregate_type.push(event.aggregate_type.clone());
        self.aggregate_id.push(event.aggregate_id.clone());
        self.sequence.push(
            i64::try_from(event.sequence)
                .map_err(|_| invalid(format!("sequence {} out of range", event.sequence)))?,
        );
        self.event_type.push(event.event_type.clone());
        self.event_version.push(event.event_version.clone());
        self.payload.push(event.payload.clone());
        self.metadata.push(event.metadata.clone());
        self.event_id.push(Uuid::now_v7());
        self.actor.push(actor.to_owned());
        Ok(())
    }
}

impl PersistedEventRepository for PgEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.select_events(A::TYPE, aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let after = i64::try_from(last_sequence)
            .map_err(|_| invalid(format!("sequence {last_sequence} out of range")))?;
        self.select_events(A::TYPE, aggregate_id, after).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query!(
            r#"SELECT aggregate_id, payload, last_sequence, snapshot_version
               FROM snapshots
               WHERE tenant_id = $1 AND aggregate_type = $2 AND aggregate_id = $3"#,
            self.tenant_id,
            A::TYPE,
            aggregate_id,
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(persistence_error)?;
        tx.commit().await.map_err(persistence_error)?;
        row.map(|row| {
            Ok(SerializedSnapshot {
                aggregate_id: row.aggregate_id,
                aggregate: row.payload,
                current_sequence: to_usize(row.last_sequence)?,
                current_snapshot: to_usize(row.snapshot_version)?,
            })
        })
        .transpose()
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let Some((aggregate_id, payload, snapshot_version)) = snapshot_update else {
            let position = append_commit(&self.pool, self.tenant_id, events).await?;
            self.committed(position, A::TYPE);
            return Ok(());
        };
        let mut tx = self.begin().await?;
        let position = append(&mut tx, self.tenant_id, events).await?;
        let last_sequence = events
            .iter()
            .filter(|event| event.aggregate_id == aggregate_id)
            .map(|event| event.sequence)
            .max()
            .ok_or_else(|| invalid("a snapshot update needs events".to_owned()))?;
        upsert_snapshot(
            &mut tx,
            self.tenant_id,
            A::TYPE,
            &aggregate_id,
            (last_sequence, snapshot_version),
            payload,
        )
        .await?;
        tx.commit().await.map_err(persistence_error)?;
        self.committed(position, A::TYPE);
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Ok(self.stream(A::TYPE.to_owned(), Some(aggregate_id.to_owned())))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Ok(self.stream(A::TYPE.to_owned(), None))
    }
}

impl PgEventRepository {
    /// Stores `payload` as the snapshot of the stream `aggregate_id` of type `aggregate_type`
    /// after its event `last_sequence`, numbered `snapshot_version`, unless a snapshot at or
    /// after that event is stored already.
    pub async fn save_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        (last_sequence, snapshot_version): (usize, usize),
        payload: Value,
    ) -> Result<(), PersistenceError> {
        let mut tx = self.begin().await?;
        upsert_snapshot(
            &mut tx,
            self.tenant_id,
            aggregate_type,
            aggregate_id,
            (last_sequence, snapshot_version),
            payload,
        )
        .await?;
        tx.commit().await.map_err(persistence_error)
    }
}

/// The snapshot upsert, inside a transaction bound to `tenant_id`; an older snapshot never
/// replaces a newer one.
async fn upsert_snapshot(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    aggregate_type: &str,
    aggregate_id: &str,
    (last_sequence, snapshot_version): (usize, usize),
    payload: Value,
) -> Result<(), PersistenceError> {
    sqlx::query!(
        r#"INSERT INTO snapshots (tenant_id, aggregate_type, aggregate_id, last_sequence,
                                          snapshot_version, payload)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (tenant_id, aggregate_type, aggregate_id) DO UPDATE
                   SET last_sequence = EXCLUDED.last_sequence,
                       snapshot_version = EXCLUDED.snapshot_version,
                       payload = EXCLUDED.payload,
                       updated_at = now()
                   WHERE snapshots.last_sequence < EXCLUDED.last_sequence"#,
        tenant_id,
        aggregate_type,
        aggregate_id,
        i64::try_from(last_sequence).map_err(|_| invalid("sequence out of range".into()))?,
        i64::try_from(snapshot_version)
            .map_err(|_| invalid("snapshot version out of range".into()))?,
        payload,
    )
    .execute(&mut *conn)
    .await
    .map_err(persistence_error)?;
    Ok(())
}

/// Maps a database error to cqrs-es's persistence error: a unique violation is a concurrent append
/// (optimistic lock), a lost or refused connection is a connection error.
pub fn persistence_error(error: sqlx::Error) -> PersistenceError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => PersistenceError::ConnectionError(Box::new(error)),
        sqlx::Error::Database(db)
            if db.code().as_deref().is_some_and(|code| {
                // 08: connection exception, 57P: operator intervention (terminated, shutdown).
                code.starts_with("08") || code.starts_with("57P")
            }) =>
        {
            PersistenceError::ConnectionError(Box::new(error))
        }
        _ => PersistenceError::UnknownError(Box::new(error)),
    }
}

fn invalid(message: String) -> PersistenceError {
    PersistenceError::UnknownError(message.into())
}

fn to_usize(value: i64) -> Result<usize, PersistenceError> {
    usize::try_from(value).map_err(|_| invalid(format!("stored sequence {value} out of range")))
}

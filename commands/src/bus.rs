//! Executing commands: take the aggregate's state (kept warm, or loaded), decide, append the
//! events, report the log position.

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope};
use sqlx::PgPool;
use uuid::Uuid;

use crate::aggregate_snapshots::Snapshots;
use crate::doorbell::CommitBell;
use crate::event_store::{PgEventRepository, ACTOR_KEY};
use crate::log::Position;
use crate::warm::{Decide, StreamKey, Warm, WarmStates, DEFAULT_WARM_STREAMS};

mod batch;

pub use batch::{BatchCommand, BatchOutcome};

/// Events between two snapshots of an aggregate, when no other number is set: a cold load (a
/// stream not kept warm) replays at most about this many past its snapshot. Snapshots are written
/// off the commit's path (see [`Snapshots`]).
pub const SNAPSHOT_EVERY: usize = 10_000;

/// How often a command is decided again when another commit reached its stream first.
pub const CONFLICT_ATTEMPTS: u32 = 30;

/// What travels with a command into every event it causes (FR-VC-003).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMetadata {
    /// Who asked: recorded in the log's `actor` column and in the audit trail.
    pub actor: String,
    /// The author's explanation of the change, if given.
    pub message: Option<String>,
    /// The request that carried the command, for correlation with logs.
    pub request_id: Option<String>,
}

impl CommitMetadata {
    /// Metadata naming only the actor.
    pub fn by(actor: impl Into<String>) -> Self {
        Self {
            actor: actor.into(),
            message: None,
            request_id: None,
        }
    }

    fn into_map(self) -> HashMap<String, String> {
        let mut map = HashMap::from([(ACTOR_KEY.to_owned(), self.actor)]);
        if let Some(message) = self.message {
            map.insert("message".to_owned(), message);
        }
        if let Some(request_id) = self.request_id {
            map.insert("request_id".to_owned(), request_id);
        }
        map
    }
}

/// Why a command did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command; nothing was written.
    #[error(transparent)]
    Rejected(E),
    /// Another commit reached the same stream first; nothing was written. Retrying decides anew.
    #[error("a concurrent change to the same stream won; nothing was written")]
    Conflict,
    /// The database could not be reached; nothing was written.
    #[error("the database is unavailable: {0}")]
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
    /// Anything else (a stored event that does not decode, a bug).
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl<E: std::error::Error> From<PersistenceError> for CommandError<E> {
    fn from(error: PersistenceError) -> Self {
        match error {
            PersistenceError::OptimisticLockError => CommandError::Conflict,
            PersistenceError::ConnectionError(error) => CommandError::Unavailable(error),
            PersistenceError::DeserializationError(error)
            | PersistenceError::UnknownError(error) => CommandError::Internal(error),
        }
    }
}

impl<E: std::error::Error> From<AggregateError<E>> for CommandError<E> {
    fn from(error: AggregateError<E>) -> Self {
        match error {
            AggregateError::UserError(error) => CommandError::Rejected(error),
            AggregateError::AggregateConflict => CommandError::Conflict,
            AggregateError::DatabaseConnectionError(error) => CommandError::Unavailable(error),
            AggregateError::DeserializationError(error)
            | AggregateError::UnexpectedError(error) => CommandError::Internal(error),
        }
    }
}

/// Runs commands against the event store, keeping the states of recently used streams warm.
#[derive(Debug, Clone)]
pub struct CommandBus {
    pool: PgPool,
    bell: CommitBell,
    warm: WarmStates,
    snapshots: Snapshots,
}

/// What deciding on a state led to.
enum Outcome<A: Aggregate> {
    /// The events were stored; the state after them.
    Committed(Warm<A>, Option<Position>),
    /// Another writer reached the stream first; the state as it was before deciding.
    Lost(Warm<A>),
}

impl CommandBus {
    /// A bus writing to `pool`'s database and ringing `bell` after each commit.
    pub fn new(pool: PgPool, bell: CommitBell) -> Self {
        Self {
            pool,
            bell,
            warm: WarmStates::new(DEFAULT_WARM_STREAMS),
            snapshots: Snapshots::new(SNAPSHOT_EVERY),
        }
    }

    /// The same bus keeping at most `streams` aggregate states in memory (0: none; every command
    /// loads its aggregate from the store).
    #[must_use]
    pub fn with_warm_streams(mut self, streams: usize) -> Self {
        self.warm = WarmStates::new(streams);
        self
    }

    /// The same bus writing a stream's snapshot once `events` events followed the last one.
    #[must_use]
    pub fn with_snapshot_every(mut self, events: usize) -> Self {
        self.snapshots = Snapshots::new(events);
        self
    }

    /// Waits until the snapshots being written have been written (or have failed).
    pub async fn snapshots_written(&self) {
        self.snapshots.written().await;
    }

    fn repo(&self, tenant_id: Uuid) -> PgEventRepository {
        PgEventRepository::new(self.pool.clone(), tenant_id).with_bell(self.bell.clone())
    }

    /// Answers `read` of the aggregate `aggregate_id` of `tenant_id` as the store holds it now
    /// (the state kept in memory, caught up with the store, else loaded).
    pub async fn read<A, T>(
        &self,
        tenant_id: Uuid,
        aggregate_id: &str,
        read: impl FnOnce(&A) -> T,
    ) -> Result<T, CommandError<A::Error>>
    where
        A: Decide + 'static,
    {
        let repo = self.repo(tenant_id);
        let slot = self
            .warm
            .slot(&(tenant_id, A::TYPE, aggregate_id.to_owned()));
        let mut slot = slot.lock().await;
        let mut warm = kept_or_loaded::<A>(&mut slot, &repo, aggregate_id).await?;
        catch_up(&repo, aggregate_id, &mut warm).await?;
        let answer = read(&warm.state);
        slot.put(warm);
        Ok(answer)
    }

    /// Executes `command` on the aggregate `aggregate_id` of `tenant_id`.
    ///
    /// Returns where the commit landed in the log, or `None` when the command decided that nothing
    /// changes. Projections reach that position shortly after (see the projector's `wait_for`).
    ///
    /// The command is decided on the stream's state kept in memory when there is one, else on the
    /// state loaded from the store (snapshot and the events after it). The append's optimistic
    /// check on the sequence refuses a commit when another commit reached the stream first (from
    /// this replica or another): the events after the kept state are then read from the store and
    /// applied, and the command is decided again on that state (up to [`CONFLICT_ATTEMPTS`] times,
    /// after a random pause that grows with the attempts). A refusal, or a command that changes
    /// nothing, is answered only once the store has no event past the state it was decided on.
    /// So writers of different resources in one repository all succeed, a writer whose
    /// expectation no longer holds is refused, never overwritten, and a stale state refuses
    /// nothing. The kept state is replaced only by the state after a stored commit.
    pub async fn execute<A>(
        &self,
        tenant_id: Uuid,
        aggregate_id: &str,
        command: A::Command,
        services: A::Services,
        metadata: CommitMetadata,
    ) -> Result<Option<Position>, CommandError<A::Error>>
    where
        A: Decide + 'static,
        A::Command: Clone,
    {
        let metadata = metadata.into_map();
        let repo = self.repo(tenant_id);
        let key: StreamKey = (tenant_id, A::TYPE, aggregate_id.to_owned());
        let slot = self.warm.slot(&key);
        let mut slot = slot.lock().await;
        let mut warm = kept_or_loaded::<A>(&mut slot, &repo, aggregate_id).await?;
        let mut attempt: u32 = 1;
        loop {
            let decided = warm.state.decide(command.clone(), &services).await;
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                other => {
                    // Refused, or nothing to change: true only if no commit came after this state.
                    if catch_up(&repo, aggregate_id, &mut warm).await? {
                        continue;
                    }
                    slot.put(warm);
                    return match other {
                        Ok(_) => Ok(None),
                        Err(error) => Err(CommandError::Rejected(error)),
                    };
                }
            };
            let before = warm.sequence;
            match append(&repo, aggregate_id, warm, events, &metadata).await? {
                Outcome::Committed(after, position) => {
                    self.snapshots
                        .after_commit::<A>(&repo, aggregate_id, (before, after.sequence));
                    slot.put(after);
                    return Ok(position);
                }
                Outcome::Lost(before) if attempt < CONFLICT_ATTEMPTS => {
                    warm = before;
                    let ceiling_us = 500 * u128::from(attempt);
                    let pause_us = Uuid::new_v4().as_u128() % ceiling_us;
                    let pause = Duration::from_micros(u64::try_from(pause_us).unwrap_or(u64::MAX));
                    tokio::time::sleep(pause).await;
                    catch_up(&repo, aggregate_id, &mut warm).await?;
                    attempt += 1;
                }
                Outcome::Lost(_) => return Err(CommandError::Conflict),
            }
        }
    }
}

/// The stream's state kept in `slot`, else loaded from the store.
async fn kept_or_loaded<A: Aggregate + 'static>(
    slot: &mut crate::warm::Slot,
    repo: &PgEventRepository,
    aggregate_id: &str,
) -> Result<Warm<A>, PersistenceError> {
    match slot.take::<A>() {
        Some(warm) => Ok(warm),
        None => load::<A>(repo, aggregate_id).await,
    }
}

/// The state of a stream from the store: its snapshot, then the events after it.
pub async fn load<A: Aggregate>(
    repo: &PgEventRepository,
    aggregate_id: &str,
) -> Result<Warm<A>, PersistenceError> {
    use cqrs_es::persist::PersistedEventRepository as _;
    let mut warm = match repo.get_snapshot::<A>(aggregate_id).await? {
        Some(snapshot) => Warm {
            state: serde_json::from_value(snapshot.aggregate)?,
            sequence: snapshot.current_sequence,
        },
        None => Warm {
            state: A::default(),
            sequence: 0,
        },
    };
    catch_up(repo, aggregate_id, &mut warm).await?;
    Ok(warm)
}

/// Applies the stream's stored events after `warm.sequence` to `warm`; whether there were any.
async fn catch_up<A: Aggregate>(
    repo: &PgEventRepository,
    aggregate_id: &str,
    warm: &mut Warm<A>,
) -> Result<bool, PersistenceError> {
    use cqrs_es::persist::PersistedEventRepository as _;
    let events = repo
        .get_last_events::<A>(aggregate_id, warm.sequence)
        .await?;
    let caught_up = !events.is_empty();
    for event in events {
        let envelope = EventEnvelope::<A>::try_from(event)?;
        warm.sequence = envelope.sequence;
        warm.state.apply(envelope.payload);
    }
    Ok(caught_up)
}

/// Appends `events` after `warm`'s sequence; on success, the state after them.
async fn append<A: Aggregate>(
    repo: &PgEventRepository,
    aggregate_id: &str,
    mut warm: Warm<A>,
    events: Vec<A::Event>,
    metadata: &HashMap<String, String>,
) -> Result<Outcome<A>, PersistenceError> {
    use cqrs_es::persist::PersistedEventRepository as _;
    let envelopes: Vec<EventEnvelope<A>> = events
        .into_iter()
        .zip(warm.sequence + 1..)
        .map(|(payload, sequence)| EventEnvelope {
            aggregate_id: aggregate_id.to_owned(),
            sequence,
            payload,
            metadata: metadata.clone(),
        })
        .collect();
    let serialized = envelopes
        .iter()
        .map(SerializedEvent::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    match repo.persist::<A>(&serialized, None).await {
        Ok(()) => {}
        Err(PersistenceError::OptimisticLockError) => return Ok(Outcome::Lost(warm)),
        Err(error) => return Err(error),
    }
    for envelope in envelopes {
        warm.sequence = envelope.sequence;
        warm.state.apply(envelope.payload);
    }
    Ok(Outcome::Committed(warm, repo.last_commit()))
}

//! Executing commands: load the aggregate, decide, append the events, report the log position.

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, CqrsFramework};
use sqlx::PgPool;
use uuid::Uuid;

use crate::event_store::{PgEventRepository, ACTOR_KEY};
use crate::log::{CommitBell, Position};

/// Events between two snapshots of an aggregate: loading replays at most this many.
pub const SNAPSHOT_EVERY: usize = 100;

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

/// Runs commands against the event store.
#[derive(Debug, Clone)]
pub struct CommandBus {
    pool: PgPool,
    bell: CommitBell,
}

impl CommandBus {
    /// A bus writing to `pool`'s database and ringing `bell` after each commit.
    pub fn new(pool: PgPool, bell: CommitBell) -> Self {
        Self { pool, bell }
    }

    /// Executes `command` on the aggregate `aggregate_id` of `tenant_id`.
    ///
    /// Returns where the commit landed in the log, or `None` when the command decided that nothing
    /// changes. Projections reach that position shortly after (see the projector's `wait_for`).
    ///
    /// When another commit reaches the stream between loading and appending, the command is decided
    /// again on the new state (up to [`CONFLICT_ATTEMPTS`] times, after a random pause that grows
    /// with the attempts): writers of different resources in one repository all succeed, and a
    /// writer whose expectation no longer holds is refused by the aggregate, never overwritten.
    pub async fn execute<A>(
        &self,
        tenant_id: Uuid,
        aggregate_id: &str,
        command: A::Command,
        services: A::Services,
        metadata: CommitMetadata,
    ) -> Result<Option<Position>, CommandError<A::Error>>
    where
        A: Aggregate,
        A::Command: Clone,
        A::Services: Clone,
    {
        let metadata = metadata.into_map();
        let mut attempt: u32 = 1;
        loop {
            let repo =
                PgEventRepository::new(self.pool.clone(), tenant_id).with_bell(self.bell.clone());
            let store =
                PersistedEventStore::<_, A>::new_snapshot_store(repo.clone(), SNAPSHOT_EVERY);
            let result = CqrsFramework::new(store, Vec::new(), services.clone())
                .execute_with_metadata(aggregate_id, command.clone(), metadata.clone())
                .await;
            match result.map_err(CommandError::from) {
                Ok(()) => return Ok(repo.last_commit()),
                Err(CommandError::Conflict) if attempt < CONFLICT_ATTEMPTS => {
                    let ceiling_us = 500 * u128::from(attempt);
                    let pause_us = Uuid::new_v4().as_u128() % ceiling_us;
                    let pause = Duration::from_micros(u64::try_from(pause_us).unwrap_or(u64::MAX));
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

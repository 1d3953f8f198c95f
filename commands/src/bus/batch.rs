//! Executing commands on many streams of one tenant as one commit: each decided on its stream's
//! state as [`CommandBus::execute`] does, and all their events appended in one statement, so a
//! burst of small facts (an agent's container events) costs one transaction, not one each.

use std::collections::BTreeMap;

use cqrs_es::persist::{PersistedEventRepository as _, SerializedEvent};
use cqrs_es::{Aggregate, EventEnvelope};
use uuid::Uuid;

use super::{catch_up, load, CommandBus, CommandError, CommitMetadata};
use crate::log::Position;
use crate::warm::{Decide, StreamKey, Warm};

/// One command of a batch, on the stream `aggregate_id`.
#[derive(Debug, Clone)]
pub struct BatchCommand<C> {
    /// The stream.
    pub aggregate_id: String,
    /// The command.
    pub command: C,
    /// What travels with its events.
    pub metadata: CommitMetadata,
}

/// What a command of a batch led to: as [`CommandBus::execute`] answers.
pub type BatchOutcome<E> = Result<Option<Position>, CommandError<E>>;

/// What deciding a batch's commands on their streams' states led to.
enum Decided<A: Aggregate> {
    /// Every stream's events, and the states after them (not stored yet).
    Ready {
        events: Vec<SerializedEvent>,
        /// Per stream: the state after its events, and its sequence before them.
        states: BTreeMap<String, (Warm<A>, usize)>,
        /// Per command: refused, unchanged (`Ok(false)`), or has events (`Ok(true)`).
        outcomes: Vec<Result<bool, A::Error>>,
    },
    /// A state could not be read, or an event not written down: every command is executed on
    /// its own (which answers why).
    Unreadable,
}

impl CommandBus {
    /// Executes `commands` (each on its own stream of `tenant_id`, several on one stream in
    /// order), appending every event they cause in one commit; answers each command's outcome,
    /// in order.
    ///
    /// A command refused or changing nothing on a stream that no other command of the batch
    /// changed is answered only once the store has no event past the state it was decided on; a
    /// stream that did change proves, by its append, that its state was current. When another
    /// writer reached one of the streams first, or a state cannot be read, the commands are
    /// executed one by one ([`CommandBus::execute`]), so a batch never answers a conflict that a
    /// single command would have retried.
    pub async fn execute_batch<A>(
        &self,
        tenant_id: Uuid,
        services: &A::Services,
        commands: Vec<BatchCommand<A::Command>>,
    ) -> Vec<BatchOutcome<A::Error>>
    where
        A: Decide + 'static,
        A::Command: Clone,
        A::Services: Clone,
    {
        let repo = self.repo(tenant_id);
        let mut streams: Vec<&str> = commands.iter().map(|c| c.aggregate_id.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        // Slots locked in name order, as one command locks one: no two batches wait on each other.
        let slots: Vec<_> = streams
            .iter()
            .map(|id| {
                let key: StreamKey = (tenant_id, A::TYPE, (*id).to_owned());
                self.warm.slot(&key)
            })
            .collect();
        let mut guards = Vec::with_capacity(slots.len());
        for slot in &slots {
            guards.push(slot.lock().await);
        }
        let mut taken = BTreeMap::new();
        for (id, guard) in streams.iter().zip(guards.iter_mut()) {
            taken.insert((*id).to_owned(), guard.take::<A>());
        }
        let decided = decide_all::<A>(&repo, services, &commands, taken).await;
        let Decided::Ready {
            events,
            states,
            outcomes,
        } = decided
        else {
            drop(guards);
            return self.one_by_one::<A>(tenant_id, services, commands).await;
        };
        let mut events = events;
        // In stream order (each stream's events keep theirs): two replicas' batches touching the
        // same streams insert their keys in the same order, so they cannot deadlock.
        events.sort_by(|a, b| a.aggregate_id.cmp(&b.aggregate_id));
        let position = if events.is_empty() {
            None
        } else {
            match repo.persist::<A>(&events, None).await {
                Ok(()) => repo.last_commit(),
                Err(error) if decided_again(&error) => {
                    // Another writer reached a stream first (or Postgres chose this commit to
                    // give way): the states taken are dropped (the next command loads them), and
                    // each command is decided again on its own.
                    drop(guards);
                    return self.one_by_one::<A>(tenant_id, services, commands).await;
                }
                // Nothing was stored: the states taken are dropped, every command fails alike.
                Err(error) => return failed_alike(&error, commands.len()),
            }
        };
        let mut states = states;
        let mut stale = Vec::new();
        for (id, guard) in streams.iter().zip(guards.iter_mut()) {
            let Some((mut warm, before)) = states.remove(*id) else {
                continue;
            };
            if warm.sequence == before {
                // Nothing appended to this stream: its state must still be the stored one.
                match catch_up(&repo, id, &mut warm).await {
                    Ok(false) => guard.put(warm),
                    Ok(true) | Err(_) => stale.push((*id).to_owned()),
                }
            } else {
                self.snapshots
                    .after_commit::<A>(&repo, id, (before, warm.sequence));
                guard.put(warm);
            }
        }
        drop(guards);
        let mut answers = Vec::with_capacity(commands.len());
        for (command, outcome) in commands.into_iter().zip(outcomes) {
            let answer = if stale.contains(&command.aggregate_id) {
                // Decided on a state that was not the latest: decided again on its own.
                self.execute_one::<A>(tenant_id, services, command).await
            } else {
                match outcome {
                    Ok(true) => Ok(position),
                    Ok(false) => Ok(None),
                    Err(error) => Err(CommandError::Rejected(error)),
                }
            };
            answers.push(answer);
        }
        answers
    }

    /// Executes `commands` one at a time.
    async fn one_by_one<A>(
        &self,
        tenant_id: Uuid,
        services: &A::Services,
        commands: Vec<BatchCommand<A::Command>>,
    ) -> Vec<BatchOutcome<A::Error>>
    where
        A: Decide + 'static,
        A::Command: Clone,
        A::Services: Clone,
    {
        let mut answers = Vec::with_capacity(commands.len());
        for command in commands {
            answers.push(self.execute_one::<A>(tenant_id, services, command).await);
        }
        answers
    }

    /// Executes one command of a batch on its own.
    async fn execute_one<A>(
        &self,
        tenant_id: Uuid,
        services: &A::Services,
        command: BatchCommand<A::Command>,
    ) -> BatchOutcome<A::Error>
    where
        A: Decide + 'static,
        A::Command: Clone,
        A::Services: Clone,
    {
        self.execute::<A>(
            tenant_id,
            &command.aggregate_id,
            command.command,
            services.clone(),
            command.metadata,
        )
        .await
    }
}

/// The same failure for each of `count` commands.
fn failed_alike<E: std::error::Error>(
    error: &cqrs_es::persist::PersistenceError,
    count: usize,
) -> Vec<BatchOutcome<E>> {
    let unavailable = matches!(
        error,
        cqrs_es::persist::PersistenceError::ConnectionError(_)
    );
    let message = error.to_string();
    (0..count)
        .map(|_| {
            let error = message.clone().into();
            Err(if unavailable {
                CommandError::Unavailable(error)
            } else {
                CommandError::Internal(error)
            })
        })
        .collect()
}

/// Whether a failed append is worth deciding again command by command: another writer reached a
/// stream first, or Postgres broke a deadlock or a serialization conflict by failing this commit.
fn decided_again(error: &cqrs_es::persist::PersistenceError) -> bool {
    use cqrs_es::persist::PersistenceError;
    match error {
        PersistenceError::OptimisticLockError => true,
        PersistenceError::UnknownError(error) => error
            .downcast_ref::<sqlx::Error>()
            .and_then(|error| error.as_database_error())
            .and_then(sqlx::error::DatabaseError::code)
            .is_some_and(|code| code == "40P01" || code == "40001"),
        _ => false,
    }
}

/// Decides every command on its stream's state (the one kept warm, else loaded), each after the
/// events of the batch's earlier commands on the same stream.
async fn decide_all<A: Decide>(
    repo: &crate::event_store::PgEventRepository,
    services: &A::Services,
    commands: &[BatchCommand<A::Command>],
    taken: BTreeMap<String, Option<Warm<A>>>,
) -> Decided<A>
where
    A::Command: Clone,
{
    let mut states = BTreeMap::new();
    for (id, warm) in taken {
        let warm = match warm {
            Some(warm) => warm,
            None => match load::<A>(repo, &id).await {
                Ok(warm) => warm,
                Err(_) => return Decided::Unreadable,
            },
        };
        let before = warm.sequence;
        states.insert(id, (warm, before));
    }
    let mut events = Vec::new();
    let mut outcomes = Vec::with_capacity(commands.len());
    for command in commands {
        let Some((warm, _)) = states.get_mut(&command.aggregate_id) else {
            return Decided::Unreadable;
        };
        match warm.state.decide(command.command.clone(), services).await {
            Ok(decided) if decided.is_empty() => outcomes.push(Ok(false)),
            Ok(decided) => {
                let metadata = command.metadata.clone().into_map();
                for payload in decided {
                    let envelope = EventEnvelope::<A> {
                        aggregate_id: command.aggregate_id.clone(),
                        sequence: warm.sequence + 1,
                        payload,
                        metadata: metadata.clone(),
                    };
                    let Ok(serialized) = SerializedEvent::try_from(&envelope) else {
                        return Decided::Unreadable;
                    };
                    events.push(serialized);
                    warm.sequence = envelope.sequence;
                    warm.state.apply(envelope.payload);
                }
                outcomes.push(Ok(true));
            }
            Err(error) => outcomes.push(Err(error)),
        }
    }
    Decided::Ready {
        events,
        states,
        outcomes,
    }
}

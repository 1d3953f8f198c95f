//! What agents' reports make their VMs do (lifecycle events, facts, heartbeats, container
//! snapshots), gathered from every stream into shared commits.
//!
//! Each event is history and goes to its VM's stream in the log; committing each on its own would
//! cost a transaction (and a WAL flush) per health flip, across a thousand agents. Streams hand
//! their commands to the queue and wait for the answer; one task takes whatever is waiting (up to
//! [`MOST_PER_COMMIT`]), lets more gather for [`GATHER_FOR`](super::GATHER_FOR), and commits it
//! per tenant in one append ([`CommandBus::execute_batch`]). A stream hands over the events that
//! arrived together in one call, so an agent catching up is not held to one event per gathering.

use efms_domain::fleet::{Vm, VmCommand};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{gather, FleetError};
use crate::{BatchCommand, CommandBus, CommandError, CommitMetadata, Position};

/// The most commands committed together.
pub const MOST_PER_COMMIT: usize = 512;

/// Events waiting for the writer, at most (a stream waits for room beyond).
const WAITING: usize = 4_096;

struct Waiting {
    tenant_id: Uuid,
    vm: String,
    command: VmCommand,
    actor: String,
    answer: oneshot::Sender<Result<Option<Position>, FleetError>>,
}

/// The way into the writer of lifecycle events.
#[derive(Debug, Clone)]
pub struct RecordQueue {
    sender: mpsc::Sender<Waiting>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("tenant_id", &self.tenant_id)
            .field("vm", &self.vm)
            .finish_non_exhaustive()
    }
}

impl RecordQueue {
    /// Starts the writer, committing through `bus`.
    pub fn spawn(bus: CommandBus) -> Self {
        let (sender, receiver) = mpsc::channel(WAITING);
        tokio::spawn(write_loop(bus, receiver));
        Self { sender }
    }

    /// Runs `command` on the VM `vm` of `tenant_id` on behalf of `actor`; answers once its
    /// events are committed (or it is refused), as [`CommandBus::execute`] would.
    pub async fn execute(
        &self,
        tenant_id: Uuid,
        vm: &str,
        command: VmCommand,
        actor: &str,
    ) -> Result<Option<Position>, FleetError> {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting {
            tenant_id,
            vm: vm.to_owned(),
            command,
            actor: actor.to_owned(),
            answer,
        };
        let stopped =
            || CommandError::Unavailable("the writer of agents' reports stopped or failed".into());
        self.sender.send(waiting).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

async fn write_loop(bus: CommandBus, mut receiver: mpsc::Receiver<Waiting>) {
    let mut taken = Vec::with_capacity(MOST_PER_COMMIT);
    while gather(&mut receiver, &mut taken, MOST_PER_COMMIT).await {
        let mut tenants: Vec<Uuid> = taken.iter().map(|waiting| waiting.tenant_id).collect();
        tenants.sort_unstable();
        tenants.dedup();
        for tenant_id in tenants {
            let (mine, others): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut taken)
                .into_iter()
                .partition(|waiting| waiting.tenant_id == tenant_id);
            taken = others;
            // A batch that fails unexpectedly (a panic) drops its streams' answers, which they
            // hear as a failure; the writer goes on with the next.
            if let Err(error) = tokio::spawn(commit(bus.clone(), tenant_id, mine)).await {
                tracing::error!(%error, "a batch of agents' commands failed");
            }
        }
    }
}

/// Commits one tenant's waiting commands and answers each stream.
async fn commit(bus: CommandBus, tenant_id: Uuid, waiting: Vec<Waiting>) {
    let mut answers = Vec::with_capacity(waiting.len());
    let commands = waiting
        .into_iter()
        .map(|waiting| {
            answers.push(waiting.answer);
            BatchCommand {
                aggregate_id: waiting.vm,
                command: waiting.command,
                metadata: CommitMetadata::by(waiting.actor),
            }
        })
        .collect();
    let outcomes = bus.execute_batch::<Vm>(tenant_id, &(), commands).await;
    for (answer, outcome) in answers.into_iter().zip(outcomes) {
        // A stream that stopped waiting has nothing to be told.
        let _ = answer.send(outcome);
    }
}

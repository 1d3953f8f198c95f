//! Snapshots of aggregates, written off the commit's path.
//!
//! Commands decide on states kept warm in memory ([`crate::warm`]), so a snapshot only serves a
//! cold load (a replica that starts, a stream dropped from memory). Writing one costs what the
//! aggregate holds; it is done in the background, from the store (the last snapshot and the events
//! after it), once a commit brings the stream past a multiple of the interval, at most once at a
//! time per stream. A commit never waits for it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::event_store::PgEventRepository;
use crate::warm::StreamKey;
use cqrs_es::persist::{PersistedEventRepository as _, PersistenceError};
use cqrs_es::Aggregate;
use tokio::task::JoinHandle;

/// Writes snapshots every so many events. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Snapshots {
    every: usize,
    running: Arc<Mutex<HashSet<StreamKey>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Snapshots {
    /// Snapshots every `every` events (at least 1).
    pub fn new(every: usize) -> Self {
        Self {
            every: every.max(1),
            running: Arc::default(),
            tasks: Arc::default(),
        }
    }

    /// Called after a commit took the stream from event `before` to event `after`: starts writing
    /// its snapshot when that passed a multiple of the interval.
    pub fn after_commit<A: Aggregate + 'static>(
        &self,
        repo: &PgEventRepository,
        aggregate_id: &str,
        (before, after): (usize, usize),
    ) {
        if before / self.every == after / self.every {
            return;
        }
        let key = (repo.tenant_id(), A::TYPE, aggregate_id.to_owned());
        if !self
            .running
            .lock()
            .expect("snapshots poisoned")
            .insert(key.clone())
        {
            return;
        }
        let (repo, running) = (repo.clone(), self.running.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = write::<A>(&repo, &key.2).await {
                tracing::warn!(
                    tenant_id = %key.0, aggregate_type = key.1, aggregate_id = %key.2, %error,
                    "writing a snapshot failed; the next one will try again"
                );
            }
            running.lock().expect("snapshots poisoned").remove(&key);
        });
        let mut tasks = self.tasks.lock().expect("snapshots poisoned");
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
    }

    /// Waits for the snapshots being written.
    pub async fn written(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("snapshots poisoned"));
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Loads the stream from its last snapshot and the events after it, and stores the result as the
/// next snapshot.
async fn write<A: Aggregate>(
    repo: &PgEventRepository,
    aggregate_id: &str,
) -> Result<(), PersistenceError> {
    let version = repo
        .get_snapshot::<A>(aggregate_id)
        .await?
        .map_or(0, |snapshot| snapshot.current_snapshot);
    let warm = crate::bus::load::<A>(repo, aggregate_id).await?;
    let payload = serde_json::to_value(&warm.state)?;
    repo.save_snapshot(A::TYPE, aggregate_id, (warm.sequence, version + 1), payload)
        .await
}

//! How log readers learn that commits landed: a NOTIFY after commits, naming the aggregate types
//! the commits wrote, so that each reader wakes for its own kind of events only.
//!
//! A projection of one aggregate type still reads every event of the log (its checkpoint moves
//! over the others), but it need not read at every other type's commit: a thousand agents' reports
//! ring twenty times a second, and the configuration and tenant projectors read them once per
//! polling interval instead. A ring that names no type (a notification from a build before
//! types were named, or the listening connection coming back) wakes every reader.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::time::Instant;

/// The NOTIFY channel that tells log readers a commit landed.
pub const EVENTS_CHANNEL: &str = "efms_events";

/// The shortest time between two rings of a [`CommitBell`].
pub const RING_INTERVAL: Duration = Duration::from_millis(5);

/// Rings the log readers' doorbell (NOTIFY on [`EVENTS_CHANNEL`]) after commits, from outside the
/// writing transactions.
///
/// A NOTIFY inside a writing transaction would make every commit wait for a database-wide lock held
/// through the WAL flush of every other notifying commit. Here commits only note their aggregate
/// type and drop a token into a one-slot queue; a background task sends one NOTIFY per token,
/// naming the types noted since the last one, and then rests for [`RING_INTERVAL`], so however
/// fast commits come, readers are woken at most every few milliseconds and the bell costs the
/// database next to nothing. The task ends when every clone of the bell is dropped.
#[derive(Debug, Clone)]
pub struct CommitBell {
    pending: tokio::sync::mpsc::Sender<()>,
    types: Arc<Mutex<BTreeSet<String>>>,
}

impl CommitBell {
    /// Starts the task that sends the notifications over `pool`.
    pub fn spawn(pool: &PgPool) -> Self {
        let (pending, mut rings) = tokio::sync::mpsc::channel::<()>(1);
        let types = Arc::new(Mutex::new(BTreeSet::new()));
        let (pool, noted) = (pool.clone(), Arc::clone(&types));
        tokio::spawn(async move {
            while rings.recv().await.is_some() {
                let named = std::mem::take(&mut *noted.lock().expect("ring types lock poisoned"));
                if named.is_empty() {
                    // A ring whose type an earlier notification already named.
                    continue;
                }
                let payload = named.into_iter().collect::<Vec<_>>().join(",");
                if let Err(error) = notify(&pool, &payload).await {
                    // Readers poll as well: a lost ring delays them by one polling interval.
                    tracing::warn!(%error, "cannot notify log readers of a commit");
                }
                tokio::time::sleep(RING_INTERVAL).await;
            }
        });
        Self { pending, types }
    }

    /// Records that a commit of `aggregate_type` landed; never waits.
    pub fn ring(&self, aggregate_type: &str) {
        {
            let mut types = self.types.lock().expect("ring types lock poisoned");
            if !types.contains(aggregate_type) {
                types.insert(aggregate_type.to_owned());
            }
        }
        // A full queue already holds a ring that will be sent after this commit, naming its
        // type: nothing is lost.
        let _ = self.pending.try_send(());
    }
}

/// Sends one notification. A notifying transaction takes a transaction id and so writes a commit
/// record; it carries no data, so it need not wait for the WAL flush (the commits it announces
/// already did), which would otherwise double the flushes of every commit.
async fn notify(pool: &PgPool, types: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool
        .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await?;
    sqlx::query!("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, types)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// What a doorbell heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rang {
    /// Commits of these aggregate types.
    Commits(BTreeSet<String>),
    /// Something that may concern every reader: a ring naming no type, or a listening
    /// connection lost (a ring may have been missed).
    Anything,
    /// Nothing for a polling interval.
    Quiet,
}

impl Rang {
    /// Whether a reader of `aggregate_type` should read now (a quiet interval counts: readers
    /// poll, since a commit may become readable only after an older transaction ends).
    pub fn concerns(&self, aggregate_type: &str) -> bool {
        match self {
            Self::Commits(types) => types.contains(aggregate_type),
            Self::Anything | Self::Quiet => true,
        }
    }

    fn add(&mut self, payload: &str) {
        if payload.is_empty() {
            *self = Self::Anything;
            return;
        }
        match self {
            Self::Commits(types) => types.extend(payload.split(',').map(str::to_owned)),
            Self::Anything => {}
            Self::Quiet => *self = Self::Commits(payload.split(',').map(str::to_owned).collect()),
        }
    }
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

    /// Waits for the next commit notification or the polling interval, whichever comes first, and
    /// takes the notifications already queued with it (one read serves them all).
    pub async fn wait(&mut self) -> Rang {
        self.wait_until(Instant::now() + self.poll_interval).await
    }

    /// [`LogDoorbell::wait`] until `deadline` at the latest.
    async fn wait_until(&mut self, deadline: Instant) -> Rang {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep_until(deadline).await;
            self.reconnect().await;
            return Rang::Anything;
        };
        let mut rang = Rang::Quiet;
        match tokio::time::timeout_at(deadline, listener.try_recv()).await {
            Err(_) => return Rang::Quiet,
            Ok(Ok(Some(notification))) => rang.add(notification.payload()),
            // The connection dropped (PgListener reconnects on the next call by itself): a ring
            // may have been missed.
            Ok(Ok(None)) => return Rang::Anything,
            Ok(Err(error)) => {
                tracing::warn!(%error, "LISTEN connection failed; reconnecting");
                self.listener = None;
                return Rang::Anything;
            }
        }
        while let Some(notification) = listener.next_buffered() {
            rang.add(notification.payload());
        }
        rang
    }

    /// Waits until a ring concerns readers of `aggregate_type`, or the polling interval passed.
    pub async fn wait_for(&mut self, aggregate_type: &str) {
        let deadline = Instant::now() + self.poll_interval;
        while Instant::now() < deadline {
            if self.wait_until(deadline).await.concerns(aggregate_type) {
                return;
            }
        }
    }
}

/// The rings heard so far: how many concerned everyone, and how many named each type.
#[derive(Debug, Default)]
struct Rings {
    anything: u64,
    by_type: HashMap<String, u64>,
}

impl Rings {
    /// The rings that concerned everyone, and those that named any of `aggregate_types`.
    fn heard_by_any(&self, aggregate_types: &[&str]) -> (u64, u64) {
        let named = aggregate_types
            .iter()
            .map(|named| self.by_type.get(*named).copied().unwrap_or(0))
            .sum();
        (self.anything, named)
    }
}

/// One `LISTEN` connection shared by every log reader of a process: a task waits on a
/// [`LogDoorbell`] and counts the rings, each reader waiting for a count that concerns it. A
/// process then holds one listening connection however many projections it runs, which matters
/// for small pools: each listener holds a connection of its pool for good.
#[derive(Debug, Clone)]
pub struct SharedDoorbell {
    rings: tokio::sync::watch::Receiver<Rings>,
    poll_interval: Duration,
    /// The counts this reader last woke at (`Rings::heard_by`).
    heard: (u64, u64),
}

impl SharedDoorbell {
    /// Starts the listening task on `pool`; it ends once every reader is gone.
    pub fn spawn(pool: &PgPool, poll_interval: Duration) -> Self {
        let (counts, rings) = tokio::sync::watch::channel(Rings::default());
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut doorbell = LogDoorbell::connect(&pool, poll_interval).await;
            loop {
                let heard = tokio::select! {
                    () = counts.closed() => return,
                    heard = doorbell.wait() => heard,
                };
                match heard {
                    // Each reader polls on its own.
                    Rang::Quiet => {}
                    Rang::Anything => counts.send_modify(|rings| rings.anything += 1),
                    Rang::Commits(types) => counts.send_modify(|rings| {
                        for named in types {
                            *rings.by_type.entry(named).or_default() += 1;
                        }
                    }),
                }
            }
        });
        Self {
            rings,
            poll_interval,
            heard: (0, 0),
        }
    }

    /// Waits for the next ring that concerns readers of `aggregate_type`, or the polling
    /// interval, whichever comes first.
    /// A ring heard since this reader last woke counts: it wakes the reader at once.
    pub async fn wait_for(&mut self, aggregate_type: &str) {
        self.wait_for_any(&[aggregate_type]).await;
    }

    /// Waits for the next ring that concerns readers of any of `aggregate_types` (a reader of
    /// several waits with the same list each time), or the polling interval.
    pub async fn wait_for_any(&mut self, aggregate_types: &[&str]) {
        let heard = self.heard;
        let rings = &mut self.rings;
        let woken = tokio::time::timeout(
            self.poll_interval,
            rings.wait_for(|rings| rings.heard_by_any(aggregate_types) != heard),
        )
        .await;
        if let Ok(Ok(rings)) = woken {
            self.heard = rings.heard_by_any(aggregate_types);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rang;

    #[test]
    fn a_ring_concerns_the_readers_of_the_types_it_names_and_an_unnamed_one_everyone() {
        let mut rang = Rang::Quiet;
        rang.add("config,vm");
        rang.add("tenant");
        assert!(rang.concerns("vm") && rang.concerns("tenant") && rang.concerns("config"));
        assert!(!rang.concerns("other"));
        rang.add("");
        assert!(
            rang.concerns("other"),
            "a ring naming no type wakes everyone"
        );
        assert!(Rang::Quiet.concerns("vm"), "a quiet interval is a poll");
    }
}

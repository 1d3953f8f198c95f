//! The feed's live tail, shared by a process's live readers (ADR 0014): one task per tenant with
//! readers reads the feed once per change and keeps the latest events in memory; each reader that
//! has caught up takes them from there, so a thousand open streams cost one feed read per commit,
//! not a thousand. A reader further behind than the tail holds reads the feed itself until it
//! catches up. The tail is a contiguous stretch of the feed after its `base`, so a reader takes
//! exactly the events after its own cursor, once each, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use efms_domain::feed::{FeedPosition, Source, FEED_AGGREGATES};
use efms_projections::feed::{read_feed, FeedEvent};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// The most events a tail holds.
const HELD: usize = 2_048;
/// Events a tail reads at a time.
const READ: i64 = 500;

/// The tails of a process, one per tenant with live readers.
#[derive(Debug, Clone, Default)]
pub struct LiveFeed {
    tails: Arc<Mutex<HashMap<Uuid, Arc<Tail>>>>,
}

/// One tenant's tail.
#[derive(Debug)]
pub struct Tail {
    held: Mutex<Held>,
    /// Bumped at each change of `held`.
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct Held {
    /// Every event after this one is held (up to the last).
    base: FeedPosition,
    events: VecDeque<FeedEvent>,
}

/// What a reader after a position gets from a tail.
#[derive(Debug)]
pub enum Taken {
    /// The events after it (none when it is up to date).
    Events(Vec<FeedEvent>),
    /// It is further behind than the tail holds: read the feed.
    Behind,
}

impl Tail {
    /// The events after `after`, up to `limit`.
    pub fn after(&self, after: FeedPosition, limit: usize) -> Taken {
        let held = self.held.lock().expect("tail lock");
        if after < held.base {
            return Taken::Behind;
        }
        Taken::Events(
            held.events
                .iter()
                .filter(|event| event.at > after)
                .take(limit)
                .cloned()
                .collect(),
        )
    }

    /// A receiver that changes when the tail does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

impl LiveFeed {
    /// `tenant_id`'s tail, started on first use, and a receiver of its changes; the tail ends
    /// once no receiver is left.
    pub async fn tail(
        &self,
        pool: &PgPool,
        doorbell: &efms_commands::SharedDoorbell,
        tenant_id: Uuid,
    ) -> Result<(Arc<Tail>, watch::Receiver<u64>), sqlx::Error> {
        // Subscribing under the lock the tail's end is decided under: no reader is left behind.
        if let Some(tail) = self.tails.lock().expect("tails lock").get(&tenant_id) {
            return Ok((tail.clone(), tail.subscribe()));
        }
        // From now on: every transaction not yet visible to all is still ahead of it.
        let line = sqlx::query_scalar!(
            r#"SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1 AS "line!""#
        )
        .fetch_one(pool)
        .await?;
        let base = FeedPosition {
            tx_id: line,
            source: Source::Facts,
            position: i64::MAX,
        };
        let tail = {
            let mut tails = self.tails.lock().expect("tails lock");
            if let Some(tail) = tails.get(&tenant_id) {
                return Ok((tail.clone(), tail.subscribe()));
            }
            let tail = Arc::new(Tail {
                held: Mutex::new(Held {
                    base,
                    events: VecDeque::new(),
                }),
                changed: watch::Sender::new(0),
            });
            tails.insert(tenant_id, tail.clone());
            (tail.clone(), tail.subscribe())
        };
        tokio::spawn(self.clone().follow(
            pool.clone(),
            doorbell.clone(),
            tenant_id,
            tail.0.clone(),
        ));
        Ok(tail)
    }

    /// Keeps `tail` up to date until no reader is left.
    async fn follow(
        self,
        pool: PgPool,
        mut doorbell: efms_commands::SharedDoorbell,
        tenant_id: Uuid,
        tail: Arc<Tail>,
    ) {
        loop {
            let last = {
                let held = tail.held.lock().expect("tail lock");
                held.events.back().map_or(held.base, |event| event.at)
            };
            match read_feed(&pool, tenant_id, last, READ).await {
                Ok(events) if !events.is_empty() => {
                    let full = i64::try_from(events.len()).unwrap_or(i64::MAX) == READ;
                    {
                        let mut held = tail.held.lock().expect("tail lock");
                        held.events.extend(events);
                        while held.events.len() > HELD {
                            if let Some(evicted) = held.events.pop_front() {
                                held.base = evicted.at;
                            }
                        }
                    }
                    tail.changed.send_modify(|version| *version += 1);
                    if full {
                        continue;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, %tenant_id, "the live feed cannot read the feed");
                }
            }
            // Readers hold the tail (and a receiver each): with none left, the tail ends.
            if tail.changed.receiver_count() == 0 {
                let mut tails = self.tails.lock().expect("tails lock");
                if tail.changed.receiver_count() == 0 {
                    tails.remove(&tenant_id);
                    return;
                }
            }
            doorbell.wait_for_any(&FEED_AGGREGATES).await;
        }
    }
}

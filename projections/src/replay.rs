//! Rebuilding a read model from the log (`efms replay`): of every tenant, or of one.
//!
//! A replay runs in one transaction that holds the projection's checkpoint, so the running
//! projectors (of every tenant) wait for it and readers see the old rows until the new ones are
//! complete: a replay never shows an empty or half-built read model, and writes that wait for
//! the read models wait for it. In-memory caches of running servers are not told of a replay.
//! Of every tenant, it empties the read model and applies the log's events of the projection's
//! aggregate type up to the log's readable end, which becomes the checkpoint. Of one tenant, it empties
//! that tenant's rows and applies that tenant's events up to the checkpoint; the other tenants'
//! rows are not touched and the projector goes on from where it stood.

use std::time::{Duration, Instant};

use efms_commands::log::readable_end;
use efms_commands::{Position, RecordedEvent, Scope};
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::projector::{lock_checkpoint, store_checkpoint, whole_transactions, Range};
use crate::{Projection, ProjectionError, Projector};

/// How many events a replay reads at a time: more than the projector, which keeps its
/// transactions short, since a replay is one transaction whatever it reads at a time.
const REPLAY_BATCH: i64 = 5_000;

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Events applied.
    pub events: u64,
    /// Where the read model stands now.
    pub position: Position,
    /// How long it took.
    pub elapsed: Duration,
}

/// Which read model rows a replay rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// Every tenant's.
    All,
    /// One tenant's.
    Tenant(Uuid),
}

impl<P: Projection> Projector<P> {
    /// Rebuilds the read model's rows of `rebuild` from the log, in one transaction;
    /// `progress` hears the count of events applied after each batch.
    pub async fn replay(
        &self,
        rebuild: Rebuild,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Replayed, ProjectionError> {
        self.replay_with(rebuild, P::Replaying::default(), progress)
            .await
    }

    /// As [`Projector::replay`], starting from `replaying` (what the projection may hold back
    /// between batches, with its limits) rather than its default.
    pub async fn replay_with(
        &self,
        rebuild: Rebuild,
        mut replaying: P::Replaying,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Replayed, ProjectionError> {
        let started = Instant::now();
        let mut tx = Scope::System.begin(self.pool()).await?;
        let checkpoint = lock_checkpoint(&mut tx, P::NAME).await?;
        let range = match rebuild {
            Rebuild::All => {
                self.projection().reset(&mut tx).await?;
                // Up to where the log is readable now; what follows is the projector's.
                Range::AggregateType {
                    aggregate_type: P::AGGREGATE_TYPE,
                    upto: readable_end(&mut tx).await?,
                }
            }
            Rebuild::Tenant(tenant_id) => {
                self.projection().reset_tenant(&mut tx, tenant_id).await?;
                Range::Tenant {
                    tenant_id,
                    upto: checkpoint,
                }
            }
        };
        let (mut batches, reader) = read_ahead(self.pool().clone(), range);
        let applied = self
            .apply_batches(&mut tx, &mut batches, &mut replaying, progress)
            .await;
        if applied.is_err() {
            reader.abort();
        }
        let events = applied?;
        reader.await.map_err(|stopped| {
            ProjectionError::Database(sqlx::Error::Io(std::io::Error::other(stopped)))
        })??;
        self.projection().finish_replay(&mut tx, replaying).await?;
        let position = match range {
            Range::AggregateType { upto, .. } => {
                store_checkpoint(&mut tx, P::NAME, upto).await?;
                upto
            }
            _ => checkpoint,
        };
        tx.commit().await?;
        Ok(Replayed {
            events,
            position,
            elapsed: started.elapsed(),
        })
    }

    /// Applies the batches `read_ahead` reads, as they come; the count applied.
    async fn apply_batches(
        &self,
        tx: &mut PgConnection,
        batches: &mut mpsc::Receiver<Vec<RecordedEvent>>,
        replaying: &mut P::Replaying,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<u64, ProjectionError> {
        let mut events = 0;
        while let Some(batch) = batches.recv().await {
            self.projection()
                .replay_all(&mut *tx, &batch, replaying)
                .await?;
            events += u64::try_from(batch.len()).unwrap_or(u64::MAX);
            progress(events);
        }
        Ok(events)
    }
}

/// Reads `range` a batch at a time on a connection of its own, one batch ahead of the one being
/// applied, so that Postgres reading and efms decoding the log overlap with applying it. The
/// range ends at a position no event can be added before, so this connection reads what the
/// replay's own would.
fn read_ahead(
    pool: PgPool,
    range: Range,
) -> (
    mpsc::Receiver<Vec<RecordedEvent>>,
    JoinHandle<Result<(), sqlx::Error>>,
) {
    let (batches, received) = mpsc::channel(1);
    let reader = tokio::spawn(async move {
        let mut tx = Scope::System.begin(&pool).await?;
        efms_commands::log::read_in_commit_order(&mut tx).await?;
        let mut from = Position::START;
        loop {
            let (mut batch, _) = whole_transactions(&mut tx, from, range, REPLAY_BATCH).await?;
            let Some(last) = batch.last().map(|event| event.position) else {
                break;
            };
            from = last;
            // Of a read by type, the others' events (read without their payloads) only moved
            // the reading on.
            if let Range::AggregateType { aggregate_type, .. } = range {
                batch.retain(|event| event.aggregate_type == aggregate_type);
                if batch.is_empty() {
                    continue;
                }
            }
            if batches.send(batch).await.is_err() {
                // The replay stopped.
                break;
            }
        }
        tx.commit().await
    });
    (received, reader)
}

/// Below this many events (by the statistics), [`events_to_replay`] counts them.
const COUNTED_BELOW: i64 = 100_000;

/// How many events a replay of `rebuild` reads, for its progress: the log's (or the tenant's)
/// events now; of a large log, as Postgres's statistics estimate them (counting a million
/// events took a tenth of the replay).
pub async fn events_to_replay(
    pool: &sqlx::PgPool,
    rebuild: Rebuild,
) -> Result<u64, ProjectionError> {
    let mut tx = Scope::System.begin(pool).await?;
    let tenant = match rebuild {
        Rebuild::All => None,
        Rebuild::Tenant(tenant_id) => Some(tenant_id),
    };
    // The statistics' live rows, kept as rows are written (no `ANALYZE` needed), or the
    // planner's estimate.
    let estimate: i64 = sqlx::query_scalar(
        "SELECT GREATEST(COALESCE(sum(s.n_live_tup), 0), COALESCE(sum(GREATEST(c.reltuples, 0)), 0))::bigint
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_stat_user_tables s ON s.relid = i.inhrelid
         WHERE i.inhparent = 'events'::regclass",
    )
    .fetch_one(&mut *tx)
    .await?;
    let count = if tenant.is_none() && estimate >= COUNTED_BELOW {
        estimate
    } else {
        sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM events WHERE $1::uuid IS NULL OR tenant_id = $1"#,
            tenant
        )
        .fetch_one(&mut *tx)
        .await?
    };
    tx.commit().await?;
    Ok(u64::try_from(count).unwrap_or_default())
}

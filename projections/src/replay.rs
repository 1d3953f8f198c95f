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
//!
//! A verification (`efms verify`) rebuilds every tenant's rows up to the projection's checkpoint
//! in a transaction it rolls back, after comparing them with the rows that were there.

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

/// How many differing rows of each table a verification shows, each way.
const SHOWN: usize = 5;

/// Where a rebuild of every tenant's rows ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upto {
    /// Where the log is readable now (a replay).
    ReadableEnd,
    /// The projection's checkpoint (a verification: the rows kept are of that point).
    Checkpoint,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Events applied by the rebuild.
    pub events: u64,
    /// The tables whose rows differ from the rebuild's; empty when the read model is right.
    pub differences: Vec<TableDifference>,
    /// How long it took.
    pub elapsed: Duration,
}

/// Rows of one table found on one side only (at most a few of each, as JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDifference {
    /// The table.
    pub table: &'static str,
    /// Rows the read model held that the rebuild did not give.
    pub kept: Vec<String>,
    /// Rows the rebuild gave that the read model did not hold.
    pub rebuilt: Vec<String>,
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
        replaying: P::Replaying,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Replayed, ProjectionError> {
        let started = Instant::now();
        let mut tx = Scope::System.begin(self.pool()).await?;
        let (events, position) = self
            .rebuild_in(&mut tx, rebuild, Upto::ReadableEnd, replaying, progress)
            .await?;
        tx.commit().await?;
        Ok(Replayed {
            events,
            position,
            elapsed: started.elapsed(),
        })
    }

    /// Rebuilds the read model's rows of `rebuild` in `tx`, holding the projection's checkpoint:
    /// every tenant's up to `upto` (which becomes the checkpoint), or one tenant's up to the
    /// checkpoint. The events applied, and where the read model stands.
    async fn rebuild_in(
        &self,
        tx: &mut PgConnection,
        rebuild: Rebuild,
        upto: Upto,
        mut replaying: P::Replaying,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(u64, Position), ProjectionError> {
        let checkpoint = lock_checkpoint(&mut *tx, P::NAME).await?;
        let range = match rebuild {
            Rebuild::All => {
                self.projection().reset(&mut *tx).await?;
                Range::AggregateType {
                    aggregate_type: P::AGGREGATE_TYPE,
                    upto: match upto {
                        // Up to where the log is readable now; what follows is the projector's.
                        Upto::ReadableEnd => readable_end(&mut *tx).await?,
                        Upto::Checkpoint => checkpoint,
                    },
                }
            }
            Rebuild::Tenant(tenant_id) => {
                self.projection().reset_tenant(&mut *tx, tenant_id).await?;
                Range::Tenant {
                    tenant_id,
                    upto: checkpoint,
                }
            }
        };
        let (mut batches, reader) = read_ahead(self.pool().clone(), range);
        let applied = self
            .apply_batches(&mut *tx, &mut batches, &mut replaying, progress)
            .await;
        if applied.is_err() {
            reader.abort();
        }
        let events = applied?;
        reader.await.map_err(|stopped| {
            ProjectionError::Database(sqlx::Error::Io(std::io::Error::other(stopped)))
        })??;
        self.projection().finish_replay(&mut *tx, replaying).await?;
        let position = match range {
            Range::AggregateType { upto, .. } => {
                store_checkpoint(&mut *tx, P::NAME, upto).await?;
                upto
            }
            _ => checkpoint,
        };
        Ok((events, position))
    }

    /// Checks the read model against the log: rebuilds it, up to the checkpoint the projector
    /// keeps, in a transaction that is then rolled back, and compares every row of its tables
    /// with the rows it held. Changes nothing; the projector waits meanwhile.
    pub async fn verify(
        &self,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Verified, ProjectionError> {
        let started = Instant::now();
        let mut tx = Scope::System.begin(self.pool()).await?;
        // Taken first, so that the rows copied are those of the checkpoint rebuilt up to.
        lock_checkpoint(&mut tx, P::NAME).await?;
        for (index, table) in P::TABLES.iter().enumerate() {
            sqlx::query(&format!(
                "CREATE TEMPORARY TABLE efms_verify_{index} ON COMMIT DROP AS
                 SELECT to_jsonb(t)::text AS row FROM {table} t"
            ))
            .execute(&mut *tx)
            .await?;
        }
        let (events, _) = self
            .rebuild_in(
                &mut tx,
                Rebuild::All,
                Upto::Checkpoint,
                P::Replaying::default(),
                progress,
            )
            .await?;
        let mut differences = Vec::new();
        for (index, table) in P::TABLES.iter().enumerate() {
            let (kept, rebuilt): (Vec<String>, Vec<String>) = sqlx::query_as(&format!(
                "WITH kept AS (SELECT row FROM efms_verify_{index}),
                      rebuilt AS (SELECT to_jsonb(t)::text AS row FROM {table} t),
                      only_kept AS (SELECT row FROM kept EXCEPT ALL SELECT row FROM rebuilt),
                      only_rebuilt AS (SELECT row FROM rebuilt EXCEPT ALL SELECT row FROM kept)
                 SELECT ARRAY(SELECT row FROM only_kept ORDER BY row LIMIT {SHOWN}),
                        ARRAY(SELECT row FROM only_rebuilt ORDER BY row LIMIT {SHOWN})"
            ))
            .fetch_one(&mut *tx)
            .await?;
            if !kept.is_empty() || !rebuilt.is_empty() {
                differences.push(TableDifference {
                    table,
                    kept,
                    rebuilt,
                });
            }
        }
        tx.rollback().await?;
        Ok(Verified {
            events,
            differences,
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

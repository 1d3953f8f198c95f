//! Reads sent to a streaming replica (NFR-SC-002) without losing read-your-writes: a read goes
//! to the replica once it has replayed everything the primary had flushed when the read began,
//! which includes every write any client was answered; a replica further behind than the
//! bound, or not answering, leaves the read to the primary.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use prometheus_client::metrics::counter::Counter;
use sqlx::PgPool;

/// How often a read waiting for the replica asks again how far it has replayed.
const POLL: Duration = Duration::from_millis(2);

/// A replica and how long a read waits for it.
#[derive(Debug, Clone)]
struct Replica {
    pool: PgPool,
    wait: Duration,
}

/// Where reads go: the primary, or a replica once it has caught up.
#[derive(Debug, Clone)]
pub struct ReadRouting {
    primary: PgPool,
    replica: Arc<RwLock<Option<Replica>>>,
    /// Reads served by the replica.
    by_replica: Counter,
    /// Reads the replica could not take in time (or at all), served by the primary.
    by_primary: Counter,
}

impl ReadRouting {
    /// Every read to `primary`, until a replica is set; `metrics` count where reads went while
    /// one is.
    pub fn new(primary: PgPool, metrics: &crate::metrics::Metrics) -> Self {
        Self {
            primary,
            replica: Arc::new(RwLock::new(None)),
            by_replica: metrics.replica_reads.clone(),
            by_primary: metrics.replica_fallbacks.clone(),
        }
    }

    /// Sends reads to `replica` from now on, each waiting at most `wait` for it to catch up.
    pub fn set_replica(&self, replica: PgPool, wait: Duration) {
        let replica = Replica {
            pool: replica,
            wait,
        };
        *self
            .replica
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(replica);
    }

    /// The pool a read that begins now should use.
    pub async fn pool(&self) -> PgPool {
        let replica = self
            .replica
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(replica) = replica else {
            return self.primary.clone();
        };
        if caught_up(&self.primary, &replica).await {
            self.by_replica.inc();
            replica.pool
        } else {
            self.by_primary.inc();
            self.primary.clone()
        }
    }
}

/// Whether `replica` has replayed what `primary` has flushed now, within its wait.
async fn caught_up(primary: &PgPool, replica: &Replica) -> bool {
    let Ok(target) = sqlx::query_scalar::<_, String>("SELECT pg_current_wal_flush_lsn()::text")
        .fetch_one(primary)
        .await
    else {
        return false;
    };
    let started = Instant::now();
    loop {
        // NULL (so an error here) when the server is no replica at all.
        let replayed =
            sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                .bind(&target)
                .fetch_one(&replica.pool)
                .await;
        match replayed {
            Ok(true) => return true,
            Ok(false) if started.elapsed() < replica.wait => tokio::time::sleep(POLL).await,
            Ok(false) => return false,
            Err(error) => {
                tracing::warn!(%error, "the read replica does not answer: reading the primary");
                return false;
            }
        }
    }
}

/// The pool of a read handler: the replica when it has caught up, else the primary.
#[derive(Debug, Clone)]
pub struct Reads(pub PgPool);

impl<S> FromRequestParts<S> for Reads
where
    S: Send + Sync,
    ReadRouting: FromRef<S>,
{
    type Rejection = Infallible;

    async fn from_request_parts(_: &mut Parts, state: &S) -> Result<Self, Infallible> {
        Ok(Self(ReadRouting::from_ref(state).pool().await))
    }
}

//! Leases: background work that one replica must do (the fleet's sweep, sample retention) is
//! claimed for a while in the `leases` table by one holder; the holder renews it each round, and
//! another replica takes it over once it has expired.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::Scope;

/// What the wait of work done in turns under a lease came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// This holder has the lease: do a round of the work.
    Work,
    /// Another holder has it, it could not be claimed, or the settings changed: wait again.
    Again,
    /// Shut down (or the settings are gone): stop.
    Stop,
}

/// Waits `every` for the next round of work under `lease`, then claims it. A change of
/// `settings` ends the wait early (the round starts over with them), `shutdown` stops.
pub async fn next_turn<S>(
    lease: &mut Lease,
    every: Duration,
    settings: &mut tokio::sync::watch::Receiver<S>,
    shutdown: Pin<&mut (impl Future<Output = ()> + ?Sized)>,
) -> Turn {
    tokio::select! {
        () = shutdown => return Turn::Stop,
        () = tokio::time::sleep(every) => {}
        changed = settings.changed() => {
            return if changed.is_err() { Turn::Stop } else { Turn::Again };
        }
    }
    match lease.claim().await {
        Ok(true) => Turn::Work,
        Ok(false) => Turn::Again,
        Err(error) => {
            tracing::warn!(%error, lease = lease.name, "a lease cannot be claimed");
            Turn::Again
        }
    }
}

/// One replica's claim on named work.
#[derive(Debug, Clone)]
pub struct Lease {
    pool: PgPool,
    name: &'static str,
    holder: Uuid,
    ttl: Duration,
    /// When the last claim that held it was asked for.
    renewed: Option<Instant>,
}

impl Lease {
    /// A claim on `name` by a fresh holder, held `ttl` at a time.
    pub fn new(pool: PgPool, name: &'static str, ttl: Duration) -> Self {
        Self {
            pool,
            name,
            holder: Uuid::new_v4(),
            ttl,
            renewed: None,
        }
    }

    /// Holds it `ttl` at a time from the next claim on.
    pub fn set_ttl(&mut self, ttl: Duration) {
        if ttl != self.ttl {
            self.ttl = ttl;
            self.renewed = None;
        }
    }

    /// Like [`Lease::claim`], for a loop that turns many times a second: while less than a third
    /// of the `ttl` has passed since a claim that held it, it is still held (no one else may take
    /// it before it expires) and the database is not asked again.
    pub async fn keep(&mut self) -> Result<bool, sqlx::Error> {
        if self
            .renewed
            .is_some_and(|renewed| renewed.elapsed() < self.ttl / 3)
        {
            return Ok(true);
        }
        let asked = Instant::now();
        let held = self.claim().await?;
        self.renewed = held.then_some(asked);
        Ok(held)
    }

    /// Takes or renews the lease: `true` when this holder has it for the next `ttl`.
    pub async fn claim(&self) -> Result<bool, sqlx::Error> {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut tx = Scope::System.begin(&self.pool).await?;
        let held = sqlx::query_scalar!(
            r#"INSERT INTO leases (name, holder, expires_at)
               VALUES ($1, $2, now() + make_interval(secs => $3::bigint / 1000.0))
               ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
               WHERE leases.holder = excluded.holder OR leases.expires_at < now()
               RETURNING holder"#,
            self.name,
            self.holder,
            ttl_ms,
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(held == Some(self.holder))
    }
}

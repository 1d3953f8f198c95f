//! The purge of deleted tenants: once a deleted tenant's grace period is over, one replica (under
//! the lease `tenant-purge`) removes every row of it through `efms_purge_tenant`, the one path the
//! append-only tables allow, which leaves a record of what went in `tenant_deletions`.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::lease::{next_turn, Lease, Turn};
use crate::Scope;

/// How deleted tenants are kept and purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeSettings {
    /// How long a deleted tenant is kept, restorable, before it is purged.
    pub grace: Duration,
}

impl Default for PurgeSettings {
    fn default() -> Self {
        Self {
            grace: DEFAULT_PURGE_GRACE,
        }
    }
}

/// How long a deleted tenant is kept unless set otherwise: seven days.
pub const DEFAULT_PURGE_GRACE: Duration = Duration::from_secs(7 * 24 * 3_600);

impl PurgeSettings {
    /// How often tenants due for their purge are looked for: a quarter of the grace period,
    /// between 100 ms and a minute.
    pub fn every(&self) -> Duration {
        (self.grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }
}

/// A tenant purged, and how many rows of each table went with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    /// Its slug.
    pub slug: String,
    /// Rows removed, per table.
    pub rows: serde_json::Value,
}

/// Purges every deleted tenant whose grace period is over, each in its own transaction.
pub async fn purge_due(pool: &PgPool) -> Result<Vec<Purged>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT tenant_id, slug FROM tenants
         WHERE deleted_at IS NOT NULL AND purge_after <= now()
         ORDER BY purge_after",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut purged = Vec::with_capacity(due.len());
    for (tenant_id, slug) in due {
        let mut tx = Scope::System.begin(pool).await?;
        let rows: serde_json::Value = sqlx::query_scalar("SELECT efms_purge_tenant($1)")
            .bind(tenant_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(tenant = slug, %rows, "deleted tenant purged");
        purged.push(Purged { slug, rows });
    }
    Ok(purged)
}

/// Purges tenants as they fall due until `shutdown` resolves; `settings` may change meanwhile.
pub fn spawn(
    pool: PgPool,
    mut settings: watch::Receiver<PurgeSettings>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut lease = Lease::new(pool.clone(), "tenant-purge", Duration::from_secs(180));
        loop {
            let every = settings.borrow_and_update().every();
            lease.set_ttl(every * 3);
            match next_turn(&mut lease, every, &mut settings, shutdown.as_mut()).await {
                Turn::Stop => return,
                Turn::Again => continue,
                Turn::Work => {}
            }
            if let Err(error) = purge_due(&pool).await {
                tracing::error!(%error, "a deleted tenant's purge failed; it is tried again");
            }
        }
    })
}

//! Rebuilding a read model from the log (`efms replay`): of every tenant, or of one.
//!
//! A replay runs in one transaction that holds the projection's checkpoint, so the running
//! projectors (of every tenant) wait for it and readers see the old rows until the new ones are
//! complete: a replay never shows an empty or half-built read model, and writes that wait for
//! the read models wait for it. In-memory caches of running servers are not told of a replay. Of every tenant, it empties the read model and
//! applies the whole log up to its end, which becomes the checkpoint. Of one tenant, it empties
//! that tenant's rows and applies that tenant's events up to the checkpoint; the other tenants'
//! rows are not touched and the projector goes on from where it stood.

use std::time::{Duration, Instant};

use efms_commands::{Position, Scope};
use uuid::Uuid;

use crate::projector::{lock_checkpoint, store_checkpoint, whole_transactions, Range};
use crate::{Projection, ProjectionError, Projector};

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
        let started = Instant::now();
        let mut tx = Scope::System.begin(self.pool()).await?;
        let checkpoint = lock_checkpoint(&mut tx, P::NAME).await?;
        let range = match rebuild {
            Rebuild::All => {
                self.projection().reset(&mut tx).await?;
                Range::Log {
                    payloads_of: P::AGGREGATE_TYPE,
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
        let mut from = Position::START;
        let mut events = 0;
        loop {
            let (batch, _) = whole_transactions(&mut tx, from, range).await?;
            let Some(last) = batch.last().map(|event| event.position) else {
                break;
            };
            self.projection().apply_all(&mut tx, &batch).await?;
            from = last;
            events += u64::try_from(batch.len()).unwrap_or(u64::MAX);
            progress(events);
        }
        let position = match rebuild {
            Rebuild::All => {
                store_checkpoint(&mut tx, P::NAME, from).await?;
                from
            }
            Rebuild::Tenant(_) => checkpoint,
        };
        tx.commit().await?;
        Ok(Replayed {
            events,
            position,
            elapsed: started.elapsed(),
        })
    }
}

/// How many events a replay of `rebuild` reads, for its progress: the log's (or the tenant's)
/// events now.
pub async fn events_to_replay(
    pool: &sqlx::PgPool,
    rebuild: Rebuild,
) -> Result<u64, ProjectionError> {
    let mut tx = Scope::System.begin(pool).await?;
    let tenant = match rebuild {
        Rebuild::All => None,
        Rebuild::Tenant(tenant_id) => Some(tenant_id),
    };
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM events WHERE $1::uuid IS NULL OR tenant_id = $1"#,
        tenant
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(u64::try_from(count).unwrap_or_default())
}

//! `efms verify`: every read model checked against the log, as after a restore. Each is rebuilt
//! up to the point its projector reached, in a transaction rolled back once its rows are
//! compared with the ones kept; nothing changes, and the answer lists the tables that differ
//! with a few of their rows.

use efms_projections::{
    ConfigProjection, FleetProjection, Projection, Projector, RolloutProjection, TableDifference,
    TenantsProjection, Verified,
};
use sqlx::PgPool;

/// What one read model's verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadModelVerified {
    /// The projection's name.
    pub projection: &'static str,
    /// What its verification found.
    pub verified: Verified,
}

impl ReadModelVerified {
    /// Whether the read model equals its rebuild from the log.
    pub fn agrees(&self) -> bool {
        self.verified.differences.is_empty()
    }
}

/// Verifies every read model (the tenant registry, configuration, fleet, rollouts), one after
/// the other, logging each outcome.
pub async fn verify(pool: &PgPool) -> anyhow::Result<Vec<ReadModelVerified>> {
    Ok(vec![
        one(pool, TenantsProjection).await?,
        one(pool, ConfigProjection).await?,
        one(pool, FleetProjection).await?,
        one(pool, RolloutProjection).await?,
    ])
}

async fn one<P: Projection>(pool: &PgPool, projection: P) -> anyhow::Result<ReadModelVerified> {
    let verified = Projector::new(pool.clone(), projection)
        .verify(&mut |_| {})
        .await?;
    let seconds = verified.elapsed.as_secs_f64();
    if verified.differences.is_empty() {
        tracing::info!(
            projection = P::NAME,
            events = verified.events,
            seconds,
            "the read model equals its rebuild from the log"
        );
    } else {
        for difference in &verified.differences {
            report(P::NAME, difference);
        }
    }
    Ok(ReadModelVerified {
        projection: P::NAME,
        verified,
    })
}

fn report(projection: &str, difference: &TableDifference) {
    tracing::error!(
        projection,
        table = difference.table,
        only_kept = ?difference.kept,
        only_rebuilt = ?difference.rebuilt,
        "the read model differs from its rebuild from the log"
    );
}

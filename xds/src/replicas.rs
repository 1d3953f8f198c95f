//! A replica's lease on the streams it holds (ADR 0006): the status writer renews the replica's
//! row in `xds_replicas` and keeps, per proxy, how many of the proxy's streams this replica holds
//! (`proxy_replica_streams`). A replica that dies stops renewing; once its lease has expired, any
//! replica reaps it: its rows go, and its streams are taken off `proxies.streams`, so its proxies
//! read DISCONNECTED instead of connected to a replica that is gone. A replica that was reaped while
//! alive (Postgres unreachable longer than the lease) finds its row missing and writes back what
//! it holds.
//!
//! Reaping is safe for every replica to do at once (a lease row is deleted once), so each does it
//! when it renews its own; no claim is needed.

use std::collections::HashMap;
use std::time::Duration;

use efms_commands::Scope;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

/// How long a replica's lease lasts unless set: its proxies read DISCONNECTED at most this long,
/// plus one renewal period, after it dies.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// The shortest lease accepted.
pub const MIN_LEASE: Duration = Duration::from_secs(1);

/// How this replica announces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// How long its lease lasts; renewed every third of it.
    pub lease: Duration,
    /// The `host:port` proxies reach its gRPC listener at, listed in bootstraps.
    pub advertised: Option<String>,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            lease: DEFAULT_LEASE,
            advertised: None,
        }
    }
}

impl ReplicaSettings {
    /// How often the lease is renewed (and expired ones reaped).
    pub fn renewal(&self) -> Duration {
        self.lease.max(MIN_LEASE) / 3
    }
}

/// The streams this replica holds, per proxy (tenant, node id).
pub(crate) type Held = HashMap<(Uuid, String), i32>;

/// This replica's lease and what it has recorded under it. Owned by the status writer.
pub(crate) struct Replica {
    id: Uuid,
    settings: watch::Receiver<ReplicaSettings>,
    /// The streams this replica holds, as recorded (or to be recorded) in `proxy_replica_streams`.
    pub(crate) held: Held,
    /// What was recorded may differ from `held` (a batch was lost): write it all back.
    pub(crate) stale: bool,
}

impl Replica {
    pub(crate) fn new(id: Uuid, settings: watch::Receiver<ReplicaSettings>) -> Self {
        Self {
            id,
            settings,
            held: Held::new(),
            stale: true,
        }
    }

    /// The renewal period of the current settings.
    pub(crate) fn renewal(&self) -> Duration {
        self.settings.borrow().renewal()
    }

    /// Locks this replica's lease for a batch's transaction (so no reaper takes it meanwhile);
    /// false when there is no lease to lock, or what is recorded must be written back first.
    pub(crate) async fn hold(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<bool, sqlx::Error> {
        if self.stale {
            return Ok(false);
        }
        let found = sqlx::query_scalar!(
            "SELECT 1 AS \"one!\" FROM xds_replicas WHERE replica_id = $1 FOR SHARE",
            self.id
        )
        .fetch_optional(&mut **tx)
        .await?;
        Ok(found.is_some())
    }

    /// Records `after` (this replica's streams of the proxies a batch touched, zero for none).
    pub(crate) async fn record(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        after: &[((Uuid, String), i32)],
    ) -> Result<(), sqlx::Error> {
        let (tenants, nodes, streams) = columns(after.iter().map(|(key, n)| (key, *n)));
        sqlx::query!(
            r#"DELETE FROM proxy_replica_streams s
               USING UNNEST($1::uuid[], $2::text[], $3::int[]) AS u(t, n, c)
               WHERE s.replica_id = $4 AND s.tenant_id = u.t AND s.node_id = u.n AND u.c <= 0"#,
            &tenants,
            &nodes,
            &streams,
            self.id,
        )
        .execute(&mut **tx)
        .await?;
        sqlx::query!(
            r#"INSERT INTO proxy_replica_streams (tenant_id, node_id, replica_id, streams)
               SELECT u.t, u.n, $4, u.c FROM UNNEST($1::uuid[], $2::text[], $3::int[]) AS u(t, n, c)
               WHERE u.c > 0
                 AND EXISTS (SELECT 1 FROM proxies p WHERE p.tenant_id = u.t AND p.node_id = u.n)
               ON CONFLICT (tenant_id, node_id, replica_id) DO UPDATE SET streams = EXCLUDED.streams"#,
            &tenants,
            &nodes,
            &streams,
            self.id,
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Renews the lease (writing back everything held when the lease was reaped or a batch was
    /// lost), then reaps the replicas whose leases expired. Returns how many were reaped.
    pub(crate) async fn renew(&mut self, pool: &PgPool) -> Result<u64, sqlx::Error> {
        let settings = self.settings.borrow().clone();
        let lease = lease_seconds(&settings);
        let mut tx = Scope::System.begin(pool).await?;
        let renewed = sqlx::query!(
            r#"UPDATE xds_replicas
               SET renewed_at = now(), expires_at = now() + make_interval(secs => $2), advertised = $3
               WHERE replica_id = $1"#,
            self.id,
            lease,
            settings.advertised,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if renewed == 0 || self.stale {
            self.write_back(&mut tx, lease, settings.advertised.as_deref())
                .await?;
        }
        tx.commit().await?;
        self.stale = false;
        reap(pool).await
    }

    /// Takes (or takes again) the lease and makes `proxy_replica_streams` and `proxies.streams`
    /// hold exactly what this replica holds: each proxy's count moves by the difference between
    /// what is held and what was recorded.
    async fn write_back(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        lease: f64,
        advertised: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query!(
            r#"INSERT INTO xds_replicas (replica_id, advertised, version, expires_at)
               VALUES ($1, $2, $3, now() + make_interval(secs => $4))
               ON CONFLICT (replica_id) DO UPDATE
               SET renewed_at = now(), expires_at = EXCLUDED.expires_at, advertised = EXCLUDED.advertised"#,
            self.id,
            advertised,
            env!("CARGO_PKG_VERSION"),
            lease,
        )
        .execute(&mut **tx)
        .await?;
        let (tenants, nodes, streams) = columns(self.held.iter().map(|(key, n)| (key, *n)));
        sqlx::query!(
            r#"WITH held AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[]) AS u(t, n, c)),
                    recorded AS (SELECT tenant_id AS t, node_id AS n, streams AS c
                                 FROM proxy_replica_streams WHERE replica_id = $4),
                    change AS (SELECT coalesce(h.t, r.t) AS t, coalesce(h.n, r.n) AS n,
                                      coalesce(h.c, 0) - coalesce(r.c, 0) AS d
                               FROM held h FULL JOIN recorded r ON h.t = r.t AND h.n = r.n)
               UPDATE proxies p
               SET streams = greatest(p.streams + change.d, 0),
                   disconnected_at = CASE WHEN greatest(p.streams + change.d, 0) = 0
                                          THEN coalesce(p.disconnected_at, now()) END
               FROM change
               WHERE change.d <> 0 AND p.tenant_id = change.t AND p.node_id = change.n"#,
            &tenants,
            &nodes,
            &streams,
            self.id,
        )
        .execute(&mut **tx)
        .await?;
        sqlx::query!(
            "DELETE FROM proxy_replica_streams WHERE replica_id = $1",
            self.id
        )
        .execute(&mut **tx)
        .await?;
        let all: Vec<_> = self.held.iter().map(|(k, n)| (k.clone(), *n)).collect();
        self.record(tx, &all).await
    }

    /// Gives the lease up (a replica stopping): its rows and streams go at once.
    pub(crate) async fn release(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = Scope::System.begin(pool).await?;
        let released = sqlx::query_scalar!(
            "DELETE FROM xds_replicas WHERE replica_id = $1 RETURNING replica_id",
            self.id
        )
        .fetch_all(&mut *tx)
        .await?;
        take_off(&mut tx, &released).await?;
        tx.commit().await
    }
}

/// Reaps every replica whose lease expired: its rows go and its streams are taken off the proxies'
/// counts (a proxy it alone held turns disconnected now).
pub async fn reap(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    // The lease rows first: a replica's batch holds its row while it writes, so once this
    // statement returns, every row that replica recorded is visible to the next one.
    let dead = sqlx::query_scalar!(
        "DELETE FROM xds_replicas WHERE expires_at < now() RETURNING replica_id"
    )
    .fetch_all(&mut *tx)
    .await?;
    if dead.is_empty() {
        return Ok(0);
    }
    take_off(&mut tx, &dead).await?;
    tx.commit().await?;
    for replica in &dead {
        tracing::warn!(%replica, "an xDS replica's lease expired: its proxies' streams are counted as closed");
    }
    Ok(dead.len() as u64)
}

/// Removes the stream rows of `replicas` and takes their counts off the proxies.
async fn take_off(
    tx: &mut Transaction<'_, Postgres>,
    replicas: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"WITH gone AS (DELETE FROM proxy_replica_streams WHERE replica_id = ANY($1)
                         RETURNING tenant_id, node_id, streams),
                per_proxy AS (SELECT tenant_id, node_id, sum(streams)::int AS n FROM gone GROUP BY 1, 2)
           UPDATE proxies p
           SET streams = greatest(p.streams - per_proxy.n, 0),
               disconnected_at = CASE WHEN greatest(p.streams - per_proxy.n, 0) = 0
                                      THEN coalesce(p.disconnected_at, now()) END
           FROM per_proxy
           WHERE p.tenant_id = per_proxy.tenant_id AND p.node_id = per_proxy.node_id"#,
        replicas,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The addresses of the replicas whose leases are current, the oldest first: what a bootstrap
/// lists so that its proxy can move when a replica goes.
pub async fn advertised(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let addresses = sqlx::query_scalar!(
        r#"SELECT DISTINCT ON (advertised) advertised AS "advertised!" FROM xds_replicas
           WHERE expires_at > now() AND advertised IS NOT NULL
           ORDER BY advertised, started_at"#
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(addresses)
}

fn lease_seconds(settings: &ReplicaSettings) -> f64 {
    settings.lease.max(MIN_LEASE).as_secs_f64()
}

fn columns<'a>(
    rows: impl Iterator<Item = (&'a (Uuid, String), i32)>,
) -> (Vec<Uuid>, Vec<String>, Vec<i32>) {
    let mut tenants = Vec::new();
    let mut nodes = Vec::new();
    let mut streams = Vec::new();
    for ((tenant, node), n) in rows {
        tenants.push(*tenant);
        nodes.push(node.clone());
        streams.push(n);
    }
    (tenants, nodes, streams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_renewed_three_times_over_and_never_below_the_minimum() {
        let settings = ReplicaSettings {
            lease: Duration::from_secs(15),
            advertised: None,
        };
        assert_eq!(settings.renewal(), Duration::from_secs(5));
        let tiny = ReplicaSettings {
            lease: Duration::from_millis(10),
            advertised: None,
        };
        assert_eq!(tiny.renewal(), MIN_LEASE / 3);
    }
}

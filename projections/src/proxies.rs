//! What each proxy runs (DESIGN §7): reads over the status the xDS server records — connection,
//! and per resource type what was sent, accepted and refused — and over the history of acceptances
//! and refusals, which answers what a proxy ran at any moment.

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A proxy as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRow {
    /// Its `node.id`.
    pub node_id: String,
    /// The group it gets its configuration from.
    pub group_name: Option<String>,
    /// Its `node.cluster`.
    pub node_cluster: String,
    /// The Envoy version it reported.
    pub envoy_version: Option<String>,
    /// `sotw` or `delta`.
    pub protocol: String,
    /// Its open streams.
    pub streams: i32,
    /// When it last connected.
    pub connected_at: DateTime<Utc>,
    /// When its last stream ended, if none is open.
    pub disconnected_at: Option<DateTime<Utc>>,
    /// When it was last heard from.
    pub last_seen_at: DateTime<Utc>,
    /// When the agent on its VM last compared its `config_dump` with what it ACKed.
    pub config_checked_at: Option<DateTime<Utc>>,
    /// Why the last decided comparison found it holding something else.
    pub config_diverged: Option<String>,
    /// Since when it does.
    pub config_diverged_since: Option<DateTime<Utc>>,
}

/// Where a proxy stands on one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncState {
    /// It accepted the last version sent.
    Synced,
    /// A version was sent and is not answered yet, or the proxy runs an older one.
    Stale,
    /// It refused the last version sent.
    Nacked,
    /// Nothing of this type was sent to it.
    NotSent,
}

/// A proxy's status on one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeStatusRow {
    /// The type URL.
    pub type_url: String,
    /// The last version sent, its revision and time.
    pub sent_version: Option<String>,
    /// The revision the last version sent was built at.
    pub sent_revision: Option<i64>,
    /// When it was sent.
    pub sent_at: Option<DateTime<Utc>>,
    /// The last version accepted.
    pub acked_version: Option<String>,
    /// The revision it was built at.
    pub acked_revision: Option<i64>,
    /// When it was accepted.
    pub acked_at: Option<DateTime<Utc>>,
    /// The last version refused.
    pub nacked_version: Option<String>,
    /// When it was refused.
    pub nacked_at: Option<DateTime<Utc>>,
    /// Envoy's error for the last refusal.
    pub error_detail: Option<String>,
}

impl SyncState {
    /// A proxy's status from its per-type ones: NOT_SENT before anything was sent, NACKED if any
    /// type is, SYNCED when every type sent is, else STALE.
    pub fn overall(states: &[SyncState]) -> SyncState {
        if states.is_empty() {
            SyncState::NotSent
        } else if states.contains(&SyncState::Nacked) {
            SyncState::Nacked
        } else if states
            .iter()
            .all(|state| matches!(state, SyncState::Synced | SyncState::NotSent))
        {
            SyncState::Synced
        } else {
            SyncState::Stale
        }
    }
}

impl TypeStatusRow {
    /// SYNCED, STALE, NACKED or NOT_SENT, from what was sent, accepted and refused last.
    pub fn state(&self) -> SyncState {
        let Some(sent) = &self.sent_version else {
            return SyncState::NotSent;
        };
        let after_sent = |at: Option<DateTime<Utc>>| match (at, self.sent_at) {
            (Some(at), Some(sent_at)) => at >= sent_at,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if self.nacked_version.as_ref() == Some(sent) && after_sent(self.nacked_at) {
            SyncState::Nacked
        } else if self.acked_version.as_ref() == Some(sent) && after_sent(self.acked_at) {
            SyncState::Synced
        } else {
            SyncState::Stale
        }
    }
}

/// What a proxy accepted last of one type, as of some moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RanRow {
    /// The type URL.
    pub type_url: String,
    /// The version it ran.
    pub version: String,
    /// The revision that version was built at.
    pub revision: Option<i64>,
    /// When it accepted it.
    pub at: DateTime<Utc>,
}

/// The proxies of a tenant, by node id after `after`, at most `limit`; only those of `group` when
/// given.
pub async fn list_proxies(
    pool: &PgPool,
    tenant_id: Uuid,
    group: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<ProxyRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        ProxyRow,
        r#"SELECT node_id, group_name, node_cluster, envoy_version, protocol, streams, connected_at,
                  disconnected_at, last_seen_at, config_checked_at, config_diverged,
                  config_diverged_since
           FROM proxies
           WHERE tenant_id = $1 AND ($2::text IS NULL OR group_name = $2)
             AND ($3::text IS NULL OR node_id > $3)
           ORDER BY node_id LIMIT $4"#,
        tenant_id,
        group,
        after,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// One proxy.
pub async fn get_proxy(
    pool: &PgPool,
    tenant_id: Uuid,
    node_id: &str,
) -> Result<Option<ProxyRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let row = sqlx::query_as!(
        ProxyRow,
        r#"SELECT node_id, group_name, node_cluster, envoy_version, protocol, streams, connected_at,
                  disconnected_at, last_seen_at, config_checked_at, config_diverged,
                  config_diverged_since
           FROM proxies WHERE tenant_id = $1 AND node_id = $2"#,
        tenant_id,
        node_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

/// The per-type status of the proxies `node_ids`, as `(node_id, status)`.
pub async fn type_statuses(
    pool: &PgPool,
    tenant_id: Uuid,
    node_ids: &[String],
) -> Result<Vec<(String, TypeStatusRow)>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT node_id, type_url, sent_version, sent_revision, sent_at, acked_version, acked_revision,
                  acked_at, nacked_version, nacked_at, error_detail
           FROM proxy_resource_status
           WHERE tenant_id = $1 AND node_id = ANY($2)
           ORDER BY node_id, type_url"#,
        tenant_id,
        node_ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.node_id,
                TypeStatusRow {
                    type_url: row.type_url,
                    sent_version: row.sent_version,
                    sent_revision: row.sent_revision,
                    sent_at: row.sent_at,
                    acked_version: row.acked_version,
                    acked_revision: row.acked_revision,
                    acked_at: row.acked_at,
                    nacked_version: row.nacked_version,
                    nacked_at: row.nacked_at,
                    error_detail: row.error_detail,
                },
            )
        })
        .collect())
}

/// Per type, the last version the proxy accepted at or before `at`.
pub async fn ran_at(
    pool: &PgPool,
    tenant_id: Uuid,
    node_id: &str,
    at: DateTime<Utc>,
) -> Result<Vec<RanRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        RanRow,
        r#"SELECT DISTINCT ON (type_url) type_url AS "type_url!", version AS "version!", revision,
                  at AS "at!"
           FROM proxy_history
           WHERE tenant_id = $1 AND node_id = $2 AND outcome = 'acked' AND at <= $3
           ORDER BY type_url, at DESC, seq DESC"#,
        tenant_id,
        node_id,
        at,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// One accepted or refused version, from a proxy's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRow {
    /// Its place in the history (the cursor of the next page).
    pub seq: i64,
    /// The type URL.
    pub type_url: String,
    /// When.
    pub at: DateTime<Utc>,
    /// `acked` or `nacked`.
    pub outcome: String,
    /// The version accepted or refused.
    pub version: String,
    /// The revision it was built at.
    pub revision: Option<i64>,
    /// Envoy's error, for a refusal.
    pub error_detail: Option<String>,
}

/// A proxy's accepted and refused versions, newest first, before `before` (a `seq`).
pub async fn transitions(
    pool: &PgPool,
    tenant_id: Uuid,
    node_id: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<TransitionRow>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query_as!(
        TransitionRow,
        r#"SELECT seq AS "seq!", type_url AS "type_url!", at AS "at!", outcome AS "outcome!",
                  version AS "version!", revision, error_detail
           FROM proxy_history
           WHERE tenant_id = $1 AND node_id = $2 AND ($3::bigint IS NULL OR seq < $3)
           ORDER BY seq DESC LIMIT $4"#,
        tenant_id,
        node_id,
        before,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows)
}

/// The tenant's `proxies` quota, if it has one.
pub async fn proxy_limit(pool: &PgPool, tenant_id: Uuid) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let limit = sqlx::query_scalar!(
        "SELECT proxies FROM tenant_quotas WHERE tenant_id = $1",
        tenant_id,
    )
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    tx.commit().await?;
    Ok(limit.map(i64::from))
}

/// The tenant's `proxies` quota and how many other proxies are connected, when another proxy than
/// `node_id` (already connected ones are let back in) would go over it; `None` when within it.
///
/// Connections are counted from the status table, which the xDS servers write in batches: proxies
/// connecting in the same instant can overshoot the limit by what the table does not show yet.
pub async fn over_proxy_quota(
    pool: &PgPool,
    tenant_id: Uuid,
    node_id: &str,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let row = sqlx::query!(
        r#"SELECT q.proxies AS "limit!",
                  (SELECT count(*) FROM proxies p
                   WHERE p.tenant_id = $1 AND p.streams > 0 AND p.node_id <> $2) AS "others!",
                  EXISTS (SELECT 1 FROM proxies p
                          WHERE p.tenant_id = $1 AND p.node_id = $2 AND p.streams > 0) AS "connected!"
           FROM tenant_quotas q WHERE q.tenant_id = $1 AND q.proxies IS NOT NULL"#,
        tenant_id,
        node_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row
        .filter(|row| !row.connected && row.others >= i64::from(row.limit))
        .map(|row| (i64::from(row.limit), row.others)))
}

/// The Envoy versions of the tenant's proxies that accepted configuration on their current
/// connection (the rows of a node id outlive the proxy that wrote them).
pub async fn accepted_versions(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let versions = sqlx::query_scalar!(
        r#"SELECT DISTINCT p.envoy_version AS "envoy_version!"
           FROM proxies p
           WHERE p.tenant_id = $1 AND p.envoy_version IS NOT NULL
             AND EXISTS (SELECT 1 FROM proxy_resource_status s
                         WHERE s.tenant_id = p.tenant_id AND s.node_id = p.node_id
                           AND s.acked_version IS NOT NULL AND s.acked_at >= p.connected_at)"#,
        tenant_id,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> TypeStatusRow {
        TypeStatusRow {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned(),
            sent_version: None,
            sent_revision: None,
            sent_at: None,
            acked_version: None,
            acked_revision: None,
            acked_at: None,
            nacked_version: None,
            nacked_at: None,
            error_detail: None,
        }
    }

    #[test]
    fn the_state_follows_the_last_version_sent() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0);
        let mut status = row();
        assert_eq!(status.state(), SyncState::NotSent);
        status.sent_version = Some("b".to_owned());
        status.sent_at = t(10);
        status.acked_version = Some("a".to_owned());
        status.acked_at = t(5);
        assert_eq!(status.state(), SyncState::Stale);
        status.nacked_version = Some("b".to_owned());
        status.nacked_at = t(11);
        assert_eq!(status.state(), SyncState::Nacked);
        status.sent_version = Some("c".to_owned());
        status.sent_at = t(12);
        assert_eq!(status.state(), SyncState::Stale);
        status.acked_version = Some("c".to_owned());
        status.acked_at = t(13);
        assert_eq!(status.state(), SyncState::Synced);
    }
}

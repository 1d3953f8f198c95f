//! What holds now for each kind of rule: the subjects its condition holds for, since when (when
//! the state says), and a sentence saying what is wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use efms_commands::Scope;
use efms_domain::alerts::Condition;
use efms_projections::drift::{drift, DriftState};
use efms_projections::proxies::{list_proxies, type_statuses, TypeStatusRow};
use sqlx::PgPool;

use super::{certificates, metrics};
use uuid::Uuid;

/// The most proxies a proxy rule looks at in one tenant.
const MOST_PROXIES: i64 = 100_000;
/// How long a proxy may take to accept what it was sent before it counts as behind.
const BEHIND_AFTER: TimeDelta = TimeDelta::seconds(10);

/// A subject a condition holds for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What: `proxy/{node}`, `vm/{name}`, `container/{id}`, `secret/{name}`.
    pub subject: String,
    /// Since when it holds, when known (else since the evaluation first saw it).
    pub since: Option<DateTime<Utc>>,
    /// What is wrong.
    pub summary: String,
}

fn interval(window: Duration) -> f64 {
    window.as_secs_f64()
}

/// The subjects `condition` holds for in `tenant_id` now.
pub async fn findings(
    pool: &PgPool,
    tenant_id: Uuid,
    condition: Condition,
) -> Result<Vec<Finding>, sqlx::Error> {
    match condition {
        Condition::ProxyNacked => proxies(pool, tenant_id, DriftState::Nacked).await,
        Condition::ProxyBehind => proxies(pool, tenant_id, DriftState::Behind).await,
        Condition::ProxyDisconnected => proxies(pool, tenant_id, DriftState::Disconnected).await,
        Condition::VmDown => vms_down(pool, tenant_id).await,
        Condition::ContainerExited => containers_exited(pool, tenant_id).await,
        Condition::ContainerRestarting { count, window } => {
            containers_restarting(pool, tenant_id, count, window).await
        }
        Condition::ContainerOomKilled { window } => {
            containers_oom_killed(pool, tenant_id, window).await
        }
        Condition::ContainerUnhealthy => containers_unhealthy(pool, tenant_id).await,
        Condition::Route5xxRatio {
            ratio,
            window,
            min_requests,
        } => metrics::route_5xx_ratio(pool, tenant_id, (ratio, window, min_requests)).await,
        Condition::RouteP99 {
            ms,
            window,
            min_requests,
        } => metrics::route_p99(pool, tenant_id, (ms, window, min_requests)).await,
        Condition::Route5xxAnomaly {
            k,
            floor,
            window,
            baseline,
            min_requests,
        } => {
            let rule = metrics::Anomaly {
                k,
                floor,
                window,
                baseline,
                min_requests,
            };
            metrics::route_5xx_anomaly(pool, tenant_id, rule).await
        }
        Condition::ClusterHealthyBelow { percent } => {
            metrics::cluster_healthy_below(pool, tenant_id, percent).await
        }
        Condition::TlsCertificateExpiring { days } => {
            certificates::tls_expiring(pool, tenant_id, days).await
        }
    }
}

/// The proxies of `tenant_id` whose drift state is `wanted`.
async fn proxies(
    pool: &PgPool,
    tenant_id: Uuid,
    wanted: DriftState,
) -> Result<Vec<Finding>, sqlx::Error> {
    let rows = list_proxies(pool, tenant_id, None, None, MOST_PROXIES).await?;
    let ids: Vec<String> = rows.iter().map(|row| row.node_id.clone()).collect();
    let mut types: BTreeMap<String, Vec<TypeStatusRow>> = BTreeMap::new();
    for (node, row) in type_statuses(pool, tenant_id, &ids).await? {
        types.entry(node).or_default().push(row);
    }
    let now = Utc::now();
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let node_types = types.get(&row.node_id).map_or(&[][..], Vec::as_slice);
            let drift = drift(&row, node_types, now, BEHIND_AFTER);
            (drift.state == wanted).then(|| Finding {
                summary: format!(
                    "proxy {}: {}",
                    row.node_id,
                    drift.why.unwrap_or_else(|| format!("{wanted:?}"))
                ),
                subject: format!("proxy/{}", row.node_id),
                since: drift.since,
            })
        })
        .collect())
}

/// The findings of [`Condition::VmDown`].
async fn vms_down(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Finding>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        "SELECT name, state_since, state_reason FROM vms WHERE tenant_id = $1 AND state = 'down'",
        tenant_id
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| Finding {
            subject: format!("vm/{}", row.name),
            since: Some(row.state_since),
            summary: format!("VM {} is down: {}", row.name, row.state_reason),
        })
        .collect())
}

/// The findings of [`Condition::ContainerExited`].
async fn containers_exited(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Finding>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT container_id, name, vm_name, state, exit_code, finished_at
           FROM containers
           WHERE tenant_id = $1 AND gone_at IS NULL AND state IN ('exited', 'dead')"#,
        tenant_id
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| Finding {
            subject: format!("container/{}", row.container_id),
            since: row.finished_at,
            summary: format!(
                "container {} on {} is {} (exit code {})",
                row.name,
                row.vm_name,
                row.state,
                row.exit_code
                    .map_or_else(|| "unknown".to_owned(), |code| code.to_string())
            ),
        })
        .collect())
}

/// The findings of [`Condition::ContainerRestarting`].
async fn containers_restarting(
    pool: &PgPool,
    tenant_id: Uuid,
    count: u32,
    window: Duration,
) -> Result<Vec<Finding>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT h.container_id, max(c.name) AS "name!", max(h.vm_name) AS "vm!",
                  count(*) AS "deaths!", min(h.at) AS "first!"
           FROM container_history h
           JOIN containers c ON c.tenant_id = h.tenant_id AND c.container_id = h.container_id
           WHERE h.tenant_id = $1 AND h.change = 'die' AND c.gone_at IS NULL
             AND h.at > now() - make_interval(secs => $2::float8)
           GROUP BY h.container_id
           HAVING count(*) > $3"#,
        tenant_id,
        interval(window),
        i64::from(count),
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| Finding {
            subject: format!("container/{}", row.container_id),
            since: Some(row.first),
            summary: format!(
                "container {} on {} died {} times within {}s",
                row.name,
                row.vm,
                row.deaths,
                window.as_secs()
            ),
        })
        .collect())
}

/// The findings of [`Condition::ContainerOomKilled`].
async fn containers_oom_killed(
    pool: &PgPool,
    tenant_id: Uuid,
    window: Duration,
) -> Result<Vec<Finding>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT container_id, max(vm_name) AS "vm!", max(at) AS "last!", count(*) AS "kills!"
           FROM container_history
           WHERE tenant_id = $1 AND change = 'oom'
             AND at > now() - make_interval(secs => $2::float8)
           GROUP BY container_id"#,
        tenant_id,
        interval(window),
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| Finding {
            subject: format!("container/{}", row.container_id),
            since: Some(row.last),
            summary: format!(
                "the OOM killer struck in container {} on {} ({} times within {}s)",
                &row.container_id[..12.min(row.container_id.len())],
                row.vm,
                row.kills,
                window.as_secs()
            ),
        })
        .collect())
}

/// The findings of [`Condition::ContainerUnhealthy`].
async fn containers_unhealthy(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Finding>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT c.container_id, c.name, c.vm_name,
                  (SELECT max(h.at) FROM container_history h
                   WHERE h.tenant_id = c.tenant_id AND h.container_id = c.container_id
                     AND h.change = 'health_status' AND h.health = 'unhealthy') AS since
           FROM containers c
           WHERE c.tenant_id = $1 AND c.gone_at IS NULL AND c.health = 'unhealthy'"#,
        tenant_id
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| Finding {
            subject: format!("container/{}", row.container_id),
            since: row.since,
            summary: format!("container {} on {} is unhealthy", row.name, row.vm_name),
        })
        .collect())
}

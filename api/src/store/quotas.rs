//! The `tenant_quotas` table and the usage counted against it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use sqlx::PgPool;
use uuid::Uuid;

/// A tenant's limits as stored; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredLimits {
    /// The most resources of one kind on one branch.
    pub resources_per_kind: Option<i32>,
    /// The most configuration commits in any minute.
    pub writes_per_minute: Option<i32>,
    /// The most proxies connected at once.
    pub proxies: Option<i32>,
}

/// Who set a tenant's limits, and when.
#[derive(Debug, Clone)]
pub struct LimitsSet {
    /// The limits.
    pub limits: StoredLimits,
    /// When they were set.
    pub updated_at: DateTime<Utc>,
    /// Who set them.
    pub updated_by: String,
}

/// What a tenant uses now.
#[derive(Debug, Clone)]
pub struct Usage {
    /// Resources per kind on `main`.
    pub resources: BTreeMap<String, i64>,
    /// Configuration commits in the last minute, all branches.
    pub writes_last_minute: i64,
    /// Proxies connected now.
    pub proxies_connected: i64,
}

/// Sets a tenant's limits.
pub async fn set(
    pool: &PgPool,
    tenant_id: Uuid,
    limits: StoredLimits,
    updated_by: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    sqlx::query!(
        r#"INSERT INTO tenant_quotas (tenant_id, resources_per_kind, writes_per_minute, proxies,
                                      updated_by)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id) DO UPDATE
           SET resources_per_kind = EXCLUDED.resources_per_kind,
               writes_per_minute = EXCLUDED.writes_per_minute,
               proxies = EXCLUDED.proxies,
               updated_at = now(), updated_by = EXCLUDED.updated_by"#,
        tenant_id,
        limits.resources_per_kind,
        limits.writes_per_minute,
        limits.proxies,
        updated_by,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A tenant's limits (if ever set) and its usage, read in one transaction.
pub async fn limits_and_usage(
    pool: &PgPool,
    tenant_id: Uuid,
) -> Result<(Option<LimitsSet>, Usage), sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let row = sqlx::query!(
        r#"SELECT resources_per_kind, writes_per_minute, proxies, updated_at, updated_by
           FROM tenant_quotas WHERE tenant_id = $1"#,
        tenant_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let resources = sqlx::query!(
        r#"SELECT kind, count(*) AS "count!" FROM config_resources
           WHERE tenant_id = $1 AND branch = 'main' GROUP BY kind ORDER BY kind"#,
        tenant_id,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| (row.kind, row.count))
    .collect();
    let writes_last_minute =
        efms_commands::configuration::quotas::recent_writes(&mut tx, tenant_id).await?;
    let proxies_connected = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM proxies WHERE tenant_id = $1 AND streams > 0"#,
        tenant_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let set = row.map(|row| LimitsSet {
        limits: StoredLimits {
            resources_per_kind: row.resources_per_kind,
            writes_per_minute: row.writes_per_minute,
            proxies: row.proxies,
        },
        updated_at: row.updated_at,
        updated_by: row.updated_by,
    });
    Ok((
        set,
        Usage {
            resources,
            writes_last_minute,
            proxies_connected,
        },
    ))
}

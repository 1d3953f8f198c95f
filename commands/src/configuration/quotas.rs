//! Quotas (FR-MT-004): writes per minute, checked before a commit, and resources per kind, which
//! the aggregate checks on its own counts when it decides the commit (so racing writers cannot
//! pass it, and the check costs what the commit changes, not what the tenant holds).
//!
//! Writes are counted before the commit, so writers racing each other can overshoot the
//! `writes_per_minute` quota by the race.

use efms_domain::config::ConfigCommand;
use sqlx::PgPool;
use uuid::Uuid;

use super::ConfigServiceError;
use crate::scope::Scope;

/// Refuses `command` when the tenant's `writes_per_minute` quota is reached; returns its
/// `resources_per_kind` quota, for the aggregate to hold the commit to.
pub async fn check(
    pool: &PgPool,
    tenant_id: Uuid,
    command: &ConfigCommand,
) -> Result<Option<u32>, ConfigServiceError> {
    if matches!(
        command,
        ConfigCommand::Fork { .. } | ConfigCommand::DeleteBranch
    ) {
        return Ok(None);
    }
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let Some(limits) = sqlx::query!(
        "SELECT resources_per_kind, writes_per_minute FROM tenant_quotas WHERE tenant_id = $1",
        tenant_id,
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    if let Some(limit) = limits.writes_per_minute {
        let recent = recent_writes(&mut tx, tenant_id).await?;
        if recent >= i64::from(limit) {
            return Err(ConfigServiceError::RateLimited {
                detail: format!(
                    "quota `writes_per_minute` ({limit}) is reached: {recent} commits in the last minute"
                ),
                retry_after_seconds: 60,
            });
        }
    }
    tx.commit().await?;
    Ok(limits
        .resources_per_kind
        .map(|limit| u32::try_from(limit).unwrap_or(0)))
}

/// Commits of the tenant within the last minute, on every branch.
pub async fn recent_writes(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM config_revisions
           WHERE tenant_id = $1 AND recorded_at > now() - interval '1 minute'"#,
        tenant_id,
    )
    .fetch_one(&mut *tx)
    .await
}

//! Quotas (FR-MT-004): writes per minute and resources per kind, checked before a commit.
//!
//! Counts are read before the commit, so writers racing each other can overshoot a quota by the
//! race.

use std::collections::BTreeMap;

use efms_domain::config::{Change, ConfigCommand};
use sqlx::PgPool;
use uuid::Uuid;

use super::ConfigServiceError;
use crate::scope::Scope;

/// Refuses `command` on `branch` when it would go over one of the tenant's quotas.
pub async fn check(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    command: &ConfigCommand,
) -> Result<(), ConfigServiceError> {
    if matches!(
        command,
        ConfigCommand::Fork { .. } | ConfigCommand::DeleteBranch
    ) {
        return Ok(());
    }
    let changes = command.edits();
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let Some(limits) = sqlx::query!(
        "SELECT resources_per_kind, writes_per_minute FROM tenant_quotas WHERE tenant_id = $1",
        tenant_id,
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
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
    if let Some(limit) = limits.resources_per_kind {
        // The change in count per kind: creations add one, deletions remove one.
        let (kinds, names): (Vec<String>, Vec<String>) = changes
            .iter()
            .map(|change| {
                let (kind, name) = change.key();
                (kind.to_string(), name.to_owned())
            })
            .unzip();
        let existing: std::collections::HashSet<(String, String)> = sqlx::query!(
            r#"SELECT r.kind, r.name FROM config_resources r
               JOIN UNNEST($3::text[], $4::text[]) AS u(kind, name)
                 ON r.kind = u.kind AND r.name = u.name
               WHERE r.tenant_id = $1 AND r.branch = $2"#,
            tenant_id,
            branch,
            &kinds,
            &names,
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| (row.kind, row.name))
        .collect();
        let mut delta: BTreeMap<String, i64> = BTreeMap::new();
        for change in changes {
            let (kind, name) = change.key();
            let exists = existing.contains(&(kind.to_string(), name.to_owned()));
            let step = match change {
                Change::Delete { .. } if exists => -1,
                Change::Put { .. } | Change::Derive { .. } if !exists => 1,
                _ => 0,
            };
            *delta.entry(kind.to_string()).or_default() += step;
        }
        let growing: Vec<String> = delta
            .iter()
            .filter(|(_, step)| **step > 0)
            .map(|(kind, _)| kind.clone())
            .collect();
        if !growing.is_empty() {
            let counts = sqlx::query!(
                r#"SELECT kind, count(*) AS "count!" FROM config_resources
                   WHERE tenant_id = $1 AND branch = $2 AND kind = ANY($3) GROUP BY kind"#,
                tenant_id,
                branch,
                &growing,
            )
            .fetch_all(&mut *tx)
            .await?;
            for kind in &growing {
                let now = counts
                    .iter()
                    .find(|row| &row.kind == kind)
                    .map_or(0, |row| row.count);
                let after = now + delta[kind];
                if after > i64::from(limit) {
                    return Err(ConfigServiceError::QuotaExceeded(format!(
                        "quota `resources_per_kind` ({limit}): this would make {after} {kind} resources on `{branch}`"
                    )));
                }
            }
        }
    }
    tx.commit().await?;
    Ok(())
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

//! What a revision changed and when it reached the proxies: the two facts that judging a change
//! by its effect needs (the series come from [`crate::telemetry`]).

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use sqlx::PgPool;
use uuid::Uuid;

/// A revision of the main branch, as its effect is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionReach {
    /// When it was committed.
    pub recorded_at: DateTime<Utc>,
    /// When a proxy first accepted a version built at it or later (`None`: none did yet).
    pub reached_at: Option<DateTime<Utc>>,
    /// The route configurations and clusters it created, replaced or deleted: (kind, name,
    /// change).
    pub changed: Vec<(String, String, String)>,
}

/// Revision `revision` of `branch`, its changed route configurations and clusters, and when it
/// reached the proxies; `None` when there is no such revision.
pub async fn revision_reach(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    revision: i64,
) -> Result<Option<RevisionReach>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let recorded_at = sqlx::query_scalar!(
        "SELECT recorded_at FROM config_revisions WHERE tenant_id = $1 AND branch = $2 AND revision = $3",
        tenant_id,
        branch,
        revision,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(recorded_at) = recorded_at else {
        return Ok(None);
    };
    let changed = sqlx::query!(
        r#"SELECT kind, name, change FROM config_resource_versions
           WHERE tenant_id = $1 AND branch = $2 AND kind = ANY(ARRAY['route', 'cluster'])
             AND valid_from = $3
           ORDER BY kind, name"#,
        tenant_id,
        branch,
        revision,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|row| (row.kind, row.name, row.change))
    .collect();
    let reached_at = sqlx::query_scalar!(
        r#"SELECT min(at) FROM proxy_history
           WHERE tenant_id = $1 AND outcome = 'acked' AND revision >= $2 AND at >= $3"#,
        tenant_id,
        revision,
        recorded_at,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(RevisionReach {
        recorded_at,
        reached_at,
        changed,
    }))
}

//! Canaries through branches: a group on `main` may pin its proxies to a branch only if that
//! branch is live and has the group.

use efms_domain::config::{Change, MAIN_BRANCH};
use efms_domain::envoy::ResourceKind;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::ConfigServiceError;
use crate::scope::Scope;

/// Refuses a change to a group on `main` whose `branch` names no live branch that has the group.
pub async fn check(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    changes: &[Change],
) -> Result<(), ConfigServiceError> {
    if branch != MAIN_BRANCH {
        return Ok(());
    }
    for change in changes {
        let Change::Put {
            kind: ResourceKind::Group,
            name,
            document,
            ..
        } = change
        else {
            continue;
        };
        let Some(pin) = document.get("branch").and_then(Value::as_str) else {
            continue;
        };
        let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
        let live: Option<bool> = sqlx::query_scalar(
            "SELECT deleted_at IS NULL FROM config_branches WHERE tenant_id = $1 AND name = $2",
        )
        .bind(tenant_id)
        .bind(pin)
        .fetch_optional(&mut *tx)
        .await?;
        let has_group: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM config_resources
                            WHERE tenant_id = $1 AND branch = $2 AND kind = 'group' AND name = $3)",
        )
        .bind(tenant_id)
        .bind(pin)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if live != Some(true) {
            return Err(ConfigServiceError::Pin(format!(
                "there is no branch `{pin}` to follow"
            )));
        }
        if !has_group {
            return Err(ConfigServiceError::Pin(format!(
                "group `{name}` does not exist on branch `{pin}`; create it there first"
            )));
        }
    }
    Ok(())
}

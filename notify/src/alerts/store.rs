//! Alert rules and alerts as a tenant sees and changes them (within the tenant's row-level
//! scope). Rules are checked by [`efms_domain::alerts::check_rule`] before they get here.

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The most rules a tenant may have.
pub const MAX_RULES_PER_TENANT: i64 = 500;

/// Why a rule could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Another rule of the tenant has the name.
    #[error("the tenant has a rule named `{0}` already")]
    NameTaken(String),
    /// The tenant has as many rules as it may.
    #[error("a tenant has at most {MAX_RULES_PER_TENANT} alert rules")]
    TooMany,
}

fn taken(error: sqlx::Error, name: &str) -> RuleError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            RuleError::NameTaken(name.to_owned())
        }
        _ => RuleError::Database(error),
    }
}

/// A rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its id.
    pub id: Uuid,
    /// Its name, unique in the tenant.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its parameters.
    pub params: Value,
    /// Whether it is evaluated.
    pub enabled: bool,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// An alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// Its id.
    pub id: Uuid,
    /// Its rule's id and name.
    pub rule_id: Uuid,
    /// Its rule's name.
    pub rule: String,
    /// Its rule's kind.
    pub kind: String,
    /// What it is about.
    pub subject: String,
    /// `pending`, `firing` or `resolved`.
    pub state: String,
    /// What is wrong.
    pub summary: String,
    /// Since when its condition held.
    pub pending_since: DateTime<Utc>,
    /// When it fired.
    pub fired_at: Option<DateTime<Utc>>,
    /// When it was resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    /// When it was acknowledged.
    pub acked_at: Option<DateTime<Utc>>,
    /// By whom.
    pub acked_by: Option<String>,
}

/// The tenant's rules (or the one with `id`), by name.
async fn select(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    id: Option<Uuid>,
) -> Result<Vec<Rule>, sqlx::Error> {
    sqlx::query_as!(
        Rule,
        r#"SELECT rule_id AS id, name, kind, params, enabled, created_by, created_at, updated_at
           FROM alert_rules WHERE tenant_id = $1 AND ($2::uuid IS NULL OR rule_id = $2)
           ORDER BY name"#,
        tenant_id,
        id,
    )
    .fetch_all(tx)
    .await
}

/// Creates a rule.
pub async fn create(
    pool: &PgPool,
    tenant_id: Uuid,
    actor: &str,
    (name, kind, params): (&str, &str, &Value),
) -> Result<Rule, RuleError> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM alert_rules WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if count >= MAX_RULES_PER_TENANT {
        return Err(RuleError::TooMany);
    }
    let id = Uuid::now_v7();
    sqlx::query!(
        r#"INSERT INTO alert_rules (rule_id, tenant_id, name, kind, params, created_by)
           VALUES ($1, $2, $3, $4, $5, $6)"#,
        id,
        tenant_id,
        name,
        kind,
        params,
        actor,
    )
    .execute(&mut *tx)
    .await
    .map_err(|error| taken(error, name))?;
    let rule = select(&mut tx, tenant_id, Some(id)).await?.remove(0);
    tx.commit().await?;
    Ok(rule)
}

/// The tenant's rules, by name.
pub async fn list(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Rule>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rules = select(&mut tx, tenant_id, None).await?;
    tx.commit().await?;
    Ok(rules)
}

/// Rule `id` of the tenant.
pub async fn get(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<Option<Rule>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rule = select(&mut tx, tenant_id, Some(id)).await?.pop();
    tx.commit().await?;
    Ok(rule)
}

/// Replaces rule `id`'s name, parameters and switch (checked by the caller); `None` when the
/// tenant has no such rule. Its open alerts stay, judged by the new parameters from the next
/// evaluation on.
pub async fn update(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
    (name, params, enabled): (&str, &Value, bool),
) -> Result<Option<Rule>, RuleError> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let updated = sqlx::query!(
        r#"UPDATE alert_rules SET name = $3, params = $4, enabled = $5, updated_at = now()
           WHERE tenant_id = $1 AND rule_id = $2"#,
        tenant_id,
        id,
        name,
        params,
        enabled,
    )
    .execute(&mut *tx)
    .await
    .map_err(|error| taken(error, name))?;
    if updated.rows_affected() == 0 {
        return Ok(None);
    }
    if !enabled {
        // A rule switched off watches nothing: its open alerts end.
        sqlx::query!(
            r#"UPDATE alerts SET state = 'resolved', resolved_at = now(), updated_at = now()
               WHERE rule_id = $1 AND state <> 'resolved'"#,
            id
        )
        .execute(&mut *tx)
        .await?;
    }
    let rule = select(&mut tx, tenant_id, Some(id)).await?.pop();
    tx.commit().await?;
    Ok(rule)
}

/// Deletes rule `id` and its alerts; `false` when the tenant has no such rule.
pub async fn delete(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let deleted = sqlx::query!(
        "DELETE FROM alert_rules WHERE tenant_id = $1 AND rule_id = $2",
        tenant_id,
        id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(deleted.rows_affected() == 1)
}

/// The tenant's latest `limit` alerts (in `state` when given), the newest first.
pub async fn alerts(
    pool: &PgPool,
    tenant_id: Uuid,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<Alert>, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let alerts = sqlx::query_as!(
        Alert,
        r#"SELECT a.alert_id AS id, a.rule_id, r.name AS rule, r.kind, a.subject, a.state,
                  a.summary, a.pending_since, a.fired_at, a.resolved_at, a.acked_at, a.acked_by
           FROM alerts a JOIN alert_rules r USING (rule_id)
           WHERE a.tenant_id = $1 AND ($2::text IS NULL OR a.state = $2)
           ORDER BY a.pending_since DESC, a.alert_id DESC
           LIMIT $3"#,
        tenant_id,
        state,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(alerts)
}

/// Acknowledges alert `id` (again: the first acknowledgement stands); `false` when the tenant
/// has no such alert.
pub async fn acknowledge(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
    actor: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let acked = sqlx::query!(
        r#"UPDATE alerts SET acked_at = coalesce(acked_at, now()),
                             acked_by = coalesce(acked_by, $3), updated_at = now()
           WHERE tenant_id = $1 AND alert_id = $2"#,
        tenant_id,
        id,
        actor,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(acked.rows_affected() == 1)
}

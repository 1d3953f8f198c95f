//! Alerts (NFR-OB-005, ADR 0016): one replica at a time, under the lease `alerts`, evaluates
//! every enabled rule each interval. A subject its condition holds for gets an alert, pending
//! until the condition has held for the rule's `for`, then firing; an open alert whose condition
//! no longer holds is resolved. There is one open alert per rule and subject, and firing and
//! resolving are events of the tenant's feed (a trigger writes them), so webhooks carry them.

mod certificates;
pub mod conditions;
mod metrics;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use efms_commands::lease::Lease;
use efms_commands::Scope;
use efms_domain::alerts::{check_rule, next_state, AlertState};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use conditions::findings;

/// How alerts are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertSettings {
    /// How often every rule is evaluated.
    pub interval: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
        }
    }
}

/// Evaluates the rules until `shutdown` resolves; `settings` may change meanwhile.
pub fn spawn(
    pool: PgPool,
    mut settings: watch::Receiver<AlertSettings>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut lease = Lease::new(pool.clone(), "alerts", Duration::from_secs(30));
        loop {
            let current = *settings.borrow_and_update();
            lease.set_ttl((current.interval * 3).max(Duration::from_secs(3)));
            match lease.claim().await {
                Ok(true) => {
                    if let Err(error) = evaluate_all(&pool).await {
                        tracing::warn!(%error, "the alert rules could not be evaluated");
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "the alert lease could not be claimed"),
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(current.interval) => {}
                changed = settings.changed() => if changed.is_err() { return },
            }
        }
    })
}

/// Evaluates every enabled rule of every tenant once (a deleted tenant's wait).
pub async fn evaluate_all(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = Scope::System.begin(pool).await?;
    let rules = sqlx::query!(
        "SELECT r.rule_id, r.tenant_id, r.kind, r.params
         FROM alert_rules r JOIN tenants t ON t.tenant_id = r.tenant_id
         WHERE r.enabled AND t.deleted_at IS NULL
         ORDER BY r.tenant_id, r.rule_id"
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for rule in rules {
        // A rule stored before its kind's parameters changed is skipped, not evaluated wrongly.
        let Ok(spec) = check_rule(&rule.kind, &rule.params) else {
            continue;
        };
        let found = findings(pool, rule.tenant_id, spec.condition).await?;
        settle(pool, rule.tenant_id, rule.rule_id, spec.hold, found).await?;
    }
    Ok(())
}

/// Brings rule `rule_id`'s alerts in line with what holds now (`found`).
async fn settle(
    pool: &PgPool,
    tenant_id: Uuid,
    rule_id: Uuid,
    hold: Duration,
    found: Vec<conditions::Finding>,
) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let mut tx = Scope::System.begin(pool).await?;
    let open = sqlx::query!(
        r#"SELECT alert_id, subject, state, pending_since FROM alerts
           WHERE rule_id = $1 AND state <> 'resolved' FOR UPDATE"#,
        rule_id
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut open: HashMap<String, _> = open
        .into_iter()
        .map(|row| (row.subject.clone(), row))
        .collect();
    for finding in found {
        let existing = open.remove(&finding.subject);
        let state = existing.as_ref().map(|row| match row.state.as_str() {
            "firing" => AlertState::Firing,
            _ => AlertState::Pending,
        });
        let since = existing
            .as_ref()
            .map(|row| row.pending_since)
            .or(finding.since)
            .unwrap_or(now)
            .min(now);
        let lasted = (now - since).to_std().unwrap_or_default();
        let Some(next) = next_state(state, Some(lasted), hold) else {
            continue;
        };
        match existing {
            None => {
                sqlx::query!(
                    r#"INSERT INTO alerts (alert_id, tenant_id, rule_id, subject, state, summary,
                                           pending_since, fired_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $5 = 'firing' THEN now() END)"#,
                    Uuid::now_v7(),
                    tenant_id,
                    rule_id,
                    finding.subject,
                    next.as_str(),
                    finding.summary,
                    since,
                )
                .execute(&mut *tx)
                .await?;
            }
            Some(row) if Some(next) != state => {
                sqlx::query!(
                    r#"UPDATE alerts SET state = $2, summary = $3, fired_at = now(), updated_at = now()
                       WHERE alert_id = $1"#,
                    row.alert_id,
                    next.as_str(),
                    finding.summary,
                )
                .execute(&mut *tx)
                .await?;
            }
            Some(_) => {}
        }
    }
    for row in open.into_values() {
        sqlx::query!(
            r#"UPDATE alerts SET state = 'resolved', resolved_at = now(), updated_at = now()
               WHERE alert_id = $1"#,
            row.alert_id
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

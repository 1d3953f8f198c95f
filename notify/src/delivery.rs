//! The webhooks' attempts in flight: up to the concurrency setting at once, each an HTTP request
//! of its own, so a slow or dead endpoint holds back nothing but its own deliveries. Finished
//! attempts are recorded together, each with what follows it (delivered, the next attempt's time,
//! failed) and the endpoint's health (a 410, or failures for longer than the setting, disable it).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use efms_domain::webhooks::{next_step, NextStep};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::attempt::{self, Outcome, Request};
use crate::sender::{Sender, WebhookSettings};

/// A delivery whose attempt is due.
pub(crate) struct Due {
    delivery_id: Uuid,
    tenant_id: Uuid,
    webhook_id: Uuid,
    message_id: String,
    body: String,
    attempts: i32,
    url: String,
    key_id: String,
    secret: Vec<u8>,
    previous_secret: Option<Vec<u8>>,
}

/// An attempt made, to record.
pub(crate) struct Attempted {
    due: Due,
    at: DateTime<Utc>,
    outcome: Outcome,
}

/// The attempts in flight.
#[derive(Default)]
pub(crate) struct Flight {
    running: JoinSet<Option<Attempted>>,
    deliveries: HashSet<Uuid>,
}

impl Flight {
    /// How many run.
    pub(crate) fn len(&self) -> usize {
        self.running.len()
    }

    /// Starts attempts of the deliveries due now, up to `settings.concurrency` in flight.
    pub(crate) async fn refill(
        &mut self,
        sender: &Sender,
        client: &reqwest::Client,
        settings: &WebhookSettings,
    ) -> Result<(), sqlx::Error> {
        let room = settings.concurrency.max(1).saturating_sub(self.len());
        if room == 0 {
            return Ok(());
        }
        let flying: Vec<Uuid> = self.deliveries.iter().copied().collect();
        for due in sender
            .due(i64::try_from(room).unwrap_or(i64::MAX), &flying)
            .await?
        {
            self.deliveries.insert(due.delivery_id);
            let (sender, client) = (sender.clone(), client.clone());
            let allow_private = settings.allow_private;
            self.running.spawn(async move {
                let secrets = match sender.secrets(&due).await {
                    Ok(secrets) => secrets,
                    Err(error) => {
                        tracing::warn!(%error, webhook = %due.webhook_id, "a webhook's secret does not open");
                        return None;
                    }
                };
                let signing: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
                let at = Utc::now();
                let request = Request {
                    url: &due.url,
                    message_id: &due.message_id,
                    body: &due.body,
                    secrets: &signing,
                };
                let outcome = attempt::send(&client, request, at.timestamp(), allow_private).await;
                Some(Attempted { due, at, outcome })
            });
        }
        Ok(())
    }

    /// Waits for one attempt to finish (never, with none in flight).
    pub(crate) async fn next_finished(&mut self) -> Option<Attempted> {
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        self.running
            .join_next()
            .await
            .and_then(Result::ok)
            .flatten()
    }

    /// Every attempt finished by now, with `first`.
    pub(crate) fn finished(&mut self, first: Option<Attempted>) -> Vec<Attempted> {
        let mut done: Vec<Attempted> = first.into_iter().collect();
        while let Some(next) = self.running.try_join_next() {
            done.extend(next.ok().flatten());
        }
        // What no longer runs may be due again (a secret that did not open, say).
        if self.running.is_empty() {
            self.deliveries.clear();
        } else {
            for attempted in &done {
                self.deliveries.remove(&attempted.due.delivery_id);
            }
        }
        done
    }
}

/// Records `done` in one transaction.
pub(crate) async fn record_all(
    sender: &Sender,
    settings: &WebhookSettings,
    done: Vec<Attempted>,
) -> Result<(), sqlx::Error> {
    if done.is_empty() {
        return Ok(());
    }
    let mut tx = Scope::System.begin(&sender.pool).await?;
    for attempted in done {
        record(&mut tx, settings, attempted).await?;
    }
    tx.commit().await
}

impl Sender {
    /// Up to `limit` deliveries due now, the longest waiting first.
    async fn due(&self, limit: i64, flying: &[Uuid]) -> Result<Vec<Due>, sqlx::Error> {
        let mut tx = Scope::System.begin(&self.pool).await?;
        let due = sqlx::query_as!(
            Due,
            r#"SELECT d.delivery_id, d.tenant_id, d.webhook_id, d.message_id, d.body, d.attempts,
                      w.url, w.key_id, w.secret,
                      CASE WHEN w.previous_until > now() THEN w.previous_secret END AS previous_secret
               FROM webhook_deliveries d JOIN webhooks w USING (webhook_id)
               WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND w.enabled
                 AND d.delivery_id <> ALL($2)
               ORDER BY d.next_attempt_at, d.delivery_id
               LIMIT $1"#,
            limit,
            flying,
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(due)
    }

    /// The secrets that sign `due`'s attempts, the current one first.
    async fn secrets(&self, due: &Due) -> Result<Vec<Vec<u8>>, String> {
        let key = self
            .keyring
            .get(due.tenant_id, &due.key_id)
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("no data key `{}`", due.key_id))?;
        let mut secrets = vec![key
            .unwrap_key(&due.secret)
            .map_err(|e| e.to_string())?
            .bytes()
            .to_vec()];
        if let Some(previous) = &due.previous_secret {
            secrets.push(
                key.unwrap_key(previous)
                    .map_err(|e| e.to_string())?
                    .bytes()
                    .to_vec(),
            );
        }
        Ok(secrets)
    }
}

/// Records one attempt of `due` made at `at`, the delivery's next step and the endpoint's
/// health (a 410, or failures for longer than the setting, disable it).
async fn record(
    tx: &mut sqlx::PgConnection,
    settings: &WebhookSettings,
    Attempted { due, at, outcome }: Attempted,
) -> Result<(), sqlx::Error> {
    let number = due.attempts + 1;
    let jitter =
        f64::from(u16::try_from(Uuid::new_v4().as_u128() % 2_001).unwrap_or(1_000)) / 1_000.0 - 1.0;
    let step = next_step(
        &outcome.result,
        u32::try_from(number).unwrap_or(u32::MAX),
        &settings.schedule,
        jitter,
    );
    let (state, next_attempt_at) = match step {
        NextStep::Delivered => ("delivered", None),
        NextStep::RetryAfter(gap) => (
            "pending",
            Some(Utc::now() + chrono::Duration::from_std(gap).unwrap_or(chrono::Duration::MAX)),
        ),
        NextStep::GiveUp | NextStep::DisableEndpoint => ("failed", None),
    };
    let status_code = match outcome.result {
        efms_domain::webhooks::AttemptResult::Answered { status, .. } => Some(i32::from(status)),
        efms_domain::webhooks::AttemptResult::Failed => None,
    };
    sqlx::query!(
        r#"INSERT INTO webhook_attempts (delivery_id, attempt, tenant_id, at, duration_ms,
               status_code, response_excerpt, error, next_attempt_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (delivery_id, attempt) DO NOTHING"#,
        due.delivery_id,
        number,
        due.tenant_id,
        at,
        i32::try_from(outcome.duration.as_millis()).unwrap_or(i32::MAX),
        status_code,
        outcome.excerpt,
        outcome.error,
        next_attempt_at,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        r#"UPDATE webhook_deliveries
           SET attempts = $2, state = $3, next_attempt_at = $4,
               finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END
           WHERE delivery_id = $1 AND attempts = $5"#,
        due.delivery_id,
        number,
        state,
        next_attempt_at,
        due.attempts,
    )
    .execute(&mut *tx)
    .await?;
    let failing_since = sqlx::query_scalar!(
        r#"UPDATE webhooks
           SET failing_since = CASE WHEN $2 THEN NULL ELSE coalesce(failing_since, $3) END
           WHERE webhook_id = $1
           RETURNING failing_since"#,
        due.webhook_id,
        step == NextStep::Delivered,
        at,
    )
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    let disable_after =
        chrono::Duration::from_std(settings.disable_after).unwrap_or(chrono::Duration::MAX);
    let reason = if step == NextStep::DisableEndpoint {
        Some("the endpoint answered 410 Gone".to_owned())
    } else {
        failing_since
            .filter(|since| Utc::now() - *since >= disable_after)
            .map(|since| {
                format!(
                    "every attempt has failed since {}",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
    };
    if let Some(reason) = reason {
        sqlx::query!(
            r#"UPDATE webhooks SET enabled = false, disabled_reason = $2, disabled_at = now()
               WHERE webhook_id = $1 AND enabled"#,
            due.webhook_id,
            reason,
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

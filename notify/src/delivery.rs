//! The webhooks' attempts in flight: up to the concurrency setting at once, each an HTTP request
//! of its own, so a slow or dead endpoint holds back nothing but its own deliveries. Finished
//! attempts are recorded together, each with what follows it (delivered, the next attempt's time,
//! failed) and the endpoint's health (a 410, or failures for longer than the setting, disable it).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use efms_commands::Scope;
use efms_domain::webhooks::{next_step, AttemptResult, NextStep};
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

impl Attempted {
    /// The delivery it was of.
    pub(crate) fn delivery_id(&self) -> Uuid {
        self.due.delivery_id
    }
}

/// The attempts in flight, and those finished but not yet recorded: a delivery in either is
/// not started again.
#[derive(Default)]
pub(crate) struct Flight {
    running: JoinSet<(Uuid, Option<Attempted>)>,
    deliveries: HashSet<Uuid>,
}

impl Flight {
    /// How many run.
    pub(crate) fn len(&self) -> usize {
        self.running.len()
    }

    /// How many more may start under `settings`.
    pub(crate) fn room(&self, settings: &WebhookSettings) -> usize {
        settings.concurrency.max(1).saturating_sub(self.len())
    }

    /// Starts attempts of the deliveries due now, up to `settings.concurrency` in flight.
    pub(crate) async fn refill(
        &mut self,
        sender: &Sender,
        client: &reqwest::Client,
        settings: &WebhookSettings,
    ) -> Result<(), sqlx::Error> {
        let room = self.room(settings);
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
            let targets = settings.targets.clone();
            self.running.spawn(async move {
                let secrets = match sender.secrets(&due).await {
                    Ok(secrets) => secrets,
                    Err(error) => {
                        tracing::warn!(%error, webhook = %due.webhook_id, "a webhook's secret does not open");
                        return (due.delivery_id, None);
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
                let outcome = attempt::send(&client, request, at.timestamp(), &targets).await;
                (due.delivery_id, Some(Attempted { due, at, outcome }))
            });
        }
        Ok(())
    }

    /// Waits for one attempt to finish (never, with none in flight).
    pub(crate) async fn next_finished(&mut self) -> Option<Attempted> {
        loop {
            if self.running.is_empty() {
                return std::future::pending().await;
            }
            let joined = self.running.join_next().await;
            if let Some(attempted) = self.settle(joined) {
                return Some(attempted);
            }
        }
    }

    /// Every attempt finished by now, with `first`. They stay marked until [`Flight::recorded`].
    pub(crate) fn finished(&mut self, first: Option<Attempted>) -> Vec<Attempted> {
        let mut done: Vec<Attempted> = first.into_iter().collect();
        while let Some(next) = self.running.try_join_next() {
            done.extend(self.settle(Some(next)));
        }
        done
    }

    /// Unmarks recorded attempts' deliveries (they may be due again).
    pub(crate) fn recorded(&mut self, done: &[Uuid]) {
        for delivery in done {
            self.deliveries.remove(delivery);
        }
    }

    /// A finished task's attempt; one that made none (a secret that did not open, a task that
    /// panicked) is unmarked at once, so its delivery is tried again.
    fn settle(
        &mut self,
        joined: Option<Result<(Uuid, Option<Attempted>), tokio::task::JoinError>>,
    ) -> Option<Attempted> {
        match joined? {
            Ok((_, Some(attempted))) => Some(attempted),
            Ok((delivery, None)) => {
                self.deliveries.remove(&delivery);
                None
            }
            Err(_) => {
                // A task that panicked names no delivery: with nothing else running or waiting to
                // be recorded, every mark is stale.
                if self.running.is_empty() {
                    self.deliveries.clear();
                }
                None
            }
        }
    }
}

/// Records `done` in one transaction (unflushed): the attempts, each delivery's next step, and each
/// endpoint's health (a 410, or failures for longer than the setting, disable it).
pub(crate) async fn record_all(
    sender: &Sender,
    settings: &WebhookSettings,
    done: Vec<Attempted>,
) -> Result<(), sqlx::Error> {
    if done.is_empty() {
        return Ok(());
    }
    let rows = Rows::of(settings, done);
    // Unflushed: a crash of Postgres that loses this record makes the attempts again, with the
    // same `webhook-id`, which at-least-once delivery allows.
    let mut tx = Scope::System.begin_unflushed(&sender.pool).await?;
    sqlx::query!(
        r#"INSERT INTO webhook_attempts (delivery_id, attempt, tenant_id, at, duration_ms,
               status_code, response_excerpt, error, next_attempt_at)
           SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::uuid[], $4::timestamptz[], $5::int[],
                                $6::int[], $7::text[], $8::text[], $9::timestamptz[])
           ON CONFLICT (delivery_id, attempt) DO NOTHING"#,
        &rows.delivery,
        &rows.number,
        &rows.tenant,
        &rows.at,
        &rows.duration_ms,
        &rows.status as &[Option<i32>],
        &rows.excerpt as &[Option<String>],
        &rows.error as &[Option<String>],
        &rows.next as &[Option<DateTime<Utc>>],
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        r#"UPDATE webhook_deliveries d
           SET attempts = u.number, state = u.state, next_attempt_at = u.next,
               finished_at = CASE WHEN u.state = 'pending' THEN NULL ELSE now() END
           FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::timestamptz[])
                AS u(delivery_id, number, state, next)
           WHERE d.delivery_id = u.delivery_id AND d.attempts = u.number - 1"#,
        &rows.delivery,
        &rows.number,
        &rows.state,
        &rows.next as &[Option<DateTime<Utc>>],
    )
    .execute(&mut *tx)
    .await?;
    // Per endpoint: any delivery ends its failures; else they date from its first failure. Only
    // endpoints whose state changes are written; the failing ones are read back for the rule.
    let failing = sqlx::query!(
        r#"WITH u AS (
               SELECT webhook_id, bool_or(delivered) AS delivered, min(at) AS first
               FROM UNNEST($1::uuid[], $2::bool[], $3::timestamptz[]) AS a(webhook_id, delivered, at)
               GROUP BY webhook_id),
           changed AS (
               UPDATE webhooks w
               SET failing_since = CASE WHEN u.delivered THEN NULL ELSE u.first END
               FROM u
               WHERE w.webhook_id = u.webhook_id AND w.enabled
                 AND (w.failing_since IS NULL) = NOT u.delivered
               RETURNING w.webhook_id, w.failing_since)
           SELECT w.webhook_id, coalesce(c.failing_since, w.failing_since) AS "failing_since?"
           FROM u JOIN webhooks w ON w.webhook_id = u.webhook_id
                LEFT JOIN changed c ON c.webhook_id = u.webhook_id
           WHERE w.enabled AND NOT u.delivered"#,
        &rows.webhook,
        &rows.delivered,
        &rows.at,
    )
    .fetch_all(&mut *tx)
    .await?;
    let disable_after =
        chrono::Duration::from_std(settings.disable_after).unwrap_or(chrono::Duration::MAX);
    let mut disabled: Vec<(Uuid, String)> = rows
        .gone
        .iter()
        .map(|id| (*id, "the endpoint answered 410 Gone".to_owned()))
        .collect();
    for endpoint in failing {
        if let Some(since) = endpoint
            .failing_since
            .filter(|since| Utc::now() - *since >= disable_after)
        {
            disabled.push((
                endpoint.webhook_id,
                format!(
                    "every attempt has failed since {}",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            ));
        }
    }
    for (webhook_id, reason) in disabled {
        sqlx::query!(
            r#"UPDATE webhooks SET enabled = false, disabled_reason = $2, disabled_at = now()
               WHERE webhook_id = $1 AND enabled"#,
            webhook_id,
            reason,
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A batch of attempts as the columns their statements take.
#[derive(Default)]
struct Rows {
    delivery: Vec<Uuid>,
    number: Vec<i32>,
    tenant: Vec<Uuid>,
    webhook: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    duration_ms: Vec<i32>,
    status: Vec<Option<i32>>,
    excerpt: Vec<Option<String>>,
    error: Vec<Option<String>>,
    next: Vec<Option<DateTime<Utc>>>,
    state: Vec<String>,
    delivered: Vec<bool>,
    /// Endpoints that answered 410.
    gone: Vec<Uuid>,
}

impl Rows {
    /// The columns of `done`, each attempt's next step decided by the retry policy.
    fn of(settings: &WebhookSettings, done: Vec<Attempted>) -> Self {
        let mut rows = Self::default();
        for Attempted { due, at, outcome } in done {
            let number = due.attempts + 1;
            let jitter =
                f64::from(u16::try_from(Uuid::new_v4().as_u128() % 2_001).unwrap_or(1_000))
                    / 1_000.0
                    - 1.0;
            let step = next_step(
                &outcome.result,
                u32::try_from(number).unwrap_or(u32::MAX),
                &settings.schedule,
                jitter,
            );
            let (state, next) = match step {
                NextStep::Delivered => ("delivered", None),
                NextStep::RetryAfter(gap) => (
                    "pending",
                    Some(
                        Utc::now()
                            + chrono::Duration::from_std(gap).unwrap_or(chrono::Duration::MAX),
                    ),
                ),
                NextStep::GiveUp | NextStep::DisableEndpoint => ("failed", None),
            };
            if step == NextStep::DisableEndpoint {
                rows.gone.push(due.webhook_id);
            }
            rows.status.push(match outcome.result {
                AttemptResult::Answered { status, .. } => Some(i32::from(status)),
                AttemptResult::Failed => None,
            });
            rows.delivery.push(due.delivery_id);
            rows.number.push(number);
            rows.tenant.push(due.tenant_id);
            rows.webhook.push(due.webhook_id);
            rows.at.push(at);
            rows.duration_ms
                .push(i32::try_from(outcome.duration.as_millis()).unwrap_or(i32::MAX));
            rows.excerpt.push(outcome.excerpt);
            rows.error.push(outcome.error);
            rows.next.push(next);
            rows.state.push(state.to_owned());
            rows.delivered.push(step == NextStep::Delivered);
        }
        rows
    }
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

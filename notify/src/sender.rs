//! The webhooks' sender: one replica at a time, under the lease `webhooks`. Each round it turns
//! the feed events after each enabled webhook's place into deliveries (moving the place in the
//! same transaction), then makes the attempts that are due, each recorded with what follows it.
//! A replica that dies mid-attempt leaves the delivery due: the next holder sends it again with
//! the same `webhook-id`, so a receiver sees it at least once and can tell a duplicate.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use efms_commands::lease::Lease;
use efms_commands::{Keyring, Scope, SharedDoorbell};
use efms_domain::feed::{CursorSeal, FeedPosition, Source};
use efms_domain::webhooks::{next_step, parse_schedule, NextStep, DEFAULT_RETRY_SCHEDULE};
use efms_projections::feed::read_feed;
use futures::StreamExt as _;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::attempt::{self, Outcome, Request};

/// Feed events read per webhook and round.
const FAN_OUT_PAGE: i64 = 500;
/// How often finished deliveries past their retention are removed.
const PURGE_EVERY: Duration = Duration::from_secs(3_600);

/// How the sender works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Whether targets on private, loopback and link-local addresses are allowed.
    pub allow_private: bool,
    /// The gaps between a delivery's attempts.
    pub schedule: Vec<Duration>,
    /// An endpoint whose every attempt has failed for this long is disabled.
    pub disable_after: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// How long a rotated secret keeps signing beside the new one.
    pub secret_overlap: Duration,
    /// How long finished deliveries and their attempts are kept.
    pub retention: Duration,
    /// How long the sender's lease lasts (another replica takes over within it).
    pub lease: Duration,
    /// How many attempts are made at once.
    pub concurrency: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private: false,
            schedule: parse_schedule(DEFAULT_RETRY_SCHEDULE).expect("the default schedule reads"),
            disable_after: Duration::from_secs(5 * 86_400),
            timeout: Duration::from_secs(10),
            secret_overlap: Duration::from_secs(86_400),
            retention: Duration::from_secs(14 * 86_400),
            lease: Duration::from_secs(30),
            concurrency: 32,
        }
    }
}

/// What the sender needs.
#[derive(Debug, Clone)]
pub struct Sender {
    /// The database.
    pub pool: PgPool,
    /// The tenants' data keys, which wrap the secrets.
    pub keyring: Keyring,
    /// Seals the events' cursors.
    pub seal: CursorSeal,
}

/// Runs the sender until `shutdown` resolves; `settings` may change meanwhile.
pub fn spawn(
    sender: Sender,
    mut doorbell: SharedDoorbell,
    mut settings: watch::Receiver<WebhookSettings>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut lease = Lease::new(sender.pool.clone(), "webhooks", Duration::from_secs(30));
        let mut client = None;
        let mut purged: Option<std::time::Instant> = None;
        loop {
            let current = settings.borrow_and_update().clone();
            if settings.has_changed().is_err() {
                return;
            }
            let client = client.get_or_insert_with(|| {
                (
                    current.clone(),
                    attempt::client(current.timeout, current.allow_private),
                )
            });
            if client.0 != current {
                *client = (
                    current.clone(),
                    attempt::client(current.timeout, current.allow_private),
                );
            }
            lease.set_ttl(current.lease);
            let wait = match lease.claim().await {
                Ok(true) => {
                    if purged.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                        purged = Some(std::time::Instant::now());
                        if let Err(error) = sender.purge(current.retention).await {
                            tracing::warn!(%error, "old webhook deliveries could not be removed");
                        }
                    }
                    match sender.round(&client.1, &current).await {
                        Ok(wait) => wait.min(current.lease / 3),
                        Err(error) => {
                            tracing::warn!(%error, "a webhook round failed; trying again");
                            Duration::from_secs(1)
                        }
                    }
                }
                Ok(false) => current.lease / 3,
                Err(error) => {
                    tracing::warn!(%error, "the webhook lease could not be claimed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = doorbell.wait_for_any(&efms_domain::feed::FEED_AGGREGATES) => {}
                () = tokio::time::sleep(wait) => {}
                _ = settings.changed() => {}
            }
        }
    })
}

/// A delivery whose attempt is due.
struct Due {
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

impl Sender {
    /// One round: new events to deliveries, then the due attempts. Answers how long until the
    /// next attempt is due (at most a second: new events are also found by the doorbell).
    async fn round(
        &self,
        client: &reqwest::Client,
        settings: &WebhookSettings,
    ) -> Result<Duration, sqlx::Error> {
        self.fan_out().await?;
        let batch = settings.concurrency.max(1) * 4;
        loop {
            let due = self.due(i64::try_from(batch).unwrap_or(i64::MAX)).await?;
            let full = due.len() == batch;
            futures::stream::iter(due)
                .map(|due| self.attempt(client, settings, due))
                .buffer_unordered(settings.concurrency.max(1))
                .for_each(|recorded| async move {
                    if let Err(error) = recorded {
                        tracing::warn!(%error, "a webhook attempt could not be recorded");
                    }
                })
                .await;
            if !full {
                break;
            }
        }
        let next = sqlx::query_scalar!(
            r#"SELECT min(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending'"#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next.map_or(Duration::from_secs(1), |at| {
            (at - Utc::now())
                .to_std()
                .unwrap_or_default()
                .min(Duration::from_secs(1))
        }))
    }

    /// Turns the events after each enabled webhook's place into its deliveries.
    async fn fan_out(&self) -> Result<(), sqlx::Error> {
        let mut tx = Scope::System.begin(&self.pool).await?;
        let webhooks = sqlx::query!(
            r#"SELECT webhook_id, tenant_id, types, after_tx, after_source, after_position
               FROM webhooks WHERE enabled ORDER BY webhook_id"#
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for webhook in webhooks {
            let after = FeedPosition {
                tx_id: webhook.after_tx,
                source: if webhook.after_source == 0 {
                    Source::Log
                } else {
                    Source::Facts
                },
                position: webhook.after_position,
            };
            let events = read_feed(&self.pool, webhook.tenant_id, after, FAN_OUT_PAGE).await?;
            let Some(last) = events.last().map(|event| event.at) else {
                continue;
            };
            let mut ids = Vec::new();
            let mut kinds = Vec::new();
            let mut cursors = Vec::new();
            let mut times = Vec::new();
            let mut bodies = Vec::new();
            for event in events
                .into_iter()
                .filter(|event| webhook.types.iter().any(|t| t == event.kind))
            {
                let cursor = self.seal.seal(webhook.tenant_id, event.at);
                let body = json!({
                    "type": event.kind,
                    "timestamp": event.time,
                    "cursor": cursor,
                    "data": event.payload,
                });
                ids.push(Uuid::now_v7());
                kinds.push(event.kind.to_owned());
                cursors.push(cursor);
                times.push(event.time);
                bodies.push(body.to_string());
            }
            let mut tx = Scope::System.begin(&self.pool).await?;
            sqlx::query!(
                r#"INSERT INTO webhook_deliveries (delivery_id, tenant_id, webhook_id, message_id,
                       event_type, event_cursor, event_time, body, state, next_attempt_at)
                   SELECT id, $1, $2, 'msg_' || replace(id::text, '-', ''), kind, cursor, at, body,
                          'pending', now()
                   FROM UNNEST($3::uuid[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
                        AS e(id, kind, cursor, at, body)"#,
                webhook.tenant_id,
                webhook.webhook_id,
                &ids,
                &kinds,
                &cursors,
                &times,
                &bodies,
            )
            .execute(&mut *tx)
            .await?;
            let moved = sqlx::query!(
                r#"UPDATE webhooks SET after_tx = $2, after_source = $3, after_position = $4
                   WHERE webhook_id = $1 AND after_tx = $5 AND after_source = $6
                     AND after_position = $7"#,
                webhook.webhook_id,
                last.tx_id,
                last.source as i16,
                last.position,
                webhook.after_tx,
                webhook.after_source,
                webhook.after_position,
            )
            .execute(&mut *tx)
            .await?;
            // Another holder moved it meanwhile: its deliveries stand, these go.
            if moved.rows_affected() == 1 {
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Up to `limit` deliveries due now, the longest waiting first.
    async fn due(&self, limit: i64) -> Result<Vec<Due>, sqlx::Error> {
        let mut tx = Scope::System.begin(&self.pool).await?;
        let due = sqlx::query_as!(
            Due,
            r#"SELECT d.delivery_id, d.tenant_id, d.webhook_id, d.message_id, d.body, d.attempts,
                      w.url, w.key_id, w.secret,
                      CASE WHEN w.previous_until > now() THEN w.previous_secret END AS previous_secret
               FROM webhook_deliveries d JOIN webhooks w USING (webhook_id)
               WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND w.enabled
               ORDER BY d.next_attempt_at, d.delivery_id
               LIMIT $1"#,
            limit,
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(due)
    }

    /// Makes one attempt of `due` and records it with what follows.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        settings: &WebhookSettings,
        due: Due,
    ) -> Result<(), sqlx::Error> {
        let secrets = match self.secrets(&due).await {
            Ok(secrets) => secrets,
            Err(error) => {
                tracing::warn!(%error, webhook = %due.webhook_id, "a webhook's secret does not open");
                return Ok(());
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
        let outcome = attempt::send(client, request, at.timestamp(), settings.allow_private).await;
        self.record(settings, &due, at, outcome).await
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

    /// Records an attempt of `due` made at `at`, the delivery's next step and the endpoint's
    /// health (a 410, or failures for longer than the setting, disable it).
    async fn record(
        &self,
        settings: &WebhookSettings,
        due: &Due,
        at: chrono::DateTime<Utc>,
        outcome: Outcome,
    ) -> Result<(), sqlx::Error> {
        let number = due.attempts + 1;
        let jitter = f64::from(u16::try_from(Uuid::new_v4().as_u128() % 2_001).unwrap_or(1_000))
            / 1_000.0
            - 1.0;
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
            efms_domain::webhooks::AttemptResult::Answered { status, .. } => {
                Some(i32::from(status))
            }
            efms_domain::webhooks::AttemptResult::Failed => None,
        };
        let mut tx = Scope::System.begin(&self.pool).await?;
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
        tx.commit().await
    }

    /// Removes finished deliveries older than `retention`.
    async fn purge(&self, retention: Duration) -> Result<(), sqlx::Error> {
        let mut tx = Scope::System.begin(&self.pool).await?;
        sqlx::query!(
            r#"DELETE FROM webhook_deliveries
               WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => $1::float8)"#,
            retention.as_secs_f64(),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

//! The webhooks' sender: one replica at a time, under the lease `webhooks`. Each round it turns
//! the feed events after each enabled webhook's place into deliveries (moving the place in the
//! same transaction), then makes the attempts that are due, each recorded with what follows it.
//! A replica that dies mid-attempt leaves the delivery due: the next holder sends it again with
//! the same `webhook-id`, so a receiver sees it at least once and can tell a duplicate.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use efms_commands::lease::Lease;
use efms_commands::{Keyring, Scope, SharedDoorbell};
use efms_domain::feed::{CursorSeal, FeedPosition, Source};
use efms_domain::webhooks::{parse_schedule, DEFAULT_RETRY_SCHEDULE};
use efms_projections::feed::read_feed;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::attempt;
use crate::delivery::{record_all, Flight};

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
        let mut client: Option<(WebhookSettings, reqwest::Client)> = None;
        let mut purged: Option<std::time::Instant> = None;
        let mut flight = Flight::default();
        loop {
            let current = settings.borrow_and_update().clone();
            if client.as_ref().is_none_or(|(built, _)| *built != current) {
                let built = attempt::client(current.timeout, current.allow_private);
                client = Some((current.clone(), built));
            }
            let Some((_, http)) = &client else { return };
            lease.set_ttl(current.lease);
            let wait = match lease.claim().await {
                Ok(true) => {
                    if purged.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                        purged = Some(std::time::Instant::now());
                        if let Err(error) = sender.purge(current.retention).await {
                            tracing::warn!(%error, "old webhook deliveries could not be removed");
                        }
                    }
                    match sender.round(&mut flight, http, &current).await {
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
            let finished = tokio::select! {
                () = &mut shutdown => return,
                first = flight.next_finished() => Some(first),
                () = doorbell.wait_for_any(&efms_domain::feed::FEED_AGGREGATES) => None,
                () = tokio::time::sleep(wait) => None,
                changed = settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    None
                }
            };
            let done = flight.finished(finished.flatten());
            if let Err(error) = record_all(&sender, &current, done).await {
                tracing::warn!(%error, "webhook attempts could not be recorded; they are made again");
            }
        }
    })
}

impl Sender {
    /// New events to deliveries, then attempts of what is due, up to the concurrency. Answers how
    /// long until the next attempt is due (at most a second: new events ring the doorbell).
    async fn round(
        &self,
        flight: &mut Flight,
        client: &reqwest::Client,
        settings: &WebhookSettings,
    ) -> Result<Duration, sqlx::Error> {
        self.fan_out().await?;
        flight.refill(self, client, settings).await?;
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
}

/// An enabled webhook's place in its tenant's feed.
struct WebhookPlace {
    webhook_id: Uuid,
    tenant_id: Uuid,
    types: Vec<String>,
    after_tx: i64,
    after_source: i16,
    after_position: i64,
}

impl Sender {
    /// Turns the events after each enabled webhook's place into its deliveries.
    async fn fan_out(&self) -> Result<(), sqlx::Error> {
        let mut tx = Scope::System.begin(&self.pool).await?;
        let webhooks = sqlx::query_as!(
            WebhookPlace,
            r#"SELECT webhook_id, tenant_id, types, after_tx, after_source, after_position
               FROM webhooks WHERE enabled ORDER BY webhook_id"#
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        // One read of the feed per tenant, from the place of its webhook furthest behind.
        let mut by_tenant: BTreeMap<Uuid, Vec<_>> = BTreeMap::new();
        for webhook in webhooks {
            by_tenant
                .entry(webhook.tenant_id)
                .or_default()
                .push(webhook);
        }
        for (tenant_id, webhooks) in by_tenant {
            let place = |webhook: &WebhookPlace| FeedPosition {
                tx_id: webhook.after_tx,
                source: if webhook.after_source == 0 {
                    Source::Log
                } else {
                    Source::Facts
                },
                position: webhook.after_position,
            };
            let Some(from) = webhooks.iter().map(place).min() else {
                continue;
            };
            let page = read_feed(&self.pool, tenant_id, from, FAN_OUT_PAGE).await?;
            let Some(last) = page.last().map(|event| event.at) else {
                continue;
            };
            for webhook in &webhooks {
                self.hand_over(webhook, place(webhook), &page, last).await?;
            }
        }
        Ok(())
    }

    /// Turns the events of `page` after `after` into `webhook`'s deliveries and moves its place
    /// to `last`, the page's end, in one transaction.
    async fn hand_over(
        &self,
        webhook: &WebhookPlace,
        after: FeedPosition,
        page: &[efms_projections::feed::FeedEvent],
        last: FeedPosition,
    ) -> Result<(), sqlx::Error> {
        {
            let mut ids = Vec::new();
            let mut kinds = Vec::new();
            let mut cursors = Vec::new();
            let mut times = Vec::new();
            let mut bodies = Vec::new();
            for event in page
                .iter()
                .filter(|event| event.at > after)
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
            if last <= after {
                return Ok(());
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

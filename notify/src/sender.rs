//! The webhooks' sender: one replica at a time, under the lease `webhooks`. Each round it turns
//! the feed events after each enabled webhook's place into deliveries (moving the place in the
//! same transaction), then makes the attempts that are due, each recorded with what follows it.
//! A replica that dies mid-attempt leaves the delivery due: the next holder sends it again with
//! the same `webhook-id`, so a receiver sees it at least once and can tell a duplicate.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use efms_commands::lease::Lease;
use efms_commands::{Keyring, Scope, SharedDoorbell};
use efms_domain::feed::{CursorSeal, FeedPosition, Source};
use efms_domain::webhooks::{parse_schedule, TargetPolicy, DEFAULT_RETRY_SCHEDULE};
use efms_projections::feed::read_feed;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::attempt;
use crate::delivery::{record_all, Attempted, Flight};

/// Feed events read per webhook and round.
const FAN_OUT_PAGE: i64 = 500;
/// The shortest gap between two fan-outs: the events of a burst of commits become deliveries
/// together, each webhook's place moved once.
const FAN_OUT_GAP: Duration = Duration::from_millis(50);
/// How long a finished attempt may wait to be recorded with others.
const RECORD_WITHIN: Duration = Duration::from_millis(20);
/// How often finished deliveries past their retention are removed.
const PURGE_EVERY: Duration = Duration::from_secs(3_600);

/// How the sender works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Which addresses webhooks may reach.
    pub targets: TargetPolicy,
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
            targets: TargetPolicy::default(),
            schedule: parse_schedule(DEFAULT_RETRY_SCHEDULE).expect("the default schedule reads"),
            disable_after: Duration::from_secs(5 * 86_400),
            timeout: Duration::from_secs(10),
            secret_overlap: Duration::from_secs(86_400),
            retention: Duration::from_secs(14 * 86_400),
            lease: Duration::from_secs(30),
            concurrency: 64,
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
        let mut purged: Option<Instant> = None;
        let mut flight = Flight::default();
        // Finished attempts are recorded together: a batch at most RECORD_WITHIN old.
        let mut unrecorded: Vec<Attempted> = Vec::new();
        let mut unrecorded_since = Instant::now();
        // New events are looked for when the doorbell rings, and at least every second (the
        // facts beside the log ring nothing).
        let mut look = true;
        let mut looked = Instant::now();
        let mut next_round = Instant::now();
        loop {
            let current = settings.borrow_and_update().clone();
            if client.as_ref().is_none_or(|(built, _)| *built != current) {
                let built = attempt::client(current.timeout, &current.targets);
                client = Some((current.clone(), built));
            }
            let Some((_, http)) = &client else { return };
            lease.set_ttl(current.lease);
            // Attempts start in steps of a quarter of the concurrency, each step one query.
            let step = (current.concurrency / 4).max(1);
            let wait = match lease.keep().await {
                Ok(true) => {
                    if purged.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                        purged = Some(Instant::now());
                        if let Err(error) = sender.purge(current.retention).await {
                            tracing::warn!(%error, "old webhook deliveries could not be removed");
                        }
                    }
                    let fan_out = (look && looked.elapsed() >= FAN_OUT_GAP)
                        || looked.elapsed() >= Duration::from_secs(1);
                    if fan_out {
                        (look, looked) = (false, Instant::now());
                    }
                    if fan_out || flight.room(&current) >= step || Instant::now() >= next_round {
                        let wait = match sender.round(&mut flight, http, &current, fan_out).await {
                            Ok(wait) => wait.min(current.lease / 3),
                            Err(error) => {
                                tracing::warn!(%error, "a webhook round failed; trying again");
                                Duration::from_secs(1)
                            }
                        };
                        next_round = Instant::now() + wait;
                    }
                    let rung = if look {
                        FAN_OUT_GAP.saturating_sub(looked.elapsed())
                    } else {
                        Duration::MAX
                    };
                    next_round
                        .saturating_duration_since(Instant::now())
                        .min(rung)
                }
                Ok(false) => current.lease / 3,
                Err(error) => {
                    tracing::warn!(%error, "the webhook lease could not be claimed");
                    Duration::from_secs(1)
                }
            };
            let wait = if unrecorded.is_empty() {
                wait
            } else {
                wait.min(RECORD_WITHIN.saturating_sub(unrecorded_since.elapsed()))
            };
            let first = tokio::select! {
                () = &mut shutdown => {
                    record(&sender, &current, &mut flight, &mut unrecorded).await;
                    return;
                }
                first = flight.next_finished() => first,
                () = doorbell.wait_for_any(&efms_domain::feed::FEED_AGGREGATES) => {
                    look = true;
                    None
                }
                () = tokio::time::sleep(wait) => None,
                changed = settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    None
                }
            };
            if unrecorded.is_empty() {
                unrecorded_since = Instant::now();
            }
            unrecorded.extend(flight.finished(first));
            if !unrecorded.is_empty()
                && (unrecorded.len() >= step
                    || flight.len() == 0
                    || unrecorded_since.elapsed() >= RECORD_WITHIN)
            {
                record(&sender, &current, &mut flight, &mut unrecorded).await;
            }
        }
    })
}

/// Records the finished attempts and unmarks their deliveries; attempts that cannot be recorded
/// are made again.
async fn record(
    sender: &Sender,
    settings: &WebhookSettings,
    flight: &mut Flight,
    unrecorded: &mut Vec<Attempted>,
) {
    let done = std::mem::take(unrecorded);
    let deliveries: Vec<Uuid> = done.iter().map(Attempted::delivery_id).collect();
    if let Err(error) = record_all(sender, settings, done).await {
        tracing::warn!(%error, "webhook attempts could not be recorded; they are made again");
    }
    flight.recorded(&deliveries);
}

impl Sender {
    /// New events to deliveries, then attempts of what is due, up to the concurrency. Answers how
    /// long until the next attempt is due (at most a second: new events ring the doorbell).
    async fn round(
        &self,
        flight: &mut Flight,
        client: &reqwest::Client,
        settings: &WebhookSettings,
        fan_out: bool,
    ) -> Result<Duration, sqlx::Error> {
        if fan_out {
            self.fan_out().await?;
        }
        flight.refill(self, client, settings).await?;
        if flight.room(settings) == 0 {
            // Full: finishing attempts wake the sender long before anything else is due.
            return Ok(Duration::from_secs(1));
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

impl WebhookPlace {
    /// Its place as a feed position.
    fn place(&self) -> FeedPosition {
        FeedPosition {
            tx_id: self.after_tx,
            source: if self.after_source == 0 {
                Source::Log
            } else {
                Source::Facts
            },
            position: self.after_position,
        }
    }
}

/// The deliveries of one fan-out, as the columns of their insert.
#[derive(Default)]
struct FanOut {
    ids: Vec<Uuid>,
    webhooks: Vec<Uuid>,
    kinds: Vec<String>,
    cursors: Vec<String>,
    times: Vec<chrono::DateTime<Utc>>,
    bodies: Vec<String>,
    /// The webhooks whose place moves.
    moved: Vec<Uuid>,
}

impl Sender {
    /// Turns the events after each enabled webhook's place into its deliveries: one read of the
    /// feed and one transaction per tenant. A deleted tenant's webhooks wait (for its restore, or
    /// its purge).
    async fn fan_out(&self) -> Result<(), sqlx::Error> {
        let mut tx = Scope::System.begin(&self.pool).await?;
        let webhooks = sqlx::query_as!(
            WebhookPlace,
            r#"SELECT w.webhook_id, w.tenant_id, w.types, w.after_tx, w.after_source, w.after_position
               FROM webhooks w JOIN tenants t ON t.tenant_id = w.tenant_id
               WHERE w.enabled AND t.deleted_at IS NULL
               ORDER BY w.webhook_id"#
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut by_tenant: BTreeMap<Uuid, Vec<WebhookPlace>> = BTreeMap::new();
        for webhook in webhooks {
            by_tenant
                .entry(webhook.tenant_id)
                .or_default()
                .push(webhook);
        }
        for (tenant_id, webhooks) in by_tenant {
            // From the place of its webhook furthest behind.
            let Some(from) = webhooks.iter().map(WebhookPlace::place).min() else {
                continue;
            };
            let page = read_feed(&self.pool, tenant_id, from, FAN_OUT_PAGE).await?;
            if let Some(last) = page.last().map(|event| event.at) {
                self.hand_over(tenant_id, &webhooks, &page, last).await?;
            }
        }
        Ok(())
    }

    /// Turns the events of `page` after each of `webhooks`' places into its deliveries and moves
    /// every place to `last`, the page's end, in one transaction.
    async fn hand_over(
        &self,
        tenant_id: Uuid,
        webhooks: &[WebhookPlace],
        page: &[efms_projections::feed::FeedEvent],
        last: FeedPosition,
    ) -> Result<(), sqlx::Error> {
        // Each event's body once: every webhook of the tenant gets the same.
        let bodies: Vec<(String, String)> = page
            .iter()
            .map(|event| {
                let cursor = self.seal.seal(tenant_id, event.at);
                let body = json!({
                    "type": event.kind,
                    "timestamp": event.time,
                    "cursor": cursor,
                    "data": event.payload,
                });
                (cursor, body.to_string())
            })
            .collect();
        let mut rows = FanOut::default();
        for webhook in webhooks {
            let after = webhook.place();
            if last <= after {
                continue;
            }
            for (event, (cursor, body)) in page.iter().zip(&bodies) {
                if event.at > after && webhook.types.iter().any(|t| t == event.kind) {
                    rows.ids.push(Uuid::now_v7());
                    rows.webhooks.push(webhook.webhook_id);
                    rows.kinds.push(event.kind.to_owned());
                    rows.cursors.push(cursor.clone());
                    rows.times.push(event.time);
                    rows.bodies.push(body.clone());
                }
            }
            rows.moved.push(webhook.webhook_id);
        }
        if rows.moved.is_empty() {
            return Ok(());
        }
        let mut tx = Scope::System.begin(&self.pool).await?;
        sqlx::query!(
            r#"INSERT INTO webhook_deliveries (delivery_id, tenant_id, webhook_id, message_id,
                   event_type, event_cursor, event_time, body, state, next_attempt_at)
               SELECT id, $1, webhook_id, 'msg_' || replace(id::text, '-', ''), kind, cursor, at,
                      body, 'pending', now()
               FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[],
                           $7::text[]) AS e(id, webhook_id, kind, cursor, at, body)"#,
            tenant_id,
            &rows.ids,
            &rows.webhooks,
            &rows.kinds,
            &rows.cursors,
            &rows.times,
            &rows.bodies,
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!(
            r#"UPDATE webhooks SET after_tx = $2, after_source = $3, after_position = $4
               WHERE webhook_id = ANY($1)"#,
            &rows.moved,
            last.tx_id,
            last.source as i16,
            last.position,
        )
        .execute(&mut *tx)
        .await?;
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

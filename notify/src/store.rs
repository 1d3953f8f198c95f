//! The webhooks' rows: endpoints with their wrapped secrets, deliveries and attempts, as a tenant
//! sees and changes them (every statement within the tenant's row-level scope).

use chrono::{DateTime, Utc};
use efms_commands::keys::KeyError;
use efms_commands::{Keyring, Scope};
use efms_domain::secrets::{Key, SecretError};
use efms_domain::webhooks::secret_text;
use sqlx::PgPool;
use uuid::Uuid;

/// The most webhooks a tenant may have.
pub const MAX_WEBHOOKS_PER_TENANT: i64 = 200;

/// Why a webhook could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The tenant's data key is not available.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A stored secret does not open.
    #[error("a webhook's stored secret does not open: {0}")]
    Secret(#[from] SecretError),
    /// The tenant has as many webhooks as it may.
    #[error("a tenant has at most {MAX_WEBHOOKS_PER_TENANT} webhooks")]
    TooMany,
}

/// A webhook as its owner sees it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries go.
    pub url: String,
    /// The event types it receives.
    pub types: Vec<String>,
    /// What it is for.
    pub description: Option<String>,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// When it was disabled.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Since when every attempt has failed.
    pub failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still signs.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Who created it.
    pub created_by: String,
}

/// The changes a `PATCH` asks for (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct WebhookChanges {
    /// A new URL.
    pub url: Option<String>,
    /// New event types.
    pub types: Option<Vec<String>>,
    /// A new description (`Some(None)` clears it).
    pub description: Option<Option<String>>,
    /// Disabled (false) or enabled again (true: the failure record is cleared).
    pub enabled: Option<bool>,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Its number, from 1.
    pub attempt: i32,
    /// When it started.
    pub at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i32,
    /// The receiver's status.
    pub status_code: Option<i32>,
    /// The start of the receiver's answer.
    pub response_excerpt: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// When the next one was due after it.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One event's delivery to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its id.
    pub id: Uuid,
    /// The `webhook-id` every attempt carries.
    pub message_id: String,
    /// The event's type.
    pub event_type: String,
    /// The event's cursor in the feed.
    pub event_cursor: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// How many attempts were made.
    pub attempts: i32,
    /// When the next is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the delivery was made.
    pub created_at: DateTime<Utc>,
    /// Every attempt, the first first.
    pub history: Vec<Attempt>,
}

/// Creates a webhook reading the feed from now on; answers it with its signing secret, which is
/// never shown again.
pub async fn create(
    pool: &PgPool,
    keyring: &Keyring,
    tenant_id: Uuid,
    actor: &str,
    url: &str,
    types: &[String],
    description: Option<&str>,
) -> Result<(Webhook, String), StoreError> {
    let (key_id, data_key) = keyring.active(tenant_id).await?;
    let secret = Key::generate();
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM webhooks WHERE tenant_id = $1"#,
        tenant_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if count >= MAX_WEBHOOKS_PER_TENANT {
        return Err(StoreError::TooMany);
    }
    // From now: every transaction not yet visible to all is still ahead of it.
    let id = Uuid::now_v7();
    sqlx::query!(
        r#"INSERT INTO webhooks (webhook_id, tenant_id, url, types, description, key_id, secret,
                                 after_tx, after_source, after_position, created_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7,
                   pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1, 1, 9223372036854775807, $8)"#,
        id,
        tenant_id,
        url,
        types,
        description,
        key_id,
        data_key.wrap(&secret),
        actor,
    )
    .execute(&mut *tx)
    .await?;
    let webhook = select(&mut tx, tenant_id, Some(id)).await?.remove(0);
    tx.commit().await?;
    Ok((webhook, secret_text(secret.bytes())))
}

/// The tenant's webhooks (or the one with `id`), oldest first.
async fn select(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    id: Option<Uuid>,
) -> Result<Vec<Webhook>, sqlx::Error> {
    sqlx::query_as!(
        Webhook,
        r#"SELECT webhook_id AS "id!", url AS "url!", types AS "types!", description,
                  enabled AS "enabled!", disabled_reason, disabled_at, failing_since,
                  CASE WHEN previous_until > now() THEN previous_until END AS previous_secret_until,
                  created_at AS "created_at!", created_by AS "created_by!"
           FROM webhooks
           WHERE tenant_id = $1 AND ($2::uuid IS NULL OR webhook_id = $2)
           ORDER BY created_at, webhook_id"#,
        tenant_id,
        id,
    )
    .fetch_all(tx)
    .await
}

/// The tenant's webhooks, oldest first.
pub async fn list(pool: &PgPool, tenant_id: Uuid) -> Result<Vec<Webhook>, StoreError> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let webhooks = select(&mut tx, tenant_id, None).await?;
    tx.commit().await?;
    Ok(webhooks)
}

/// The tenant's webhook `id`.
pub async fn get(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<Option<Webhook>, StoreError> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let webhook = select(&mut tx, tenant_id, Some(id)).await?.pop();
    tx.commit().await?;
    Ok(webhook)
}

/// Applies `changes` to webhook `id`; `None` when the tenant has no such webhook.
pub async fn update(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
    changes: WebhookChanges,
) -> Result<Option<Webhook>, StoreError> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let (set_description, description) = match changes.description {
        Some(description) => (true, description),
        None => (false, None),
    };
    let updated = sqlx::query!(
        r#"UPDATE webhooks SET
               url = coalesce($3, url),
               types = coalesce($4, types),
               description = CASE WHEN $5 THEN $6 ELSE description END,
               enabled = coalesce($7, enabled),
               disabled_reason = CASE WHEN $7 IS NULL THEN disabled_reason
                                      WHEN $7 THEN NULL ELSE 'disabled by a user' END,
               disabled_at = CASE WHEN $7 IS NULL OR NOT $7 = enabled THEN disabled_at
                                  WHEN $7 THEN NULL ELSE now() END,
               failing_since = CASE WHEN $7 THEN NULL ELSE failing_since END,
               updated_at = now()
           WHERE tenant_id = $1 AND webhook_id = $2"#,
        tenant_id,
        id,
        changes.url,
        changes.types.as_deref(),
        set_description,
        description,
        changes.enabled,
    )
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(None);
    }
    let webhook = select(&mut tx, tenant_id, Some(id)).await?.pop();
    tx.commit().await?;
    Ok(webhook)
}

/// Deletes webhook `id` with its deliveries; `false` when the tenant has no such webhook.
pub async fn delete(pool: &PgPool, tenant_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let deleted = sqlx::query!(
        "DELETE FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2",
        tenant_id,
        id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(deleted.rows_affected() == 1)
}

/// Gives webhook `id` a new signing secret; the one it replaces keeps signing (a second
/// signature) for `overlap`. `None` when the tenant has no such webhook.
pub async fn rotate_secret(
    pool: &PgPool,
    keyring: &Keyring,
    tenant_id: Uuid,
    id: Uuid,
    overlap: std::time::Duration,
) -> Result<Option<String>, StoreError> {
    let (key_id, data_key) = keyring.active(tenant_id).await?;
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let Some(current) = sqlx::query!(
        "SELECT key_id, secret FROM webhooks WHERE tenant_id = $1 AND webhook_id = $2 FOR UPDATE",
        tenant_id,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let old_key = keyring
        .get(tenant_id, &current.key_id)
        .await?
        .ok_or_else(|| SecretError::UnknownKey(current.key_id.clone()))?;
    let old = old_key.unwrap_key(&current.secret)?;
    let fresh = Key::generate();
    sqlx::query!(
        r#"UPDATE webhooks SET key_id = $3, secret = $4, previous_secret = $5,
               previous_until = now() + make_interval(secs => $6::float8), updated_at = now()
           WHERE tenant_id = $1 AND webhook_id = $2"#,
        tenant_id,
        id,
        key_id,
        data_key.wrap(&fresh),
        data_key.wrap(&old),
        overlap.as_secs_f64(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(secret_text(fresh.bytes())))
}

/// The latest `limit` deliveries of webhook `id` (in `state` when given), newest first, each
/// with its attempts.
pub async fn deliveries(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
    state: Option<&str>,
    limit: i64,
) -> Result<Vec<Delivery>, StoreError> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let rows = sqlx::query!(
        r#"SELECT delivery_id, message_id, event_type, event_cursor, state, attempts,
                  next_attempt_at, created_at
           FROM webhook_deliveries
           WHERE tenant_id = $1 AND webhook_id = $2 AND ($3::text IS NULL OR state = $3)
           ORDER BY created_at DESC, delivery_id DESC
           LIMIT $4"#,
        tenant_id,
        id,
        state,
        limit,
    )
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|row| row.delivery_id).collect();
    let attempts = sqlx::query!(
        r#"SELECT delivery_id, attempt, at, duration_ms, status_code, response_excerpt, error,
                  next_attempt_at
           FROM webhook_attempts WHERE tenant_id = $1 AND delivery_id = ANY($2)
           ORDER BY delivery_id, attempt"#,
        tenant_id,
        &ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .into_iter()
        .map(|row| Delivery {
            history: attempts
                .iter()
                .filter(|attempt| attempt.delivery_id == row.delivery_id)
                .map(|attempt| Attempt {
                    attempt: attempt.attempt,
                    at: attempt.at,
                    duration_ms: attempt.duration_ms,
                    status_code: attempt.status_code,
                    response_excerpt: attempt.response_excerpt.clone(),
                    error: attempt.error.clone(),
                    next_attempt_at: attempt.next_attempt_at,
                })
                .collect(),
            id: row.delivery_id,
            message_id: row.message_id,
            event_type: row.event_type,
            event_cursor: row.event_cursor,
            state: row.state,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            created_at: row.created_at,
        })
        .collect())
}

/// Makes delivery `delivery_id` of webhook `id` due again now (its attempts go on counting);
/// `false` when there is no such delivery.
pub async fn redeliver(
    pool: &PgPool,
    tenant_id: Uuid,
    id: Uuid,
    delivery_id: Uuid,
) -> Result<bool, StoreError> {
    let mut tx = Scope::Tenant(tenant_id).begin(pool).await?;
    let updated = sqlx::query!(
        r#"UPDATE webhook_deliveries
           SET state = 'pending', next_attempt_at = now(), finished_at = NULL
           WHERE tenant_id = $1 AND webhook_id = $2 AND delivery_id = $3"#,
        tenant_id,
        id,
        delivery_id,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(updated.rows_affected() == 1)
}

//! `/api/v1/tenants/{tenant}/webhooks` (API-WH-001…003, ADR 0015): endpoints that receive the
//! tenant's events, signed as Standard Webhooks. Creating one answers once with its signing
//! secret (`whsec_…`); rotating answers the new one, the old one signing beside it for the
//! overlap. Targets must be http(s); private, loopback and link-local targets are refused unless
//! the installation allows them.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use efms_domain::feed::EVENT_TYPES;
use efms_notify::store::{self, StoreError, Webhook, WebhookChanges};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{ManageWebhooks, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::state::AppState;

/// How long each step of a target's check may take (resolving its name, asking it for a redirect).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The `{id}` of a webhook route.
#[derive(Debug, Deserialize)]
pub struct WebhookId {
    id: String,
}

/// A webhook as its owner sees it (never its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    id: Uuid,
    /// Where deliveries go.
    url: String,
    /// The event types it receives.
    types: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// Whether deliveries are made.
    enabled: bool,
    /// Why it was disabled (a 410, failures for longer than the setting, a user).
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_at: Option<DateTime<Utc>>,
    /// Since when every attempt has failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    failing_since: Option<DateTime<Utc>>,
    /// Until when the secret before the last rotation still signs beside the new one.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    created_by: String,
}

impl From<Webhook> for WebhookView {
    fn from(webhook: Webhook) -> Self {
        Self {
            id: webhook.id,
            url: webhook.url,
            types: webhook.types,
            description: webhook.description,
            enabled: webhook.enabled,
            disabled_reason: webhook.disabled_reason,
            disabled_at: webhook.disabled_at,
            failing_since: webhook.failing_since,
            previous_secret_until: webhook.previous_secret_until,
            created_at: webhook.created_at,
            created_by: webhook.created_by,
        }
    }
}

/// A new webhook, with the secret that signs its deliveries (shown this once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    webhook: WebhookView,
    /// `whsec_` and the base64 of the secret's bytes, as Standard Webhooks libraries take it.
    secret: String,
}

/// A new signing secret (shown this once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    /// `whsec_…`.
    secret: String,
    /// Until when the previous secret signs too.
    previous_secret_until: DateTime<Utc>,
}

/// The webhooks of a tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhooksPage {
    items: Vec<WebhookView>,
}

/// `POST /webhooks`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// An `http` or `https` URL.
    url: String,
    /// The event types to receive (at least one).
    types: Vec<String>,
    /// What it is for (at most 500 characters).
    description: Option<String>,
}

/// `PATCH /webhooks/{id}`: what changes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookChange {
    url: Option<String>,
    types: Option<Vec<String>>,
    /// An empty text removes it.
    description: Option<String>,
    /// `false` disables it; `true` enables it again and forgets its failures.
    enabled: Option<bool>,
}

/// Checks a target URL: http(s), not too long, and a target the installation lets webhooks
/// reach (its address, what its name resolves to, and where it redirects).
async fn check_url(state: &AppState, url: &str) -> Result<(), FieldError> {
    let at = |detail: String| FieldError::at("/url", detail);
    let parsed = reqwest::Url::parse(url).map_err(|error| at(format!("is not a URL: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(at(format!(
            "the scheme is `{}`; a webhook's URL is http or https",
            parsed.scheme()
        )));
    }
    if url.len() > 2048 {
        return Err(at("is longer than 2048 characters".to_owned()));
    }
    let policy = state.webhooks.borrow().targets.clone();
    efms_notify::target_check::check_target(url, &policy, CHECK_TIMEOUT)
        .await
        .map_err(at)
}

/// Checks a list of event types.
fn check_types(types: &[String]) -> Result<(), FieldError> {
    if types.is_empty() {
        return Err(FieldError::at("/types", "names at least one event type"));
    }
    for (index, kind) in types.iter().enumerate() {
        if !EVENT_TYPES.contains(&kind.as_str()) {
            return Err(FieldError::at(
                format!("/types/{index}"),
                format!(
                    "`{}` is not an event type; the types are {}",
                    kind.escape_default(),
                    EVENT_TYPES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn check_description(description: Option<&str>) -> Result<(), FieldError> {
    match description {
        Some(text) if text.chars().count() > 500 => Err(FieldError::at(
            "/description",
            "is longer than 500 characters",
        )),
        _ => Ok(()),
    }
}

/// What a store failure answers.
pub(crate) fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Database(error) => error.into(),
        StoreError::TooMany => ApiError::Conflict(StoreError::TooMany.to_string()),
        other => ApiError::internal(other),
    }
}

/// The webhook `{id}` names, or 404.
pub(crate) fn webhook_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("there is no webhook `{id}`")))
}

fn missing(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("there is no webhook `{id}`"))
}

/// `POST /api/v1/tenants/{tenant}/webhooks`: a webhook receiving the events committed from now
/// on, answered with its signing secret.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/webhooks", tag = "webhooks",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = NewWebhook,
    responses((status = 201, description = "Created, with its secret", body = CreatedWebhook),
        (status = 403, description = "Only `admin` manages webhooks", body = crate::problem::Problem),
        (status = 409, description = "The tenant has as many webhooks as it may", body = crate::problem::Problem),
        (status = 422, description = "A bad URL, target or event type", body = crate::problem::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    tenant: Tenant<ManageWebhooks>,
    ApiJson(body): ApiJson<NewWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let errors: Vec<FieldError> = [
        check_url(&state, &body.url).await.err(),
        check_types(&body.types).err(),
        check_description(body.description.as_deref()).err(),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (webhook, secret) = store::create(
        &state.pool,
        &state.keyring,
        tenant.tenant_id,
        &tenant.actor().audit_name(),
        &body.url,
        &body.types,
        body.description.as_deref().filter(|text| !text.is_empty()),
    )
    .await
    .map_err(store_error)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook: webhook.into(),
            secret,
        }),
    ))
}

/// `GET /api/v1/tenants/{tenant}/webhooks`: the tenant's webhooks, oldest first.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/webhooks", tag = "webhooks",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The webhooks", body = WebhooksPage),
        (status = 403, description = "Only `admin` manages webhooks", body = crate::problem::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant<ManageWebhooks>,
) -> Result<Json<WebhooksPage>, ApiError> {
    let webhooks = store::list(&state.pool, tenant.tenant_id)
        .await
        .map_err(store_error)?;
    Ok(Json(WebhooksPage {
        items: webhooks.into_iter().map(Into::into).collect(),
    }))
}

/// `GET /api/v1/tenants/{tenant}/webhooks/{id}`: one webhook and its health.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/webhooks/{id}", tag = "webhooks",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, description = "The webhook", body = WebhookView),
        (status = 404, description = "No such webhook", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ManageWebhooks>,
    Path(WebhookId { id }): Path<WebhookId>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = webhook_id(&id)?;
    let webhook = store::get(&state.pool, tenant.tenant_id, id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| missing(id))?;
    Ok(Json(webhook.into()))
}

/// `PATCH /api/v1/tenants/{tenant}/webhooks/{id}`: a new URL, types or description; disabled or
/// enabled again.
#[utoipa::path(patch, path = "/api/v1/tenants/{tenant}/webhooks/{id}", tag = "webhooks",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The webhook's id")),
    request_body = WebhookChange,
    responses((status = 200, description = "Changed", body = WebhookView),
        (status = 404, description = "No such webhook", body = crate::problem::Problem),
        (status = 422, description = "A bad URL, target or event type", body = crate::problem::Problem)))]
pub async fn update(
    State(state): State<AppState>,
    tenant: Tenant<ManageWebhooks>,
    Path(WebhookId { id }): Path<WebhookId>,
    ApiJson(body): ApiJson<WebhookChange>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = webhook_id(&id)?;
    let mut errors = Vec::new();
    if let Some(url) = &body.url {
        errors.extend(check_url(&state, url).await.err());
    }
    if let Some(types) = &body.types {
        errors.extend(check_types(types).err());
    }
    errors.extend(check_description(body.description.as_deref()).err());
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let changes = WebhookChanges {
        url: body.url,
        types: body.types,
        description: body
            .description
            .map(|text| Some(text).filter(|text| !text.is_empty())),
        enabled: body.enabled,
    };
    let webhook = store::update(&state.pool, tenant.tenant_id, id, changes)
        .await
        .map_err(store_error)?
        .ok_or_else(|| missing(id))?;
    Ok(Json(webhook.into()))
}

/// `DELETE /api/v1/tenants/{tenant}/webhooks/{id}`: the webhook and its deliveries go.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/webhooks/{id}", tag = "webhooks",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The webhook's id")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such webhook", body = crate::problem::Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant<ManageWebhooks>,
    Path(WebhookId { id }): Path<WebhookId>,
) -> Result<StatusCode, ApiError> {
    let id = webhook_id(&id)?;
    if store::delete(&state.pool, tenant.tenant_id, id)
        .await
        .map_err(store_error)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing(id))
    }
}

/// `POST /api/v1/tenants/{tenant}/webhooks/{id}/rotate-secret`: a new signing secret; the old
/// one signs beside it (a second `v1,` signature) until the overlap ends.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, description = "The new secret", body = RotatedSecret),
        (status = 404, description = "No such webhook", body = crate::problem::Problem)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    tenant: Tenant<ManageWebhooks>,
    Path(WebhookId { id }): Path<WebhookId>,
) -> Result<Json<RotatedSecret>, ApiError> {
    let id = webhook_id(&id)?;
    let overlap = state.webhooks.borrow().secret_overlap;
    let secret = store::rotate_secret(&state.pool, &state.keyring, tenant.tenant_id, id, overlap)
        .await
        .map_err(store_error)?
        .ok_or_else(|| missing(id))?;
    Ok(Json(RotatedSecret {
        secret,
        previous_secret_until: Utc::now()
            + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::MAX),
    }))
}

/// The webhooks' routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get as read, post};
    axum::Router::new()
        .route("/tenants/{tenant}/webhooks", post(create).get(list))
        .route(
            "/tenants/{tenant}/webhooks/{id}",
            read(get).patch(update).delete(delete),
        )
        .route(
            "/tenants/{tenant}/webhooks/{id}/rotate-secret",
            post(rotate_secret),
        )
        .merge(super::webhook_deliveries::router())
}

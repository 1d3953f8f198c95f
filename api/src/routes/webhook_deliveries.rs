//! `/api/v1/tenants/{tenant}/webhooks/{id}/deliveries` (API-WH-003): every event sent to a
//! webhook with every attempt (time, duration, status, the start of the answer, the error, when
//! the next is due), and redelivery of any of them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use efms_notify::store::{self, Attempt, Delivery};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::webhooks::{store_error, webhook_id};
use crate::access::{ManageWebhooks, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiQuery;
use crate::state::AppState;

/// The `{id}` and `{delivery}` of a delivery route.
#[derive(Debug, Deserialize)]
pub struct DeliveryPath {
    id: String,
    delivery: String,
}

/// The `{id}` of a webhook route.
#[derive(Debug, Deserialize)]
pub struct WebhookPath {
    id: String,
}

/// `?state=&limit=` of the delivery list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesParams {
    /// Only deliveries in this state: `pending`, `delivered` or `failed`.
    state: Option<String>,
    /// At most this many, 1 to 500 (default 50), newest first.
    limit: Option<u32>,
}

/// One attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// Its number, from 1.
    attempt: i32,
    at: DateTime<Utc>,
    duration_ms: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<i32>,
    /// The first KiB of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    response_excerpt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// When the next attempt was due after this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<DateTime<Utc>>,
}

/// One event's delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    id: Uuid,
    /// The `webhook-id` header of every attempt.
    message_id: String,
    /// The event's type and cursor.
    event_type: String,
    event_cursor: String,
    /// `pending`, `delivered` or `failed`.
    state: String,
    attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    history: Vec<AttemptView>,
}

impl From<Attempt> for AttemptView {
    fn from(attempt: Attempt) -> Self {
        Self {
            attempt: attempt.attempt,
            at: attempt.at,
            duration_ms: attempt.duration_ms,
            status_code: attempt.status_code,
            response_excerpt: attempt.response_excerpt,
            error: attempt.error,
            next_attempt_at: attempt.next_attempt_at,
        }
    }
}

impl From<Delivery> for DeliveryView {
    fn from(delivery: Delivery) -> Self {
        Self {
            id: delivery.id,
            message_id: delivery.message_id,
            event_type: delivery.event_type,
            event_cursor: delivery.event_cursor,
            state: delivery.state,
            attempts: delivery.attempts,
            next_attempt_at: delivery.next_attempt_at,
            created_at: delivery.created_at,
            history: delivery.history.into_iter().map(Into::into).collect(),
        }
    }
}

/// A page of deliveries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveriesPage {
    items: Vec<DeliveryView>,
}

/// `GET /api/v1/tenants/{tenant}/webhooks/{id}/deliveries`: the latest deliveries, each with
/// its attempts.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/webhooks/{id}/deliveries", tag = "webhooks",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The webhook's id"), DeliveriesParams),
    responses((status = 200, description = "The deliveries, newest first", body = DeliveriesPage),
        (status = 404, description = "No such webhook", body = crate::problem::Problem),
        (status = 422, description = "Bad state or limit", body = crate::problem::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant<ManageWebhooks>,
    Path(WebhookPath { id }): Path<WebhookPath>,
    ApiQuery(params): ApiQuery<DeliveriesParams>,
) -> Result<Json<DeliveriesPage>, ApiError> {
    let id = webhook_id(&id)?;
    let page = super::PageSize::from_param(params.limit)?;
    if let Some(wanted) = params.state.as_deref() {
        if !["pending", "delivered", "failed"].contains(&wanted) {
            return Err(ApiError::Validation(vec![FieldError::parameter(
                "state",
                "is `pending`, `delivered` or `failed`",
            )]));
        }
    }
    if store::get(&state.pool, tenant.tenant_id, id)
        .await
        .map_err(store_error)?
        .is_none()
    {
        return Err(ApiError::NotFound(format!("there is no webhook `{id}`")));
    }
    let deliveries = store::deliveries(
        &state.pool,
        tenant.tenant_id,
        id,
        params.state.as_deref(),
        page.size(),
    )
    .await
    .map_err(store_error)?;
    Ok(Json(DeliveriesPage {
        items: deliveries.into_iter().map(Into::into).collect(),
    }))
}

/// `POST /api/v1/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}/redeliver`: the delivery
/// is due again now, with the same `webhook-id`.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}/redeliver", tag = "webhooks",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The webhook's id"),
        ("delivery" = String, Path, description = "The delivery's id")),
    responses((status = 202, description = "Due again"),
        (status = 404, description = "No such webhook or delivery", body = crate::problem::Problem)))]
pub async fn redeliver(
    State(state): State<AppState>,
    tenant: Tenant<ManageWebhooks>,
    Path(DeliveryPath { id, delivery }): Path<DeliveryPath>,
) -> Result<StatusCode, ApiError> {
    let id = webhook_id(&id)?;
    let missing = || ApiError::NotFound(format!("webhook `{id}` has no delivery `{delivery}`"));
    let delivery_id = Uuid::parse_str(&delivery).map_err(|_| missing())?;
    if store::redeliver(&state.pool, tenant.tenant_id, id, delivery_id)
        .await
        .map_err(store_error)?
    {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(missing())
    }
}

/// The deliveries' routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/tenants/{tenant}/webhooks/{id}/deliveries", get(list))
        .route(
            "/tenants/{tenant}/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(redeliver),
        )
}

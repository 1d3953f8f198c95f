//! `POST /api/v1/tenants/{tenant}/events/tickets`: a ticket that opens the tenant's event
//! stream or WebSocket for a minute without a bearer token (`?ticket=`), for a browser, whose
//! `EventSource` cannot send headers. It speaks for the caller and is withdrawn with them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::access::{ReadConfig, Tenant};
use crate::auth::middleware::IssuedTo;
use crate::error::ApiError;
use crate::state::AppState;

/// A ticket.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTicket {
    /// Give it as `?ticket=` to `…/events/stream` or `…/events/ws`.
    ticket: String,
    /// Until when it opens a stream (a stream opened in time runs on).
    expires_at: DateTime<Utc>,
}

/// `POST /api/v1/tenants/{tenant}/events/tickets`: a ticket for this tenant's event streams.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/events/tickets", tag = "events",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses((status = 201, description = "A ticket, good for a minute", body = EventTicket),
        (status = 404, description = "No such tenant", body = crate::problem::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(IssuedTo(user)): Extension<IssuedTo>,
    tenant: Tenant<ReadConfig>,
) -> Result<(StatusCode, Json<EventTicket>), ApiError> {
    let (ticket, expires_at) = state.jwt.issue_ticket(tenant.actor(), user, &tenant.slug)?;
    Ok((
        StatusCode::CREATED,
        Json(EventTicket {
            ticket,
            expires_at: DateTime::from_timestamp(expires_at, 0).unwrap_or_else(Utc::now),
        }),
    ))
}

/// The tickets' route.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route(
        "/tenants/{tenant}/events/tickets",
        axum::routing::post(create),
    )
}

//! The HTTP side of authentication: the bearer token middleware of `/api/v1` and the
//! [`Principal`] extractor handlers take the caller from.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use efms_domain::{Actor, Role};

use crate::error::ApiError;

/// Middleware for `/api/v1`: refuses requests without a valid bearer token (401 problem+json) and
/// hands the [`Principal`] to the handlers.
pub async fn require_bearer(
    State(state): State<crate::state::AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let verified = match credential(&request)? {
        Credential::Bearer(token) => state.jwt.verify_token_fetching(&token).await?,
        Credential::Ticket { ticket, tenant } => state.jwt.verify_ticket(&ticket, &tenant)?,
    };
    crate::credentials::refuse_withdrawn(&state.pool, &verified).await?;
    request.extensions_mut().insert(IssuedTo(verified.user));
    let actor = verified.actor;
    if actor.role == Role::Proxy {
        return Err(ApiError::Forbidden(
            "a `proxy` token only streams configuration over xDS".to_owned(),
        ));
    }
    request.extensions_mut().insert(Principal(actor));
    Ok(next.run(request).await)
}

/// What a request authenticates with.
enum Credential {
    /// A bearer token: in the `Authorization` header, or for an event WebSocket, offered as the
    /// subprotocol `bearer.<token>` (a browser cannot set headers on a WebSocket).
    Bearer(String),
    /// An event stream ticket (`?ticket=`) for the stream of `tenant`.
    Ticket { ticket: String, tenant: String },
}

/// The tenant whose event stream or WebSocket `path` is (`…/tenants/{tenant}/events/stream` or
/// `…/events/ws`): the only routes a ticket or a subprotocol token opens.
fn event_stream_of(path: &str) -> Option<&str> {
    let rest = path
        .strip_suffix("/events/stream")
        .or_else(|| path.strip_suffix("/events/ws"))?;
    let (before, tenant) = rest.rsplit_once('/')?;
    before.ends_with("/tenants").then_some(tenant)
}

/// The credential `request` carries.
fn credential(request: &Request) -> Result<Credential, ApiError> {
    if let Some(header) = request.headers().get(header::AUTHORIZATION) {
        return header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .map(|token| Credential::Bearer(token.to_owned()))
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "the Authorization header must read `Bearer <token>`".to_owned(),
                )
            });
    }
    let missing = || ApiError::Unauthorized("this route needs a bearer token".to_owned());
    let tenant = event_stream_of(request.uri().path()).ok_or_else(missing)?;
    let ticket = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("ticket="))
            .filter(|ticket| !ticket.is_empty())
    });
    if let Some(ticket) = ticket {
        return Ok(Credential::Ticket {
            ticket: ticket.to_owned(),
            tenant: tenant.to_owned(),
        });
    }
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix("bearer."))
        .map(|token| Credential::Bearer(token.to_owned()))
        .ok_or_else(missing)
}

/// The user or service account the caller's token was issued to, if any.
#[derive(Debug, Clone, Copy)]
pub struct IssuedTo(pub Option<super::TokenUser>);

/// The authenticated caller of an `/api/v1` route.
#[derive(Debug, Clone)]
pub struct Principal(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("this route needs a bearer token".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::event_stream_of;

    #[test]
    fn only_an_event_stream_route_names_the_tenant_a_ticket_may_open() {
        assert_eq!(
            event_stream_of("/api/v1/tenants/acme/events/stream"),
            Some("acme")
        );
        assert_eq!(event_stream_of("/tenants/acme/events/ws"), Some("acme"));
        assert_eq!(event_stream_of("/api/v1/tenants/acme/events"), None);
        assert_eq!(
            event_stream_of("/api/v1/tenants/acme/clusters/events/stream"),
            None
        );
    }
}

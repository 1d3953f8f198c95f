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
    let keys = &state.jwt;
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("this route needs a bearer token".to_owned()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must read `Bearer <token>`".to_owned())
        })?;
    let verified = keys.verify_token_fetching(token).await?;
    crate::credentials::refuse_withdrawn(&state.pool, &verified).await?;
    let actor = verified.actor;
    if actor.role == Role::Proxy {
        return Err(ApiError::Forbidden(
            "a `proxy` token only streams configuration over xDS".to_owned(),
        ));
    }
    request.extensions_mut().insert(Principal(actor));
    Ok(next.run(request).await)
}

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

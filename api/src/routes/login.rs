//! `POST /api/v1/auth/token`: a person's password login (NFR-SE-002).
//!
//! The request's form is checked first (a tenant slug, a user name of at most 100 characters),
//! before anything is counted or stored. The attempt is then reserved with the
//! [`LoginThrottle`](crate::login_throttle::LoginThrottle) (five failures per user name and
//! minute, and a limit per client address), and the password is checked with argon2id off the
//! async workers: against the user's hash, or a dummy one when the tenant or the user does not
//! exist, so that neither answers faster.

use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::{Extension, Json};
use efms_domain::{Role, TenantSlug};
use serde::{Deserialize, Serialize};

use crate::auth::TokenUser;
use crate::connections::ClientAddr;
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::login_throttle::Throttled;
use crate::routes::users::{is_username, USERNAME_FORM};
use crate::state::AppState;

/// How long a login token lives.
const LOGIN_TTL: Duration = Duration::from_secs(3600);

/// Body of a login.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The tenant's slug.
    tenant: String,
    /// The user's name: 1 to 100 of a-z, 0-9, `.`, `_`, `@`, `-`.
    username: String,
    /// The password.
    password: String,
}

/// A token from a login.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginToken {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// The tenant and user name of a well-formed login, or every fault.
fn well_formed(body: &Login) -> Result<TenantSlug, ApiError> {
    let slug = TenantSlug::parse(&body.tenant);
    let mut errors = Vec::new();
    if let Err(error) = &slug {
        errors.push(FieldError::at("/tenant", error.to_string()));
    }
    if !is_username(&body.username) {
        errors.push(FieldError::at("/username", USERNAME_FORM));
    }
    match slug {
        Ok(slug) if errors.is_empty() => Ok(slug),
        _ => Err(ApiError::Validation(errors)),
    }
}

fn throttled(refusal: Throttled, username: &str, window: Duration) -> ApiError {
    let seconds = window.as_secs();
    let (detail, retry_after_seconds) = match refusal {
        Throttled::User {
            retry_after_seconds,
        } => (
            format!("too many failed logins of `{username}` within {seconds} seconds; wait before trying again"),
            retry_after_seconds,
        ),
        Throttled::Address {
            retry_after_seconds,
        } => (
            format!("too many failed logins from this address within {seconds} seconds; wait before trying again"),
            retry_after_seconds,
        ),
        Throttled::Full {
            retry_after_seconds,
        } => (
            "too many failed logins right now; wait before trying again".to_owned(),
            retry_after_seconds,
        ),
    };
    ApiError::TooManyRequests {
        detail,
        retry_after_seconds,
    }
}

/// `POST /api/v1/auth/token`: a one-hour token for a person's name and password.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "users", security(()),
    request_body = Login,
    responses((status = 200, description = "A token", body = LoginToken),
        (status = 401, description = "Unknown tenant or user, or wrong password", body = crate::problem::Problem),
        (status = 422, description = "Not a tenant slug or not a user name", body = crate::problem::Problem),
        (status = 429, description = "Too many failed logins of this user or from this address; retry later", body = crate::problem::Problem)))]
pub async fn login(
    State(state): State<AppState>,
    client: Option<Extension<ConnectInfo<ClientAddr>>>,
    ApiJson(body): ApiJson<Login>,
) -> Result<Json<LoginToken>, ApiError> {
    let slug = well_formed(&body)?;
    let throttle = &state.login_throttle;
    let reservation = throttle
        .reserve(
            slug.tenant_id(),
            &body.username,
            client.map(|Extension(ConnectInfo(ClientAddr(addr)))| addr.ip()),
        )
        .map_err(|refusal| throttled(refusal, &body.username, throttle.limits().window))?;
    let user =
        crate::store::users::person_credentials(&state.pool, slug.tenant_id(), &body.username)
            .await?;
    let stored = user.as_ref().and_then(|user| user.password_hash.clone());
    let verified = crate::passwords::verify(body.password, stored).await?;
    let Some(user) = user.filter(|_| verified) else {
        // The reservation stays: a failure.
        return Err(ApiError::Unauthorized(
            "unknown tenant or user, or a wrong password".to_owned(),
        ));
    };
    reservation.succeeded();
    let role: Role = user.role.parse().map_err(ApiError::internal)?;
    let access_token = state
        .jwt
        .issue_for_user(
            &body.username,
            role,
            &slug,
            TokenUser {
                uid: user.user_id,
                generation: user.generation,
            },
            LOGIN_TTL,
        )
        .map_err(ApiError::internal)?;
    Ok(Json(LoginToken {
        access_token,
        token_type: "Bearer",
        expires_in: LOGIN_TTL.as_secs(),
    }))
}

/// The login route (it needs no token).
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/auth/token", axum::routing::post(login))
}

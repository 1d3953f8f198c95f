//! Users and service accounts of a tenant (FR-MT-003, NFR-SE-002).
//!
//! People log in with their password (see [`super::login`]) and get a one-hour token; service
//! accounts get a long-lived token when they are created. Every such token names its user and
//! the generation of its role and password, and is refused once the user is deleted or either
//! changed.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use efms_domain::Role;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{ManageUsers, ReadUsers, Tenant};
use crate::auth::TokenUser;
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::state::AppState;
use crate::store::users as store;

/// The `{id}` of a user route.
#[derive(Debug, Deserialize)]
pub struct UserId {
    id: String,
}

impl From<store::UserRow> for UserView {
    fn from(row: store::UserRow) -> Self {
        Self {
            id: row.user_id,
            username: row.username,
            role: row.role,
            kind: row.kind,
            created_at: row.created_at,
            created_by: row.created_by,
            token: None,
        }
    }
}

/// How long a service account's token lives.
const SERVICE_TTL: Duration = Duration::from_secs(365 * 86_400);
/// The shortest password accepted.
const MIN_PASSWORD: usize = 12;

/// Body of a user creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1 to 100 of a-z, 0-9, `.`, `_`, `@`, `-`.
    username: String,
    /// `admin`, `operator`, `viewer` or `auditor`.
    role: String,
    /// A person's password (at least 12 characters); absent for a service account.
    #[serde(default)]
    password: Option<String>,
    /// A service account: no password, a long-lived token in the answer.
    #[serde(default)]
    service: bool,
}

/// A user as the API shows it (never its password hash).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    id: Uuid,
    username: String,
    role: String,
    /// `person` or `service`.
    kind: String,
    created_at: DateTime<Utc>,
    created_by: String,
    /// A service account's token: shown once, when it is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

/// `POST /api/v1/tenants/{tenant}/users`: a person or a service account.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/users", tag = "users",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = NewUser,
    responses((status = 201, description = "Created (a service account with its token)", body = UserView),
        (status = 403, description = "Only admins manage users", body = crate::problem::Problem),
        (status = 409, description = "The name is taken", body = crate::problem::Problem),
        (status = 422, description = "Bad name, role or password", body = crate::problem::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    tenant: Tenant<ManageUsers>,
    ApiJson(body): ApiJson<NewUser>,
) -> Result<Response, ApiError> {
    let (role, password) = checked(&body)?;
    let hash = match password {
        Some(password) => Some(crate::passwords::hash(password.to_owned()).await?),
        None => None,
    };
    let user_id = Uuid::now_v7();
    let kind = if body.service { "service" } else { "person" };
    let created_by = tenant.actor().audit_name();
    let new_user = store::NewUser {
        tenant_id: tenant.tenant_id,
        user_id,
        username: &body.username,
        role: role.as_str(),
        kind,
        password_hash: hash,
        created_by: &created_by,
    };
    let created_at = store::create(&state.pool, new_user).await?.ok_or_else(|| {
        ApiError::Conflict(format!("there is a user `{}` already", body.username))
    })?;
    let token = body
        .service
        .then(|| {
            state.jwt.issue_for_user(
                &body.username,
                role,
                &tenant.slug,
                TokenUser {
                    uid: user_id,
                    generation: 0,
                },
                SERVICE_TTL,
            )
        })
        .transpose()
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            id: user_id,
            username: body.username,
            role: role.to_string(),
            kind: kind.to_owned(),
            created_at,
            created_by,
            token,
        }),
    )
        .into_response())
}

/// What a user name looks like.
pub(crate) const USERNAME_FORM: &str =
    "1 to 100 of a-z, 0-9, `.`, `_`, `@`, `-`, starting with a letter or digit";

/// Whether `name` has the form of a user name ([`USERNAME_FORM`]).
pub(crate) fn is_username(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || (i > 0 && "._@-".contains(c))
        })
}

/// The role and the password to hash of a valid creation, or every fault.
fn checked(body: &NewUser) -> Result<(Role, Option<&str>), ApiError> {
    let mut errors = Vec::new();
    if !is_username(&body.username) {
        errors.push(FieldError::at("/username", USERNAME_FORM));
    }
    let role = user_role(&body.role, &mut errors);
    let hash = match (&body.password, body.service) {
        (Some(_), true) => {
            errors.push(FieldError::at(
                "/password",
                "a service account has no password; it gets a token",
            ));
            None
        }
        (None, false) => {
            errors.push(FieldError::at("/password", "a person needs a password"));
            None
        }
        (Some(password), false) => acceptable_password(password, &mut errors),
        (None, true) => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok((role.expect("checked"), hash))
}

/// A role a user may have, or a fault at `/role`.
fn user_role(role: &str, errors: &mut Vec<FieldError>) -> Option<Role> {
    if let Ok(role @ (Role::Admin | Role::Operator | Role::Viewer | Role::Auditor)) =
        role.parse::<Role>()
    {
        Some(role)
    } else {
        errors.push(FieldError::at(
            "/role",
            "`admin`, `operator`, `viewer` or `auditor`",
        ));
        None
    }
}

/// `password` if it is acceptable, or a fault at `/password`.
fn acceptable_password<'a>(password: &'a str, errors: &mut Vec<FieldError>) -> Option<&'a str> {
    if password.chars().count() < MIN_PASSWORD {
        errors.push(FieldError::at(
            "/password",
            format!("at least {MIN_PASSWORD} characters"),
        ));
        return None;
    }
    Some(password)
}

/// Body of a change to a user: a new role, a new password (people only), or both.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    /// `admin`, `operator`, `viewer` or `auditor`.
    #[serde(default)]
    role: Option<String>,
    /// A person's new password (at least 12 characters).
    #[serde(default)]
    password: Option<String>,
}

/// `PATCH /api/v1/tenants/{tenant}/users/{id}`: a new role or password. Every token issued to the
/// user before is refused from then on; a service account gets its new token in the answer.
#[utoipa::path(patch, path = "/api/v1/tenants/{tenant}/users/{id}", tag = "users",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The user's id")),
    request_body = UserChange,
    responses((status = 200, description = "Changed (a service account with its new token)", body = UserView),
        (status = 403, description = "Only admins manage users", body = crate::problem::Problem),
        (status = 404, description = "No such user", body = crate::problem::Problem),
        (status = 422, description = "Nothing to change, a bad role or password, or a password for a service account", body = crate::problem::Problem)))]
pub async fn change(
    State(state): State<AppState>,
    tenant: Tenant<ManageUsers>,
    Path(UserId { id }): Path<UserId>,
    ApiJson(body): ApiJson<UserChange>,
) -> Result<Json<UserView>, ApiError> {
    let missing = || ApiError::NotFound(format!("there is no user `{id}`"));
    let user_id = Uuid::parse_str(&id).map_err(|_| missing())?;
    let mut errors = Vec::new();
    if body.role.is_none() && body.password.is_none() {
        errors.push(FieldError::at("", "name a new `role`, `password`, or both"));
    }
    let role = body
        .role
        .as_deref()
        .and_then(|role| user_role(role, &mut errors));
    let password = body
        .password
        .as_deref()
        .and_then(|password| acceptable_password(password, &mut errors));
    // Hashed before the row is locked: argon2 may wait for a free CPU.
    let hash = match password.filter(|_| errors.is_empty()) {
        Some(password) => Some(crate::passwords::hash(password.to_owned()).await?),
        None => None,
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let changed = store::change(
        &state.pool,
        (tenant.tenant_id, user_id),
        role.map(|role| role.to_string()),
        hash,
        body.password.is_some(),
    )
    .await?;
    let (user, generation) = match changed {
        store::Changed::Missing => return Err(missing()),
        store::Changed::PasswordForService => {
            return Err(ApiError::Validation(vec![FieldError::at(
                "/password",
                "a service account has no password; it gets a token",
            )]))
        }
        store::Changed::Done { user, generation } => (user, generation),
    };
    // The user's open xDS streams end now on this replica, on others at their next check.
    state.xds.recheck_credentials();
    let token = if user.kind == "service" {
        let role: Role = user.role.parse().map_err(ApiError::internal)?;
        let token_user = TokenUser {
            uid: user_id,
            generation,
        };
        Some(
            state
                .jwt
                .issue_for_user(&user.username, role, &tenant.slug, token_user, SERVICE_TTL)
                .map_err(ApiError::internal)?,
        )
    } else {
        None
    };
    Ok(Json(UserView {
        token,
        ..UserView::from(user)
    }))
}

/// `GET /api/v1/tenants/{tenant}/users`: the live users, by name.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/users", tag = "users",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The users", body = Vec<UserView>),
        (status = 403, description = "Only admins and auditors list users", body = crate::problem::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant<ReadUsers>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    let users = store::live(&state.pool, tenant.tenant_id, None).await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}

/// `GET /api/v1/tenants/{tenant}/users/{id}`: one live user.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/users/{id}", tag = "users",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The user's id")),
    responses((status = 200, description = "The user", body = UserView),
        (status = 403, description = "Only admins and auditors read users", body = crate::problem::Problem),
        (status = 404, description = "No such user", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ReadUsers>,
    Path(UserId { id }): Path<UserId>,
) -> Result<Json<UserView>, ApiError> {
    let missing = || ApiError::NotFound(format!("there is no user `{id}`"));
    let user_id = Uuid::parse_str(&id).map_err(|_| missing())?;
    store::live(&state.pool, tenant.tenant_id, Some(user_id))
        .await?
        .pop()
        .map(|user| Json(UserView::from(user)))
        .ok_or_else(missing)
}

/// `DELETE /api/v1/tenants/{tenant}/users/{id}`: every token of the user is refused from now on.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/users/{id}", tag = "users",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The user's id")),
    responses((status = 204, description = "Deleted"),
        (status = 403, description = "Only admins manage users", body = crate::problem::Problem),
        (status = 404, description = "No such user", body = crate::problem::Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant<ManageUsers>,
    Path(UserId { id }): Path<UserId>,
) -> Result<StatusCode, ApiError> {
    let missing = || ApiError::NotFound(format!("there is no user `{id}`"));
    let user_id = Uuid::parse_str(&id).map_err(|_| missing())?;
    if !store::delete(&state.pool, tenant.tenant_id, user_id).await? {
        return Err(missing());
    }
    state.xds.recheck_credentials();
    Ok(StatusCode::NO_CONTENT)
}

/// The users' routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing;
    axum::Router::new()
        .route("/tenants/{tenant}/users", routing::get(list).post(create))
        .route(
            "/tenants/{tenant}/users/{id}",
            routing::get(get).delete(delete).patch(change),
        )
}

//! `/api/v1/tenants/{tenant}/alert-rules` (NFR-OB-005, ADR 0016): a tenant's alert rules, of
//! built-in kinds with parameters: `proxy_nacked`, `proxy_behind`, `proxy_disconnected`,
//! `vm_down`, `container_exited`, `container_restarting` (`count`, `window`),
//! `container_oom_killed` (`window`), `container_unhealthy`; each with `for`, how long its
//! condition holds before the alert fires.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use efms_domain::alerts::check_rule;
use efms_notify::alerts::store::{self, Rule, RuleError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::access::{ManageAlerts, ReadFleet, Tenant};
use crate::error::{ApiError, FieldError};
use crate::extract::ApiJson;
use crate::state::AppState;

/// The `{id}` of a rule route.
#[derive(Debug, Deserialize)]
pub struct RuleId {
    id: String,
}

/// An alert rule.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RuleView {
    id: Uuid,
    /// Unique in the tenant.
    name: String,
    /// Its kind.
    kind: String,
    /// Its parameters (`for`, and those of its kind).
    #[schema(value_type = Object)]
    params: Value,
    /// Whether it is evaluated.
    enabled: bool,
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Rule> for RuleView {
    fn from(rule: Rule) -> Self {
        Self {
            id: rule.id,
            name: rule.name,
            kind: rule.kind,
            params: rule.params,
            enabled: rule.enabled,
            created_by: rule.created_by,
            created_at: rule.created_at,
            updated_at: rule.updated_at,
        }
    }
}

/// The tenant's rules.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RulesPage {
    items: Vec<RuleView>,
}

/// `POST /alert-rules`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    /// Lower-case letters, digits, `_`, `.` and `-`, at most 64.
    name: String,
    /// The kind.
    kind: String,
    /// Its parameters (`for` and those of the kind).
    #[schema(value_type = Object)]
    #[serde(default)]
    params: Value,
    /// Evaluated (default true).
    enabled: Option<bool>,
}

/// `PATCH /alert-rules/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleChange {
    name: Option<String>,
    /// Replaces the parameters whole.
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    enabled: Option<bool>,
}

fn check_name(name: &str) -> Result<(), FieldError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(FieldError::at(
            "/name",
            "is 1 to 64 lower-case letters, digits, `_`, `.` or `-`, starting and ending with a letter or digit",
        ))
    }
}

/// Checks a rule's name, kind and parameters, naming every problem's pointer.
fn check(name: &str, kind: &str, params: &Value) -> Result<(), ApiError> {
    let mut errors: Vec<FieldError> = check_name(name).err().into_iter().collect();
    if let Err(problems) = check_rule(kind, params) {
        errors.extend(
            problems
                .into_iter()
                .map(|problem| FieldError::at(problem.pointer, problem.detail)),
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

fn rule_error(error: RuleError) -> ApiError {
    match error {
        RuleError::Database(error) => error.into(),
        other => ApiError::Conflict(other.to_string()),
    }
}

fn rule_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("there is no alert rule `{id}`")))
}

fn missing(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("there is no alert rule `{id}`"))
}

/// `POST /api/v1/tenants/{tenant}/alert-rules`: a rule, evaluated from the next round on.
#[utoipa::path(post, path = "/api/v1/tenants/{tenant}/alert-rules", tag = "alerts",
    params(("tenant" = String, Path, description = "Tenant slug")),
    request_body = NewRule,
    responses((status = 201, description = "Created", body = RuleView),
        (status = 409, description = "The name is taken, or the tenant has as many rules as it may", body = crate::problem::Problem),
        (status = 422, description = "A bad name, kind or parameter", body = crate::problem::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    tenant: Tenant<ManageAlerts>,
    ApiJson(body): ApiJson<NewRule>,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    let params = if body.params.is_null() {
        Value::Object(serde_json::Map::new())
    } else {
        body.params
    };
    check(&body.name, &body.kind, &params)?;
    let mut rule = store::create(
        &state.pool,
        tenant.tenant_id,
        &tenant.actor().audit_name(),
        (&body.name, &body.kind, &params),
    )
    .await
    .map_err(rule_error)?;
    if body.enabled == Some(false) {
        rule = store::update(
            &state.pool,
            tenant.tenant_id,
            rule.id,
            (&rule.name, &rule.params, false),
        )
        .await
        .map_err(rule_error)?
        .ok_or_else(|| missing(rule.id))?;
    }
    Ok((StatusCode::CREATED, Json(rule.into())))
}

/// `GET /api/v1/tenants/{tenant}/alert-rules`: the rules, by name.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/alert-rules", tag = "alerts",
    params(("tenant" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The rules", body = RulesPage)))]
pub async fn list(
    State(state): State<AppState>,
    tenant: Tenant<ReadFleet>,
) -> Result<Json<RulesPage>, ApiError> {
    let rules = store::list(&state.pool, tenant.tenant_id).await?;
    Ok(Json(RulesPage {
        items: rules.into_iter().map(Into::into).collect(),
    }))
}

/// `GET /api/v1/tenants/{tenant}/alert-rules/{id}`.
#[utoipa::path(get, path = "/api/v1/tenants/{tenant}/alert-rules/{id}", tag = "alerts",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The rule's id")),
    responses((status = 200, description = "The rule", body = RuleView),
        (status = 404, description = "No such rule", body = crate::problem::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    tenant: Tenant<ReadFleet>,
    Path(RuleId { id }): Path<RuleId>,
) -> Result<Json<RuleView>, ApiError> {
    let id = rule_id(&id)?;
    let rule = store::get(&state.pool, tenant.tenant_id, id)
        .await?
        .ok_or_else(|| missing(id))?;
    Ok(Json(rule.into()))
}

/// `PATCH /api/v1/tenants/{tenant}/alert-rules/{id}`: a new name, parameters or switch; a rule
/// switched off resolves its open alerts.
#[utoipa::path(patch, path = "/api/v1/tenants/{tenant}/alert-rules/{id}", tag = "alerts",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The rule's id")),
    request_body = RuleChange,
    responses((status = 200, description = "Changed", body = RuleView),
        (status = 404, description = "No such rule", body = crate::problem::Problem),
        (status = 422, description = "A bad name or parameter", body = crate::problem::Problem)))]
pub async fn update(
    State(state): State<AppState>,
    tenant: Tenant<ManageAlerts>,
    Path(RuleId { id }): Path<RuleId>,
    ApiJson(body): ApiJson<RuleChange>,
) -> Result<Json<RuleView>, ApiError> {
    let id = rule_id(&id)?;
    let current = store::get(&state.pool, tenant.tenant_id, id)
        .await?
        .ok_or_else(|| missing(id))?;
    let name = body.name.unwrap_or(current.name);
    let params = body.params.unwrap_or(current.params);
    check(&name, &current.kind, &params)?;
    let rule = store::update(
        &state.pool,
        tenant.tenant_id,
        id,
        (&name, &params, body.enabled.unwrap_or(current.enabled)),
    )
    .await
    .map_err(rule_error)?
    .ok_or_else(|| missing(id))?;
    Ok(Json(rule.into()))
}

/// `DELETE /api/v1/tenants/{tenant}/alert-rules/{id}`: the rule and its alerts go.
#[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/alert-rules/{id}", tag = "alerts",
    params(("tenant" = String, Path, description = "Tenant slug"), ("id" = String, Path, description = "The rule's id")),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "No such rule", body = crate::problem::Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    tenant: Tenant<ManageAlerts>,
    Path(RuleId { id }): Path<RuleId>,
) -> Result<StatusCode, ApiError> {
    let id = rule_id(&id)?;
    if store::delete(&state.pool, tenant.tenant_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing(id))
    }
}

/// The rules' routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get as read, post};
    axum::Router::new()
        .route("/tenants/{tenant}/alert-rules", post(create).get(list))
        .route(
            "/tenants/{tenant}/alert-rules/{id}",
            read(get).patch(update).delete(delete),
        )
        .merge(super::alerts::router())
}

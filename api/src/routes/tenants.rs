//! `/api/v1/tenants`: the tenant registry (FR-MT-001). Creating tenants is for the `system` role;
//! a tenant role sees its own tenant only, and any other is answered 404, as if it did not exist.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cqrs_es::Aggregate as _;
use efms_commands::Scope;
use efms_domain::{Actor, Role, Tenant, TenantCommand, TenantName, TenantSlug};
use efms_projections::tenants::{
    get_tenant, list_tenant_deletions, list_tenants, tenant_deletion, TenantDeletionRow,
};
use efms_projections::{ProjectorHandle, TenantRow};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::auth::Principal;
use crate::error::{ApiError, FieldError};
use crate::extract::{ApiJson, ApiQuery, CommitMeta};
use crate::state::AppState;

/// How long a write waits for the read models to show it before answering.
const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// Body of `POST /api/v1/tenants`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// The slug that will address the tenant: 1 to 63 of `a-z`, `0-9` and inner `-`.
    pub slug: String,
    /// Display name: 1 to 200 characters.
    pub name: String,
}

/// Body of `PATCH /api/v1/tenants/{slug}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRename {
    /// The new display name: 1 to 200 characters. The slug never changes.
    pub name: String,
}

/// A tenant as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    slug: String,
    name: String,
    /// `active`, `suspended` or `deleted` (in its grace period, restorable).
    state: &'static str,
    /// Who suspended the tenant, when and why, while it is suspended.
    #[serde(skip_serializing_if = "Option::is_none")]
    suspension: Option<SuspensionView>,
    /// Who deleted the tenant and when, and when its purge may begin, while it is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    deletion: Option<DeletionView>,
    version: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    created_by: String,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// A tenant's suspension.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SuspensionView {
    reason: String,
    at: chrono::DateTime<chrono::Utc>,
    by: String,
}

/// A tenant's deletion.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeletionView {
    at: chrono::DateTime<chrono::Utc>,
    by: String,
    /// When the grace period ends: from then on the tenant may be purged, and no longer restored.
    purge_after: chrono::DateTime<chrono::Utc>,
}

/// What remains of a purged tenant, listed with `include_deleted=true`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurgedTenantView {
    slug: String,
    /// `purged`.
    state: &'static str,
    deleted_at: chrono::DateTime<chrono::Utc>,
    deleted_by: String,
    purged_at: chrono::DateTime<chrono::Utc>,
    /// How many rows of each table the purge removed.
    #[schema(value_type = Object)]
    purged_rows: serde_json::Value,
}

impl From<TenantDeletionRow> for PurgedTenantView {
    fn from(row: TenantDeletionRow) -> Self {
        Self {
            slug: row.slug,
            state: "purged",
            deleted_at: row.deleted_at,
            deleted_by: row.deleted_by,
            purged_at: row.purged_at,
            purged_rows: row.purged_rows,
        }
    }
}

/// One item of a page of tenants: a tenant, or what remains of a purged one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TenantListItem {
    /// A tenant, deleted or not.
    Tenant(TenantView),
    /// A purged tenant's record.
    Purged(PurgedTenantView),
}

impl TenantListItem {
    fn slug(&self) -> &str {
        match self {
            Self::Tenant(view) => &view.slug,
            Self::Purged(view) => &view.slug,
        }
    }
}

impl From<TenantRow> for TenantView {
    fn from(row: TenantRow) -> Self {
        let suspension = match (row.suspended_at, row.suspended_by, row.suspension_reason) {
            (Some(at), Some(by), Some(reason)) => Some(SuspensionView { reason, at, by }),
            _ => None,
        };
        let deletion = match (row.deleted_at, row.deleted_by, row.purge_after) {
            (Some(at), Some(by), Some(purge_after)) => Some(DeletionView {
                at,
                by,
                purge_after,
            }),
            _ => None,
        };
        Self {
            slug: row.slug,
            name: row.name,
            state: match (&deletion, &suspension) {
                (Some(_), _) => "deleted",
                (None, Some(_)) => "suspended",
                (None, None) => "active",
            },
            suspension,
            deletion,
            version: row.version,
            created_at: row.created_at,
            created_by: row.created_by,
            updated_at: row.updated_at,
        }
    }
}

/// One page of tenants.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantPage {
    items: Vec<TenantListItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Query of `GET /api/v1/tenants`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 50).
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// List deleted tenants too: those in their grace period (state `deleted`) and what remains
    /// of purged ones (state `purged`). For the `system` role.
    include_deleted: Option<bool>,
}

/// `POST /api/v1/tenants`: creates a tenant (system role only).
#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", request_body = CreateTenant,
    responses((status = 201, description = "Created", body = TenantView),
        (status = 403, description = "Not the system role", body = crate::problem::Problem),
        (status = 409, description = "The slug is taken", body = crate::problem::Problem),
        (status = 422, description = "Invalid slug or name", body = crate::problem::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Principal(actor): Principal,
    meta: CommitMeta,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<Response, ApiError> {
    if actor.role != Role::System {
        return Err(ApiError::Forbidden(format!(
            "creating tenants needs the `system` role; this token has `{}`",
            actor.role
        )));
    }
    let mut errors = Vec::new();
    let slug = TenantSlug::parse(body.slug)
        .map_err(|error| errors.push(FieldError::at("/slug", error.to_string())))
        .ok();
    let name = TenantName::parse(body.name)
        .map_err(|error| errors.push(FieldError::at("/name", error.to_string())))
        .ok();
    let (Some(slug), Some(name)) = (slug, name) else {
        return Err(ApiError::Validation(errors));
    };
    if let Some(record) = tenant_deletion(&state.pool, slug.as_str()).await? {
        return Err(ApiError::Conflict(format!(
            "the slug `{slug}` was a tenant's, deleted by `{}` and purged at {}: a slug is never given to another tenant",
            record.deleted_by,
            record.purged_at.to_rfc3339()
        )));
    }
    let outcome = execute(
        &state,
        &actor,
        &meta,
        &slug,
        TenantCommand::Create {
            slug: slug.clone(),
            name: name.clone(),
        },
    )
    .await?;
    if outcome.is_some() {
        // Committed: the tenant exists from now on, whether or not its read model caught up.
        state.known_tenants.insert(slug.tenant_id());
    }
    let location = format!("/api/v1/tenants/{slug}");
    let row = read_back(&state.pool, &state.tenants, outcome, &slug).await?;
    let mut response = match row {
        Some(row) => {
            let etag = etag(row.version);
            let mut response = (StatusCode::CREATED, Json(TenantView::from(row))).into_response();
            response.headers_mut().insert(header::ETAG, etag);
            response
        }
        // Committed, but the read model has not caught up in time: the tenant exists all the same.
        None => (
            StatusCode::CREATED,
            Json(serde_json::json!({ "slug": slug.as_str(), "name": name.as_str(), "version": 1 })),
        )
            .into_response(),
    };
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(ApiError::internal)?,
    );
    Ok(response)
}

/// `PATCH /api/v1/tenants/{slug}`: gives the tenant a new display name (the `system` role, or
/// the tenant's own `admin`); the slug never changes. The rename is an event of the tenant's
/// history.
#[utoipa::path(patch, path = "/api/v1/tenants/{slug}", tag = "tenants", request_body = TenantRename,
    params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "Renamed (or unchanged)", body = TenantView),
        (status = 403, description = "Neither `system` nor the tenant's `admin`, or the tenant is suspended", body = crate::problem::Problem),
        (status = 404, description = "No such tenant (or not yours)", body = crate::problem::Problem),
        (status = 422, description = "Invalid name", body = crate::problem::Problem)))]
pub async fn rename(
    State(state): State<AppState>,
    tenant: crate::access::Tenant<crate::access::RenameTenant>,
    meta: CommitMeta,
    ApiJson(body): ApiJson<TenantRename>,
) -> Result<Response, ApiError> {
    let name = TenantName::parse(body.name)
        .map_err(|error| ApiError::Validation(vec![FieldError::at("/name", error.to_string())]))?;
    answer(&state, &tenant, &meta, TenantCommand::Rename { name }).await
}

/// Executes `command` on the tenant for its caller and answers with the tenant as the read model
/// shows it once the change is in.
pub(super) async fn answer<P>(
    state: &AppState,
    tenant: &crate::access::Tenant<P>,
    meta: &CommitMeta,
    command: TenantCommand,
) -> Result<Response, ApiError> {
    let outcome = execute(state, tenant.actor(), meta, &tenant.slug, command).await?;
    let row = read_back(&state.pool, &state.tenants, outcome, &tenant.slug)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no tenant `{}`", tenant.slug)))?;
    let etag = etag(row.version);
    let mut response = Json(TenantView::from(row)).into_response();
    response.headers_mut().insert(header::ETAG, etag);
    Ok(response)
}

/// Executes a tenant command for `actor` and counts its outcome.
async fn execute(
    state: &AppState,
    actor: &Actor,
    meta: &CommitMeta,
    slug: &TenantSlug,
    command: TenantCommand,
) -> Result<Option<efms_commands::Position>, ApiError> {
    // A tenant's registration records no commit message.
    let metadata = meta.clone().with_message(None).metadata(actor);
    let result = state
        .bus
        .execute::<Tenant>(slug.tenant_id(), slug.as_str(), command, (), metadata)
        .await;
    let outcome = match &result {
        Ok(Some(_)) => "committed",
        Ok(None) => "unchanged",
        Err(efms_commands::CommandError::Rejected(_)) => "rejected",
        Err(efms_commands::CommandError::Conflict) => "conflict",
        Err(_) => "failed",
    };
    state.metrics.command(Tenant::TYPE, outcome);
    Ok(result?)
}

/// Waits for the read model to show a commit, then reads the tenant from it.
async fn read_back(
    pool: &PgPool,
    projector: &ProjectorHandle,
    position: Option<efms_commands::Position>,
    slug: &TenantSlug,
) -> Result<Option<TenantRow>, ApiError> {
    if let Some(position) = position {
        if !projector.wait_for(position, READ_YOUR_WRITES_TIMEOUT).await {
            tracing::warn!(?position, "read model lags behind a commit");
        }
    }
    Ok(get_tenant(pool, Scope::Tenant(slug.tenant_id()), slug.as_str()).await?)
}

/// `GET /api/v1/tenants`: the tenants the caller may see, in slug order, a page at a time.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", params(ListQuery),
    responses((status = 200, description = "A page of tenants", body = TenantPage),
        (status = 422, description = "Bad paging", body = crate::problem::Problem)))]
pub async fn list(
    State(pool): State<PgPool>,
    Principal(actor): Principal,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<TenantPage>, ApiError> {
    let page = super::PageSize::from_param(query.limit)?;
    let include_deleted = query.include_deleted.unwrap_or(false);
    if include_deleted && actor.tenant.is_some() {
        return Err(ApiError::Forbidden(
            "listing deleted tenants needs the `system` role".to_owned(),
        ));
    }
    let after = query.cursor.as_deref();
    let mut items: Vec<TenantListItem> = list_tenants(
        &pool,
        scope_of(&actor),
        after,
        page.fetch(),
        include_deleted,
    )
    .await?
    .into_iter()
    .map(|row| TenantListItem::Tenant(row.into()))
    .collect();
    if include_deleted {
        let purged = list_tenant_deletions(&pool, after, page.fetch()).await?;
        items.extend(
            purged
                .into_iter()
                .map(|row| TenantListItem::Purged(row.into())),
        );
        items.sort_by(|a, b| a.slug().cmp(b.slug()));
        items.truncate(usize::try_from(page.fetch()).unwrap_or(usize::MAX));
    }
    let next_cursor = page.cut(&mut items, |item| item.slug().to_owned());
    Ok(Json(TenantPage { items, next_cursor }))
}

/// `GET /api/v1/tenants/{slug}`: one tenant, if the caller may see it.
#[utoipa::path(get, path = "/api/v1/tenants/{slug}", tag = "tenants", params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The tenant", body = TenantView),
        (status = 404, description = "No such tenant (or not yours)", body = crate::problem::Problem)))]
pub async fn get(
    State(pool): State<PgPool>,
    Principal(actor): Principal,
    Path(slug): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("there is no tenant `{slug}`"));
    if actor
        .tenant
        .as_ref()
        .is_some_and(|own| own.as_str() != slug)
    {
        return Err(not_found());
    }
    let row = get_tenant(&pool, scope_of(&actor), &slug)
        .await?
        .ok_or_else(not_found)?;
    if row.deleted_at.is_some() && actor.tenant.is_some() {
        return Err(crate::access::deleted(
            &TenantSlug::parse(slug.as_str()).map_err(|_| not_found())?,
            &row,
        ));
    }
    let etag = etag(row.version);
    let mut response = Json(TenantView::from(row)).into_response();
    response.headers_mut().insert(header::ETAG, etag);
    Ok(response)
}

/// The database scope a caller's reads run in: row-level security, not this code, has the last word.
fn scope_of(actor: &Actor) -> Scope {
    match &actor.tenant {
        Some(tenant) => Scope::Tenant(tenant.tenant_id()),
        None => Scope::System,
    }
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("a number is a valid header value")
}

/// The tenant registry's routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing;
    axum::Router::new()
        .route("/tenants", routing::get(list).post(create))
        .route(
            "/tenants/{tenant}",
            routing::get(get)
                .patch(rename)
                .delete(super::tenant_lifecycle::delete),
        )
        .merge(super::tenant_lifecycle::router())
}

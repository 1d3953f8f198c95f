//! The tenant and branch a request works on, with the caller's right to do so checked
//! (FR-MT-002, FR-MT-003).
//!
//! A tenant role only ever reaches its own tenant: another tenant's slug answers 404, as if it did
//! not exist. What each role may do is [`crate::policy`]'s to say; the extractors here ask it before
//! a handler runs, so a handler that takes a [`Tenant`] or a [`TenantBranch`] has nothing left to
//! check.

use std::marker::PhantomData;
use std::ops::Deref;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use efms_domain::config::MAIN_BRANCH;
use efms_domain::{Actor, TenantSlug};
use efms_projections::config as read;
use efms_projections::tenants::get_tenant;
use serde::Deserialize;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::extract::ApiQuery;
pub use crate::known_tenants::KnownTenants;
use crate::policy::{authorize, Action};
use crate::state::AppState;

/// The tenant a request may work on.
#[derive(Debug, Clone)]
pub struct TenantAccess {
    /// The tenant's slug.
    pub slug: TenantSlug,
    /// The tenant's id (its database scope).
    pub tenant_id: Uuid,
}

/// An action of the policy, named as a type so that an extractor can carry it.
pub trait Permission: Send + Sync + 'static {
    /// The action the extractor checks.
    const ACTION: Action;
}

macro_rules! permissions {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl Permission for $name {
            const ACTION: Action = Action::$name;
        }
    )*};
}

permissions! {
    /// [`Action::ReadConfig`].
    ReadConfig;
    /// [`Action::WriteConfig`].
    WriteConfig;
    /// [`Action::ReadUsers`].
    ReadUsers;
    /// [`Action::ManageUsers`].
    ManageUsers;
    /// [`Action::ManageGrants`].
    ManageGrants;
    /// [`Action::ReadAudit`].
    ReadAudit;
    /// [`Action::ManageProxyTokens`].
    ManageProxyTokens;
    /// [`Action::SetQuotas`].
    SetQuotas;
    /// [`Action::ReadFleet`].
    ReadFleet;
    /// [`Action::ManageVms`].
    ManageVms;
    /// [`Action::ManageWebhooks`].
    ManageWebhooks;
    /// [`Action::ManageAlerts`].
    ManageAlerts;
    /// [`Action::RenameTenant`].
    RenameTenant;
    /// [`Action::SuspendTenants`].
    SuspendTenants;
    /// [`Action::DeleteTenants`].
    DeleteTenants;
}

/// The `{tenant}` of the route, which exists and on which the caller may perform `P`.
///
/// Refusals: 404 for a tenant that does not exist or is not the caller's; 403 when the caller's
/// role may not perform `P` there.
#[derive(Debug, Clone)]
pub struct Tenant<P> {
    access: TenantAccess,
    actor: Actor,
    permission: PhantomData<fn() -> P>,
}

impl<P> Tenant<P> {
    /// The caller.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

impl<P> Deref for Tenant<P> {
    type Target = TenantAccess;

    fn deref(&self) -> &TenantAccess {
        &self.access
    }
}

impl<P: Permission> FromRequestParts<AppState> for Tenant<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Principal(actor) = Principal::from_request_parts(parts, state).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::BadRequest {
                detail: rejection.body_text(),
                errors: Vec::new(),
            })?;
        let slug = params
            .iter()
            .find_map(|(key, value)| (key == "tenant").then_some(value))
            .ok_or_else(|| ApiError::Internal("a tenant route without `{tenant}`".to_owned()))?;
        let access = tenant_access(state, &actor, slug, P::ACTION).await?;
        if P::ACTION.changes_tenant() && !parts.method.is_safe() {
            refuse_if_suspended(state, &actor, &access).await?;
        }
        Ok(Self {
            access,
            actor,
            permission: PhantomData,
        })
    }
}

/// The tenant of the route (as [`Tenant`]) and the branch its `?branch=` names: `main` when none,
/// else a live branch of the tenant (404 for one that does not exist or was deleted).
#[derive(Debug, Clone)]
pub struct TenantBranch<P> {
    /// The tenant, with the caller's right to perform `P` checked.
    pub tenant: Tenant<P>,
    /// The branch's name.
    pub branch: String,
}

/// The `?branch=` of a query string, whatever else it holds (the route's own parameters check
/// the rest).
#[derive(Deserialize)]
struct BranchQuery {
    branch: Option<String>,
}

impl<P: Permission> FromRequestParts<AppState> for TenantBranch<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let tenant = Tenant::<P>::from_request_parts(parts, state).await?;
        let ApiQuery(query) = ApiQuery::<BranchQuery>::from_request_parts(parts, state).await?;
        let branch = live_branch(state, &tenant, query.branch).await?;
        Ok(Self { tenant, branch })
    }
}

/// Checks that `actor` may perform `action` on the tenant `slug`, and that it exists.
async fn tenant_access(
    state: &AppState,
    actor: &Actor,
    slug: &str,
    action: Action,
) -> Result<TenantAccess, ApiError> {
    let not_found = || ApiError::NotFound(format!("there is no tenant `{slug}`"));
    let slug = TenantSlug::parse(slug).map_err(|_| not_found())?;
    if actor.tenant.as_ref().is_some_and(|own| *own != slug) {
        return Err(not_found());
    }
    authorize(actor, action)?;
    let tenant_id = slug.tenant_id();
    if !state.known_tenants.contains(tenant_id) {
        let row = get_tenant(
            &state.pool,
            efms_commands::Scope::Tenant(tenant_id),
            slug.as_str(),
        )
        .await?;
        match row {
            Some(row) if row.deleted_at.is_none() => state.known_tenants.insert(tenant_id),
            // Deleting and restoring are all a deleted tenant still answers.
            Some(_) if action == Action::DeleteTenants => {}
            Some(row) => return Err(deleted(&slug, &row)),
            None => return Err(purged_or_missing(state, &slug).await?),
        }
    }
    Ok(TenantAccess { slug, tenant_id })
}

/// 410 for the deleted tenant `row`: when and by whom, and until when it may be restored.
pub fn deleted(slug: &TenantSlug, row: &efms_projections::TenantRow) -> ApiError {
    let by = row.deleted_by.as_deref().unwrap_or_default();
    let when = row.deleted_at.map(|at| at.to_rfc3339()).unwrap_or_default();
    let until = row
        .purge_after
        .map(|at| at.to_rfc3339())
        .unwrap_or_default();
    ApiError::Gone {
        detail: format!(
            "tenant `{slug}` was deleted by `{by}` at {when}: everything of it is refused; it is purged after {until} unless the `system` role restores it before"
        ),
        errors: Vec::new(),
    }
}

/// 410 for a slug whose tenant was purged, else 404.
pub async fn purged_or_missing(state: &AppState, slug: &TenantSlug) -> Result<ApiError, ApiError> {
    Ok(
        match efms_projections::tenants::tenant_deletion(&state.pool, slug.as_str()).await? {
            Some(record) => ApiError::Gone {
                detail: format!(
                    "tenant `{slug}` was deleted by `{}` and purged at {}: nothing of it remains, and its slug is never given again",
                    record.deleted_by,
                    record.purged_at.to_rfc3339()
                ),
                errors: Vec::new(),
            },
            None => ApiError::NotFound(format!("there is no tenant `{slug}`")),
        },
    )
}

/// Refuses (403, `tenant-suspended`) a change asked by the tenant's own caller while the tenant
/// is suspended. The `system` role is not the tenant's: it still may.
async fn refuse_if_suspended(
    state: &AppState,
    actor: &Actor,
    tenant: &TenantAccess,
) -> Result<(), ApiError> {
    if actor.tenant.is_none() {
        return Ok(());
    }
    match efms_projections::tenants::suspension(&state.pool, tenant.tenant_id).await? {
        Some(reason) => Err(ApiError::Suspended(format!(
            "tenant `{}` is suspended ({reason}): it may be read, not changed, until it is resumed",
            tenant.slug
        ))),
        None => Ok(()),
    }
}

/// The branch `name` names: `main` when none, else a branch of the tenant that is not deleted
/// (else 404).
pub async fn live_branch(
    state: &AppState,
    tenant: &TenantAccess,
    name: Option<String>,
) -> Result<String, ApiError> {
    let Some(branch) = name.filter(|b| b != MAIN_BRANCH) else {
        return Ok(MAIN_BRANCH.to_owned());
    };
    match read::get_branch(&state.pool, tenant.tenant_id, &branch).await? {
        Some(row) if row.deleted_at.is_none() => Ok(branch),
        Some(_) => Err(ApiError::NotFound(format!(
            "branch `{branch}` was deleted; its history stays readable through the revisions of `main`"
        ))),
        None => Err(ApiError::NotFound(format!("there is no branch `{branch}`"))),
    }
}

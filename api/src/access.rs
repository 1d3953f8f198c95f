//! Who may do what to a tenant's data (FR-MT-002, FR-MT-003).
//!
//! A tenant role only ever reaches its own tenant: another tenant's slug answers 404, as if it did
//! not exist. Reading needs any role; writing needs `operator` or `admin` (or `system`).

use efms_domain::{Actor, Role, TenantSlug};
use efms_projections::tenants::get_tenant;
use uuid::Uuid;

use crate::error::ApiError;
pub use crate::known_tenants::KnownTenants;
use crate::state::AppState;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read configuration, history and diffs.
    Read,
    /// Change configuration.
    Write,
}

/// The tenant a request may work on.
#[derive(Debug, Clone)]
pub struct TenantAccess {
    /// The tenant's slug.
    pub slug: TenantSlug,
    /// The tenant's id (its database scope).
    pub tenant_id: Uuid,
}

/// Checks that `actor` may `access` the tenant `slug`, and that it exists.
pub async fn tenant_access(
    state: &AppState,
    actor: &Actor,
    slug: &str,
    access: Access,
) -> Result<TenantAccess, ApiError> {
    let not_found = || ApiError::NotFound(format!("there is no tenant `{slug}`"));
    let slug = TenantSlug::parse(slug).map_err(|_| not_found())?;
    if actor.tenant.as_ref().is_some_and(|own| *own != slug) {
        return Err(not_found());
    }
    if actor.role == Role::Proxy {
        return Err(ApiError::Forbidden(
            "a `proxy` token only streams configuration over xDS".to_owned(),
        ));
    }
    if access == Access::Write && matches!(actor.role, Role::Viewer | Role::Auditor) {
        return Err(ApiError::Forbidden(format!(
            "changing configuration needs the `operator` or `admin` role; this token has `{}`",
            actor.role
        )));
    }
    let tenant_id = slug.tenant_id();
    if !state.known_tenants.contains(tenant_id) {
        get_tenant(
            &state.pool,
            efms_commands::Scope::Tenant(tenant_id),
            slug.as_str(),
        )
        .await?
        .ok_or_else(not_found)?;
        state.known_tenants.insert(tenant_id);
    }
    Ok(TenantAccess { slug, tenant_id })
}

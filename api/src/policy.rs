//! Who may do what (FR-MT-002, FR-MT-003): one table answers every role question of the HTTP API.
//!
//! Each action a route performs names the roles allowed to perform it and the sentence a refused
//! caller reads. Routes never compare roles themselves: they ask [`authorize`], directly or through
//! the [`crate::access::Tenant`] extractor.

use efms_domain::{Actor, Role};

use crate::error::ApiError;

/// Something a caller may ask to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read a tenant's configuration, history, diffs, branches, proxies and quotas.
    ReadConfig,
    /// Change a tenant's configuration (resources, branches, merges, rollbacks, bulk, bootstraps).
    WriteConfig,
    /// Read a tenant's users and service accounts.
    ReadUsers,
    /// Create, change and delete a tenant's users and service accounts.
    ManageUsers,
    /// Share a tenant's resources with other tenants and withdraw the shares.
    ManageGrants,
    /// Read a tenant's audit trail.
    ReadAudit,
    /// List and revoke the proxy tokens that bootstraps minted.
    ManageProxyTokens,
    /// Set a tenant's quotas.
    SetQuotas,
    /// Create tenants.
    CreateTenants,
    /// Read a tenant's VMs, containers, their history and utilisation.
    ReadFleet,
    /// Register and remove VMs and issue their join tokens.
    ManageVms,
    /// Create, change and delete webhooks, read their deliveries and redeliver them.
    ManageWebhooks,
    /// Create, change and delete alert rules, and acknowledge alerts.
    ManageAlerts,
    /// Rename a tenant.
    RenameTenant,
    /// Suspend a tenant and end its suspension.
    SuspendTenants,
    /// Delete a tenant and restore it within its grace period: the one action a deleted tenant
    /// still answers.
    DeleteTenants,
}

impl Action {
    /// Whether the action changes the tenant when asked with a method that is not safe (`POST`,
    /// `PUT`, `PATCH`, `DELETE`): what a suspended tenant's own callers are refused. Reading
    /// (even under a managing action, as webhook deliveries are) stays open to them.
    pub const fn changes_tenant(self) -> bool {
        match self {
            Action::WriteConfig
            | Action::ManageUsers
            | Action::ManageGrants
            | Action::ManageProxyTokens
            | Action::ManageVms
            | Action::ManageWebhooks
            | Action::ManageAlerts
            | Action::RenameTenant => true,
            Action::ReadConfig
            | Action::ReadUsers
            | Action::ReadAudit
            | Action::ReadFleet
            | Action::SetQuotas
            | Action::CreateTenants
            | Action::SuspendTenants
            | Action::DeleteTenants => false,
        }
    }
}

/// What the policy says of one action: the roles allowed to perform it, and what a refused caller
/// is told (followed by the role the token has).
struct Rule {
    roles: &'static [Role],
    refusal: &'static str,
}

const TENANT_ROLES: &[Role] = &[
    Role::System,
    Role::Admin,
    Role::Operator,
    Role::Viewer,
    Role::Auditor,
];
const WRITERS: &[Role] = &[Role::System, Role::Admin, Role::Operator];
const ADMINS: &[Role] = &[Role::System, Role::Admin];
const OVERSEERS: &[Role] = &[Role::System, Role::Admin, Role::Auditor];
const SYSTEM: &[Role] = &[Role::System];

/// The policy table: every action with the roles allowed to perform it. `proxy` is in no row: a
/// proxy token only streams configuration over xDS. The match is exhaustive, so a new action
/// cannot be added without its rule.
const fn rule(action: Action) -> Rule {
    let (roles, refusal) = match action {
        Action::ReadConfig => (TENANT_ROLES, "reading configuration needs a tenant role"),
        Action::WriteConfig => (
            WRITERS,
            "changing configuration needs the `operator` or `admin` role",
        ),
        Action::ReadUsers => (OVERSEERS, "users are read by `admin` and `auditor`"),
        Action::ManageUsers => (ADMINS, "users are managed by `admin`"),
        Action::ManageGrants => (ADMINS, "grants are managed by `admin`"),
        Action::ReadAudit => (
            OVERSEERS,
            "the audit trail is read by `auditor` and `admin`",
        ),
        Action::ManageProxyTokens => (
            WRITERS,
            "proxy tokens are listed and revoked by `operator` or `admin`",
        ),
        Action::SetQuotas => (SYSTEM, "quotas are set by the `system` role"),
        Action::CreateTenants => (SYSTEM, "creating tenants needs the `system` role"),
        Action::ReadFleet => (TENANT_ROLES, "reading the fleet needs a tenant role"),
        Action::ManageVms => (
            WRITERS,
            "VMs are registered and removed by `operator` or `admin`",
        ),
        Action::ManageWebhooks => (ADMINS, "webhooks are managed by `admin`"),
        Action::ManageAlerts => (
            WRITERS,
            "alert rules are managed and alerts acknowledged by `operator` or `admin`",
        ),
        Action::RenameTenant => (ADMINS, "a tenant is renamed by its `admin`"),
        Action::SuspendTenants => (
            SYSTEM,
            "tenants are suspended and resumed by the `system` role",
        ),
        Action::DeleteTenants => (
            SYSTEM,
            "tenants are deleted and restored by the `system` role",
        ),
    };
    Rule { roles, refusal }
}

/// Whether `role` may perform `action`.
pub fn allows(role: Role, action: Action) -> bool {
    rule(action).roles.contains(&role)
}

/// Refuses (403, saying which roles may) when `actor`'s role may not perform `action`.
pub fn authorize(actor: &Actor, action: Action) -> Result<(), ApiError> {
    if actor.role == Role::Proxy {
        return Err(ApiError::Forbidden(
            "a `proxy` token only streams configuration over xDS".to_owned(),
        ));
    }
    if allows(actor.role, action) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "{}; this token has `{}`",
            rule(action).refusal,
            actor.role
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_ACTION: [Action; 16] = [
        Action::ReadConfig,
        Action::WriteConfig,
        Action::ReadUsers,
        Action::ManageUsers,
        Action::ManageGrants,
        Action::ReadAudit,
        Action::ManageProxyTokens,
        Action::SetQuotas,
        Action::CreateTenants,
        Action::ReadFleet,
        Action::ManageVms,
        Action::ManageWebhooks,
        Action::ManageAlerts,
        Action::RenameTenant,
        Action::SuspendTenants,
        Action::DeleteTenants,
    ];

    #[test]
    fn a_proxy_may_do_nothing_on_the_api() {
        for action in EVERY_ACTION {
            assert!(!allows(Role::Proxy, action), "{action:?}");
        }
    }

    #[test]
    fn system_may_do_everything_on_the_api() {
        for action in EVERY_ACTION {
            assert!(allows(Role::System, action), "{action:?}");
        }
    }

    #[test]
    fn viewers_and_auditors_read_but_never_write_configuration() {
        for role in [Role::Viewer, Role::Auditor] {
            assert!(allows(role, Action::ReadConfig));
            assert!(!allows(role, Action::WriteConfig));
            assert!(!allows(role, Action::ManageUsers));
        }
        assert!(allows(Role::Auditor, Action::ReadAudit));
        assert!(!allows(Role::Viewer, Action::ReadAudit));
        assert!(!allows(Role::Operator, Action::ReadAudit));
    }

    #[test]
    fn only_system_sets_quotas_creates_and_suspends_tenants() {
        for role in [Role::Admin, Role::Operator, Role::Viewer, Role::Auditor] {
            assert!(!allows(role, Action::SetQuotas));
            assert!(!allows(role, Action::CreateTenants));
            assert!(!allows(role, Action::SuspendTenants));
            assert!(!allows(role, Action::DeleteTenants));
        }
        assert!(allows(Role::Admin, Action::RenameTenant));
        assert!(!allows(Role::Operator, Action::RenameTenant));
    }

    #[test]
    fn what_a_suspension_refuses_is_every_action_a_tenant_role_changes_the_tenant_with() {
        for action in EVERY_ACTION {
            let tenant_writes = [Role::Admin, Role::Operator]
                .into_iter()
                .any(|role| allows(role, action))
                && !matches!(
                    action,
                    Action::ReadConfig | Action::ReadUsers | Action::ReadAudit | Action::ReadFleet
                );
            assert_eq!(action.changes_tenant(), tenant_writes, "{action:?}");
        }
    }
}

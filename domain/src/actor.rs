//! Who acts: the authenticated principal behind a command or a query (FR-VC-003, FR-MT-003).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a principal may do. `System` runs the installation and belongs to no tenant; the others are
/// granted within one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Operates the installation: creates tenants, sees all of them.
    System,
    /// Full control of one tenant.
    Admin,
    /// Changes one tenant's configuration.
    Operator,
    /// Reads one tenant's configuration.
    Viewer,
    /// Reads one tenant's configuration, history and audit trail.
    Auditor,
    /// An Envoy proxy of one tenant: may stream its group's configuration over xDS, nothing else.
    Proxy,
}

impl Role {
    /// Every role, in the order the documentation lists them.
    pub const ALL: [Role; 6] = [
        Role::System,
        Role::Admin,
        Role::Operator,
        Role::Viewer,
        Role::Auditor,
        Role::Proxy,
    ];

    /// The role's name as it appears in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Proxy => "proxy",
        }
    }

    /// Whether the role is granted within a tenant (every role but `system`).
    pub fn is_tenant_role(self) -> bool {
        self != Role::System
    }

    /// Whether the role goes with `tenant`: a tenant role names a tenant, `system` none; else
    /// what is wrong.
    pub fn check_tenant(self, tenant: Option<&str>) -> Result<(), String> {
        match (self.is_tenant_role(), tenant) {
            (true, None) => Err(format!(
                "role `{self}` is granted within a tenant: name one"
            )),
            (false, Some(_)) => Err("role `system` belongs to no tenant".to_owned()),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role `{s}`; expected one of system, admin, operator, viewer, auditor, proxy"
                )
            })
    }
}

/// The principal a command is executed for; recorded with every event it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The token's subject: a user, a service account or a tool.
    pub subject: String,
    /// The role the token grants.
    pub role: Role,
    /// The tenant slug the role is granted in; `None` for `system`.
    pub tenant: Option<TenantSlug>,
}

use crate::tenant::TenantSlug;

impl Actor {
    /// The text recorded in the event log's `actor` column: `subject (role)`.
    pub fn audit_name(&self) -> String {
        format!("{} ({})", self.subject, self.role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}

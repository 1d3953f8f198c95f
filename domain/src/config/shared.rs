//! Resources shared between tenants (FR-MT-005).
//!
//! A tenant (the owner) grants another (the grantee) read access to named resources of its `main`
//! branch. The grantee refers to a shared resource by its qualified name `owner/name` wherever it
//! would name one of its own (a route's cluster, a declaration's template). Resource names never
//! contain `/`, so a qualified name cannot collide with a tenant's own.
//!
//! The grantee's repository cannot see the owner's stream: what is shared with it is looked up
//! before a commit and handed to the aggregate as its services ([`Shared`]).

use std::collections::BTreeMap;

use serde_json::Value;

use super::ResourceRef;
use crate::envoy::ResourceKind;

/// The kinds a tenant may share. A cluster brings its endpoints along; a template is rendered by
/// the grantee. Secrets are never shared: their material opens only for their own tenant.
pub const SHAREABLE_KINDS: [ResourceKind; 2] = [ResourceKind::Cluster, ResourceKind::Template];

/// The name a grantee uses for `owner`'s resource `name`.
pub fn qualified(owner: &str, name: &str) -> String {
    format!("{owner}/{name}")
}

/// The owner and the owner's own name of a qualified name; `None` for a tenant's own name.
pub fn split_qualified(name: &str) -> Option<(&str, &str)> {
    name.split_once('/')
}

/// What other tenants share with the tenant a command runs for, by qualified name: every granted
/// resource that exists on its owner's `main`, with the document of each template.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shared {
    resources: BTreeMap<ResourceRef, Option<Value>>,
}

impl Shared {
    /// Adds a shared resource under its qualified name; `template` is the document of a template.
    pub fn insert(&mut self, kind: ResourceKind, qualified_name: String, template: Option<Value>) {
        self.resources.insert(
            ResourceRef {
                kind,
                name: qualified_name,
            },
            template,
        );
    }

    /// Whether the reference names a resource shared with this tenant.
    pub fn contains(&self, reference: &ResourceRef) -> bool {
        self.resources.contains_key(reference)
    }

    /// The document of the shared template `qualified_name`.
    pub fn template(&self, qualified_name: &str) -> Option<&Value> {
        self.resources
            .get(&ResourceRef {
                kind: ResourceKind::Template,
                name: qualified_name.to_owned(),
            })?
            .as_ref()
    }

    /// Whether nothing is shared.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qualified_name_splits_into_owner_and_name_and_an_own_name_does_not() {
        let name = qualified("acme", "payments");
        assert_eq!(name, "acme/payments");
        assert_eq!(split_qualified(&name), Some(("acme", "payments")));
        assert_eq!(split_qualified("payments"), None);
    }
}

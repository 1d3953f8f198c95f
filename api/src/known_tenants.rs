//! The tenants known to exist, remembered so that checking a request's tenant costs the database
//! nothing after the first request (see [`crate::access`]).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use uuid::Uuid;

/// Tenants known to exist. Tenants are never deleted, so once seen a tenant stays known, and the
/// existence check costs the database nothing after the first request.
#[derive(Debug, Clone, Default)]
pub struct KnownTenants(Arc<RwLock<HashSet<Uuid>>>);

impl KnownTenants {
    pub(crate) fn contains(&self, tenant_id: Uuid) -> bool {
        self.0
            .read()
            .expect("known tenants lock")
            .contains(&tenant_id)
    }

    pub(crate) fn insert(&self, tenant_id: Uuid) {
        self.0
            .write()
            .expect("known tenants lock")
            .insert(tenant_id);
    }
}

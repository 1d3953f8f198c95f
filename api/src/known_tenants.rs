//! The tenants known to exist and not to be deleted, remembered for a short while so that
//! checking a request's tenant costs the database one read per tenant and period (see
//! [`crate::access`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How long a tenant seen live is taken to be live without asking again: a tenant deleted
/// through another replica is refused here within this time.
pub const KNOWN_TENANT_TTL: Duration = Duration::from_secs(2);

/// Tenants seen live, and when.
#[derive(Debug, Clone, Default)]
pub struct KnownTenants(Arc<RwLock<HashMap<Uuid, Instant>>>);

impl KnownTenants {
    pub(crate) fn contains(&self, tenant_id: Uuid) -> bool {
        self.0
            .read()
            .expect("known tenants lock")
            .get(&tenant_id)
            .is_some_and(|seen| seen.elapsed() < KNOWN_TENANT_TTL)
    }

    pub(crate) fn insert(&self, tenant_id: Uuid) {
        self.0
            .write()
            .expect("known tenants lock")
            .insert(tenant_id, Instant::now());
    }

    /// Forgets the tenant: its next request reads its standing again.
    pub(crate) fn forget(&self, tenant_id: Uuid) {
        self.0
            .write()
            .expect("known tenants lock")
            .remove(&tenant_id);
    }
}

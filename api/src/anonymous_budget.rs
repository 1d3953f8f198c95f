//! How many failed requests without a valid token the audit trail records: at most
//! [`ANONYMOUS_PER_TENANT`] a minute per tenant and [`ANONYMOUS_TOTAL`] a minute in all (see
//! [`crate::routes::audit`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Anonymous failed requests recorded per tenant (or without one) and minute.
pub const ANONYMOUS_PER_TENANT: u32 = 60;
/// Anonymous failed requests recorded per minute, all tenants together.
pub const ANONYMOUS_TOTAL: u32 = 600;
const ANONYMOUS_WINDOW: Duration = Duration::from_secs(60);

/// How many anonymous failed requests were recorded in the current minute, per tenant.
#[derive(Debug, Clone, Default)]
pub struct AnonymousBudget(Arc<Mutex<AnonymousWindow>>);

#[derive(Debug, Default)]
struct AnonymousWindow {
    started: Option<Instant>,
    total: u32,
    per_tenant: HashMap<Option<uuid::Uuid>, u32>,
}

impl AnonymousBudget {
    /// Whether one more anonymous failed request of `tenant_id` may be recorded now. The table
    /// holds at most [`ANONYMOUS_TOTAL`] tenants, as only admitted requests add one.
    pub(crate) fn admit(&self, tenant_id: Option<uuid::Uuid>) -> bool {
        let mut window = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if window
            .started
            .is_none_or(|started| now.duration_since(started) >= ANONYMOUS_WINDOW)
        {
            *window = AnonymousWindow {
                started: Some(now),
                ..AnonymousWindow::default()
            };
        }
        if window.total >= ANONYMOUS_TOTAL
            || window.per_tenant.get(&tenant_id).copied().unwrap_or(0) >= ANONYMOUS_PER_TENANT
        {
            return false;
        }
        window.total += 1;
        *window.per_tenant.entry(tenant_id).or_default() += 1;
        true
    }
}

//! The HTTP routes, one module per resource.

pub mod alert_rules;
pub mod alerts;
pub mod audit;
pub mod branches;
pub mod bulk;
pub mod drift;
pub mod event_socket;
pub mod event_stream;
pub mod event_tickets;
pub mod events;
pub mod fleet;
pub mod fleet_health;
pub mod grants;
pub mod health;
pub mod jobs;
pub mod login;
pub mod metrics;
pub mod names;
pub mod patching;
pub mod proxies;
pub mod proxy_tokens;
pub mod quotas;
pub mod resources;
pub mod tenant_lifecycle;
pub mod tenants;
pub mod users;
pub mod versions;
pub mod webhook_deliveries;
pub mod webhooks;

use crate::error::{ApiError, FieldError};

/// Page size when the request names none.
const DEFAULT_LIMIT: u32 = 50;
/// The largest page a request may ask for.
const MAX_LIMIT: u32 = 500;

/// A checked `?limit=` of a paginated list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageSize(u32);

impl PageSize {
    /// The page size a request asks for (default 50, at most 500).
    pub(crate) fn from_param(limit: Option<u32>) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if (1..=MAX_LIMIT).contains(&limit) {
            Ok(Self(limit))
        } else {
            Err(ApiError::Validation(vec![FieldError::parameter(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            )]))
        }
    }

    /// The page's size.
    pub(crate) fn size(self) -> i64 {
        i64::from(self.0)
    }

    /// How many rows to fetch: one more than the page, to learn whether another page follows.
    pub(crate) fn fetch(self) -> i64 {
        i64::from(self.0) + 1
    }

    /// Cuts `rows` to the page and returns the cursor of the next page, if there is one.
    pub(crate) fn cut<T, C>(self, rows: &mut Vec<T>, cursor: impl Fn(&T) -> C) -> Option<C> {
        let limit = self.0 as usize;
        if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(cursor)
        } else {
            None
        }
    }
}

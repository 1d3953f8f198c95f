//! Events out (ADR 0015, ADR 0016): the tenants' webhooks and alerts. [`alerts`] evaluates the
//! alert rules (one replica, under a lease) and keeps the alerts. [`store`] keeps the endpoints, their secrets
//! (wrapped under the tenant's data key), their deliveries and every attempt; [`sender`] is the
//! one replica's work, under a lease, of turning the event feed into deliveries and trying each on
//! its own schedule; [`attempt`] is one signed HTTP request and what it came to;
//! [`target_check`] checks a target when a webhook is created or moved.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod attempt;
mod delivery;
pub mod sender;
pub mod store;
pub mod target_check;

pub use alerts::AlertSettings;
pub use sender::{spawn, WebhookSettings};

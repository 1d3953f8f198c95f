//! Pure domain types of the Envoy Fleet Manager.
//!
//! Aggregates, their commands and events, and the value objects they are made of. Nothing here does
//! I/O: no database, no HTTP, no gRPC. The write side (`efms-commands`) persists these aggregates'
//! events; the read side (`efms-projections`) folds them into read models.

pub mod actor;
pub mod alerts;
pub mod config;
pub mod envoy;
pub mod feed;
pub mod fleet;
pub mod json_pointer;
pub mod secrets;
pub mod telemetry;
pub mod tenant;
pub mod webhooks;
pub mod x509;

pub use actor::{Actor, Role};
pub use tenant::{
    SuspensionReason, Tenant, TenantCommand, TenantError, TenantEvent, TenantName, TenantSlug,
};

//! The read side of the Envoy Fleet Manager.
//!
//! A [`Projector`] tails the commit-ordered log from its checkpoint and hands each event to its
//! [`Projection`], which updates read-model tables in the same transaction as the checkpoint: a read
//! model is always exactly the fold of the log up to its checkpoint, and rebuilding it from the log
//! gives the same rows.

pub mod cache;
pub mod config;
pub mod drift;
pub mod feed;
pub mod fleet;
pub mod impact;
pub mod projector;
pub mod proxies;
pub mod replay;
pub mod snapshots;
pub mod telemetry;
pub mod tenants;

pub use cache::{CacheStats, ResourceCache};
pub use config::ConfigProjection;
pub use fleet::rollouts::RolloutProjection;
pub use fleet::FleetProjection;
pub use projector::{Projection, ProjectionError, Projector, ProjectorHandle};
pub use replay::{Rebuild, Replayed, TableDifference, Verified};
pub use snapshots::{GroupSnapshot, SnapshotStore, XdsResource};
pub use tenants::{TenantRow, TenantsProjection};

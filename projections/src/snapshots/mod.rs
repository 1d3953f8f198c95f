//! xDS snapshots (DESIGN §7): per proxy group, the Envoy resources its proxies get, encoded once
//! and shared by every stream of the group.
//!
//! A group's snapshot holds what the group and its ancestors attach (FR-CL-002), plus everything
//! those resources refer to (a listener brings its route configuration, a route its clusters, an
//! EDS cluster its endpoints, a TLS context its secrets), so attaching a listener is enough. Every
//! resource's version is its content hash: a commit that changes nothing a group's proxies see
//! wakes none of them.
//!
//! The store follows the configuration projector: whenever its checkpoint moves, the tenants whose
//! head revision changed are re-read (only resources whose hash changed are fetched and encoded
//! again) and the snapshots of their groups are replaced. Each replica keeps its own store, so any
//! replica can serve any proxy.
//!
//! `model` holds the snapshot and content types, `build` computes a group's snapshot from
//! content (no I/O), `load` reads content from the read models and opens sealed secrets, and
//! `store` keeps each tenant's content current and publishes the snapshots.

mod build;
mod load;
mod model;
mod set_hash;
mod store;

pub use model::{
    Changes, Encodings, GroupSnapshot, KindChange, KindResources, XdsResource, XDS_KINDS,
};
pub use set_hash::{member_hash, set_version, SetHash};
pub use store::SnapshotStore;

//! The configuration repository of a tenant (FR-EP, FR-VC): one event stream per tenant and branch,
//! like a git repository. Every command is a commit with an author and a message; it emits a
//! `Committed` header and one event per changed resource, all under one new revision, atomically.
//!
//! The aggregate keeps only what decisions need (per resource: version, content hash, references);
//! the documents travel in the events and live in the read models.
//!
//! Where things are: the commands in `commands.rs`, the events in `events.rs`, the refusals in
//! `errors.rs`, branch names in `branch.rs`, the aggregate and how it decides in `aggregate.rs`,
//! and the rules every commit must keep (expectations, references, group cycles, secret material)
//! in `checks.rs`.

mod aggregate;
mod branch;
pub mod bulk;
mod checks;
mod commands;
mod errors;
mod events;
pub mod group;
mod index;
pub mod inheritance;
pub mod limits;
pub mod merge;
pub mod plans;
mod refs;
pub mod shared;
pub mod template;
pub mod writes;

pub use aggregate::{content_hash, ConfigRepo, ResourceState};
pub use branch::{valid_branch_name, BranchPoint, MAIN_BRANCH};
pub use commands::{Change, ConfigCommand, Expect, Operation};
pub use errors::{dangling_message, ConfigError};
pub use events::ConfigEvent;
pub use plans::Key;
pub use refs::{references, ResourceRef};

#[cfg(test)]
mod tests;

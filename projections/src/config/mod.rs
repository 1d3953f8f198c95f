//! The configuration read models (`config_revisions`, `config_resources`,
//! `config_resource_versions`, `config_branches`), kept from the `config` streams; and the
//! queries over them, including time travel (FR-VC-001..004).
//!
//! [`writer`] is the projector side that applies events to the tables, through the statements
//! of [`tables`] (a replay holds changes back in [`held`]); [`queries`] holds the reads the API
//! serves, [`groups`] what a group gets. Both are re-exported here, so callers name them `config::...`.

pub mod groups;
pub mod held;
pub mod queries;
pub mod tables;
pub mod writer;

pub use groups::group_resources;
pub use queries::{
    derivation_of, derivations_at, get_branch, get_resource, groups_pinned_to, head_revision,
    last_merged_revision, list_branches, list_resources, list_revisions, resource_history,
    resources_at, revision_at, state_at, AsOf, BranchRow, HistoryRow, ListQuery, ListedResource,
    ResourceRow, RevisionRow,
};
pub use writer::ConfigProjection;

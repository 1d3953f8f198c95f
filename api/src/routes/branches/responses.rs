//! What the branch routes answer: a branch, and the outcome of a merge with its conflicts.

use chrono::{DateTime, Utc};
use efms_domain::envoy::ResourceKind;
use efms_projections::config::BranchRow;
use serde::Serialize;
use serde_json::Value;

/// A branch as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BranchView {
    name: String,
    /// The branch it started from, and merges into.
    base_branch: String,
    /// The base's revision it started from.
    base_revision: i64,
    /// The branch's first revision (equal in content to the base at `base_revision`).
    fork_revision: i64,
    /// Its latest revision.
    head: i64,
    created_at: DateTime<Utc>,
    created_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<DateTime<Utc>>,
}

impl From<BranchRow> for BranchView {
    fn from(row: BranchRow) -> Self {
        Self {
            name: row.name,
            base_branch: row.base_branch,
            base_revision: row.base_revision,
            fork_revision: row.fork_revision,
            head: row.head,
            created_at: row.created_at,
            created_by: row.created_by,
            deleted_at: row.deleted_at,
        }
    }
}

/// One value both sides of a merge changed differently.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MergeConflict {
    /// The resource's kind.
    #[schema(value_type = String)]
    pub(super) kind: ResourceKind,
    /// Its name.
    pub(super) name: String,
    /// Where in the resource (RFC 6901; empty: the whole resource).
    pub(super) pointer: String,
    /// The value when the two branches last agreed (absent: did not exist).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) base: Option<Value>,
    /// The value on the branch merged into.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) ours: Option<Value>,
    /// The value on the branch being merged.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) theirs: Option<Value>,
}

/// A resource a merge changed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MergedChange {
    /// The resource's kind.
    #[schema(value_type = String)]
    pub(super) kind: ResourceKind,
    pub(super) name: String,
    /// `created`, `replaced` or `deleted`.
    pub(super) change: String,
}

/// What a merge did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MergeResult {
    /// The branch merged into.
    pub(super) into: String,
    /// The new revision of `into` (absent: nothing to merge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) revision: Option<i64>,
    /// The branch's revision that was merged.
    pub(super) merged_revision: i64,
    /// The resources the merge changed on `into`.
    pub(super) changes: Vec<MergedChange>,
}

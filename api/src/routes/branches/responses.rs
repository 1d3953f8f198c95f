//! What the branch routes answer: a branch, and the outcome of a merge with its conflicts.

use chrono::{DateTime, Utc};
use efms_domain::envoy::ResourceKind;
use efms_projections::config::BranchRow;
use serde::Serialize;

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

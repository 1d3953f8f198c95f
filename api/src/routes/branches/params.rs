//! Request bodies and query parameters of the branch routes.

use serde::Deserialize;

/// Where a new branch starts.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// The branch to start from (default `main`).
    pub(super) branch: Option<String>,
    /// Its revision to start from (default: its latest).
    pub(super) revision: Option<i64>,
}

/// Body of a branch creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBranch {
    /// The new branch's name: 1 to 63 of a-z, 0-9, `.`, `_`, `-`.
    pub(super) name: String,
    /// Where it starts (default: the latest revision of `main`).
    #[serde(default)]
    pub(super) base: Option<BaseSpec>,
    /// The message of its first commit.
    #[serde(default)]
    pub(super) message: Option<String>,
}

/// Query of the branch list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListBranches {
    /// Also list deleted branches.
    pub(super) include_deleted: Option<bool>,
}

/// Query of a branch diff.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BranchDiffParams {
    /// `changes` (default): what the branch changed since it last agreed with its base (what a
    /// merge brings); `base`: the branch's head against its base's head.
    pub(super) against: Option<String>,
}

/// Body of a merge.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The merge commit's message.
    #[serde(default)]
    pub(super) message: Option<String>,
}

/// The `{name}` of a branch route.
#[derive(Debug, Deserialize)]
pub struct BranchName {
    /// The branch's name.
    pub name: String,
}

//! Query parameters of the resource routes: `?revision=`, `?at=`, `?branch=` and list paging.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// `?revision=`, `?at=` and `?branch=` on reads.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// Answer as of this revision.
    pub revision: Option<i64>,
    /// Answer as of this time (RFC 3339).
    pub at: Option<DateTime<Utc>>,
    /// Read this branch (default `main`).
    pub branch: Option<String>,
}

/// `?branch=` on writes and on reads without other parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BranchParams {
    /// Work on this branch (default `main`).
    pub branch: Option<String>,
}

/// Query of a list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Answer as of this revision.
    pub(super) revision: Option<i64>,
    /// Answer as of this time (RFC 3339).
    pub(super) at: Option<DateTime<Utc>>,
    /// Page size, 1 to 500.
    pub(super) limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub(super) cursor: Option<String>,
    /// Only names that start with this.
    pub(super) name_prefix: Option<String>,
    /// `name` (default) or `-name`.
    pub(super) sort: Option<String>,
    /// Only the resources this group attaches, its own and its ancestors'.
    pub(super) group: Option<String>,
    /// Read this branch (default `main`).
    pub branch: Option<String>,
}

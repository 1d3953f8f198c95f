//! `/api/v1/tenants/{tenant}/branches`: branches of a tenant's configuration and their merges
//! (FR-VC-005). A branch is its own stream of commits; it starts as a copy of its base at a
//! revision, takes writes through `?branch=NAME` on every resource route, and merges back into its
//! base with a three-way merge per resource (ADR 0007).
//!
//! One job per module: [`handlers`] serves the routes, [`params`] parses their bodies and query
//! parameters, [`merging`] plans a merge (the three-way merge of every resource), and
//! [`responses`] holds what the routes answer.

pub mod handlers;
pub mod merging;
pub mod params;
pub mod responses;

pub use self::handlers::{
    __path_create, __path_delete, __path_diff, __path_get, __path_list, __path_merge, create,
    delete, diff, get, list, merge,
};
pub use self::params::{BaseSpec, BranchDiffParams, CreateBranch, ListBranches, MergeRequest};
pub use self::responses::{BranchView, MergeResult, MergedChange};

/// The branches' routes.
pub fn router() -> axum::Router<crate::state::AppState> {
    use axum::routing::{self, post};
    axum::Router::new()
        .route(
            "/tenants/{tenant}/branches",
            routing::get(list).post(create),
        )
        .route(
            "/tenants/{tenant}/branches/{name}",
            routing::get(get).delete(delete),
        )
        .route("/tenants/{tenant}/branches/{name}/diff", routing::get(diff))
        .route("/tenants/{tenant}/branches/{name}/merge", post(merge))
}

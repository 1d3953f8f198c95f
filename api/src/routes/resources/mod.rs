//! `/api/v1/tenants/{tenant}/{kind}`: Envoy resources (FR-EP, API-001..005). The body of a create or
//! replace is the Envoy resource's own JSON; every write is a commit on the tenant's configuration
//! repository; every read can ask for an earlier revision (`?revision=N`) or time (`?at=`).
//!
//! One job per module: [`handlers`] serves the CRUD routes, [`params`] parses their query
//! parameters, [`context`] resolves the kind, branch, revision and preconditions of a request,
//! [`changes`] turns a body into a change, [`commits`] commits it, [`responses`] renders what is
//! read, and [`groups`] answers what a group attaches and how a resource is declared.

pub mod changes;
pub mod commits;
pub mod context;
pub mod groups;
pub mod handlers;
pub mod params;
pub mod responses;

pub use self::changes::{change_of, invalid, restore, TEMPLATE_KEY};
pub use self::commits::{commit, commit_request, execute};
pub use self::context::{as_of, if_match, kind_of, Collection, IfMatch, ResourcePath};
pub use self::groups::{
    __path_declaration, __path_group_resources, declaration, effective_attachments,
    group_resources, Declaration, EffectiveResource,
};
pub use self::handlers::{
    __path_create, __path_delete, __path_get, __path_list, __path_patch, __path_replace, create,
    delete, get, list, patch, replace,
};
pub use self::params::{BranchParams, ListParams, ReadParams};
pub use self::responses::{redact, resource_response, ListItem, ListPage};
pub use crate::service_errors::config_error;

/// The routes of Envoy resources, groups' effective resources and declarations.
pub fn router() -> axum::Router<crate::state::AppState> {
    use axum::routing;
    axum::Router::new()
        .route("/tenants/{tenant}/{kind}", routing::get(list).post(create))
        .route(
            "/tenants/{tenant}/{kind}/{name}",
            routing::get(get).put(replace).patch(patch).delete(delete),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/resources",
            routing::get(group_resources),
        )
        .route(
            "/tenants/{tenant}/{kind}/{name}/declaration",
            routing::get(declaration),
        )
}

//! The HTTP routes, one module per resource.

pub mod health;
pub mod resources;
pub mod tenants;
pub mod versions;

use axum::http::HeaderMap;
use efms_commands::CommitMetadata;
use efms_domain::Actor;

/// What a commit records of the request that caused it: the actor, the message, the request id.
pub(crate) fn commit_metadata(
    actor: &Actor,
    headers: &HeaderMap,
    message: Option<String>,
) -> CommitMetadata {
    CommitMetadata {
        actor: actor.audit_name(),
        message,
        request_id: headers
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    }
}

//! The shapes of problem+json bodies (RFC 7807) as the OpenAPI document describes them; what
//! writes them is `crate::error`. A leaf: route modules name these in their annotations without
//! importing the document that lists the routes.

use efms_domain::envoy::ResourceKind;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The RFC 7807 body of every error (for the document; `crate::error` writes it).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// A stable URI naming the kind of problem (`urn:efms:problem:…`).
    #[serde(rename = "type")]
    kind: String,
    /// Short summary of the kind.
    title: String,
    /// The HTTP status.
    status: u16,
    /// What went wrong in this request.
    detail: String,
    /// Where in the request (JSON pointers into the body, or query parameters).
    errors: Option<Vec<ProblemField>>,
    /// A merge conflict: each value both sides changed (resource, pointer, base, ours, theirs).
    conflicts: Option<Vec<MergeConflict>>,
}

/// One place in a request that is at fault.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ProblemField {
    /// JSON pointer (RFC 6901) into the body.
    pointer: Option<String>,
    /// The query parameter.
    parameter: Option<String>,
    /// What is wrong there.
    detail: String,
}

/// One value both sides of a merge changed differently.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MergeConflict {
    /// The resource's kind.
    #[schema(value_type = String)]
    pub kind: ResourceKind,
    /// Its name.
    pub name: String,
    /// Where in the resource (RFC 6901; empty: the whole resource).
    pub pointer: String,
    /// The value when the two branches last agreed (absent: did not exist).
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<Value>,
    /// The value on the branch merged into.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ours: Option<Value>,
    /// The value on the branch being merged.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theirs: Option<Value>,
}

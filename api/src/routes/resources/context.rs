//! Request context shared by the resource routes and their neighbours: which kind a collection
//! names, which resource a path names, which revision a request reads, and `If-Match`.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use efms_domain::config::Expect;
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, AsOf};

use crate::access::TenantAccess;
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// The kind a collection segment names, or 404.
pub fn kind_of(collection: &str) -> Result<ResourceKind, ApiError> {
    ResourceKind::from_collection(collection)
        .ok_or_else(|| ApiError::NotFound(format!("no such resource collection `{collection}`")))
}

/// The `{kind}` of a collection route, or 404.
#[derive(Debug, Clone, Copy)]
pub struct Collection(pub ResourceKind);

/// The `{kind}` and `{name}` of a resource route (404 for a kind that is not a collection).
#[derive(Debug, Clone)]
pub struct ResourcePath {
    /// The resource's kind.
    pub kind: ResourceKind,
    /// The resource's name, as the path gives it.
    pub name: String,
}

/// The value of the path parameter `key` of the route.
async fn path_parameter<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    key: &str,
) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|rejection| ApiError::BadRequest {
            detail: rejection.body_text(),
            errors: Vec::new(),
        })?;
    params
        .iter()
        .find_map(|(name, value)| (name == key).then(|| value.to_owned()))
        .ok_or_else(|| ApiError::Internal(format!("a route without `{{{key}}}`")))
}

impl<S: Send + Sync> FromRequestParts<S> for Collection {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let collection = path_parameter(parts, state, "kind").await?;
        kind_of(&collection).map(Collection)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ResourcePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Collection(kind) = Collection::from_request_parts(parts, state).await?;
        let name = path_parameter(parts, state, "name").await?;
        Ok(Self { kind, name })
    }
}

/// The precondition of `If-Match`, if the request has one (400 for one this API did not give).
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub Option<Expect>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        if_match(&parts.headers).map(IfMatch)
    }
}

/// Resolves `?revision=` / `?at=` into the state to read.
pub async fn as_of(
    state: &AppState,
    tenant: &TenantAccess,
    branch: &str,
    revision: Option<i64>,
    at: Option<DateTime<Utc>>,
) -> Result<AsOf, ApiError> {
    match (revision, at) {
        (None, None) => Ok(AsOf::Now),
        (Some(_), Some(_)) => Err(ApiError::BadRequest {
            detail: "give `revision` or `at`, not both".to_owned(),
            errors: vec![FieldError::parameter("at", "conflicts with `revision`")],
        }),
        (Some(revision), None) => {
            let head = read::head_revision(&state.pool, tenant.tenant_id, branch).await?;
            if revision < 1 || revision > head {
                return Err(ApiError::NotFound(format!(
                    "there is no revision {revision}; the latest is {head}"
                )));
            }
            Ok(AsOf::Revision(revision))
        }
        (None, Some(at)) => Ok(AsOf::Revision(
            read::revision_at(&state.pool, tenant.tenant_id, branch, at).await?,
        )),
    }
}

/// `If-Match: "N"` (or `W/"N"`, or `*`).
pub fn if_match(headers: &HeaderMap) -> Result<Option<Expect>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(Some(Expect::Present));
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<u64>()
        .map(|version| Some(Expect::Version(version)))
        .map_err(|_| ApiError::BadRequest {
            detail: format!("`If-Match: {text}` is not an ETag this API gave out (such as \"3\")"),
            errors: Vec::new(),
        })
}

/// 404 for a resource that does not exist.
pub(super) fn missing(kind: ResourceKind, name: &str) -> ApiError {
    ApiError::NotFound(format!("there is no {kind} `{name}`"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn if_match_accepts_strong_weak_and_star() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"4\""));
        assert_eq!(if_match(&headers).unwrap(), Some(Expect::Version(4)));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("W/\"5\""));
        assert_eq!(if_match(&headers).unwrap(), Some(Expect::Version(5)));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(if_match(&headers).unwrap(), Some(Expect::Present));
        headers.insert(header::IF_MATCH, HeaderValue::from_static("\"abc\""));
        assert!(if_match(&headers).is_err());
    }
}

//! Request context shared by the resource routes and their neighbours: which kind a collection
//! names, which branch and revision a request reads, `If-Match` and `X-Commit-Message`.

use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use efms_domain::config::{Expect, MAIN_BRANCH};
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, AsOf};

use crate::access::TenantAccess;
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

pub use crate::extract::{commit_message, COMMIT_MESSAGE_HEADER};

/// The kind a collection segment names, or 404.
pub fn kind_of(collection: &str) -> Result<ResourceKind, ApiError> {
    ResourceKind::from_collection(collection)
        .ok_or_else(|| ApiError::NotFound(format!("no such resource collection `{collection}`")))
}

/// The branch a request works on: `main`, or a branch of the tenant that is not deleted (else 404).
pub async fn branch_of(
    state: &AppState,
    tenant: &TenantAccess,
    branch: Option<String>,
) -> Result<String, ApiError> {
    let Some(branch) = branch.filter(|b| b != MAIN_BRANCH) else {
        return Ok(MAIN_BRANCH.to_owned());
    };
    match read::get_branch(&state.pool, tenant.tenant_id, &branch).await? {
        Some(row) if row.deleted_at.is_none() => Ok(branch),
        Some(_) => Err(ApiError::NotFound(format!(
            "branch `{branch}` was deleted; its history stays readable through the revisions of `main`"
        ))),
        None => Err(ApiError::NotFound(format!("there is no branch `{branch}`"))),
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

//! One error type for the whole API, answered as RFC 7807 `application/problem+json`.
//!
//! 4xx bodies say what was wrong and where (a JSON pointer into the body, or the query parameter);
//! 5xx bodies say nothing internal: the cause goes to the log with the request.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The `Retry-After` of a 503: the database watch probes twice a second, so a database back is
/// seen well within it.
pub const UNAVAILABLE_RETRY_AFTER_SECONDS: u32 = 2;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where in a request one problem was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer (RFC 6901) into the request body, when the body is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// The query parameter, when one is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// What is wrong there.
    pub detail: String,
}

impl FieldError {
    /// A problem at `pointer` in the body.
    pub fn at(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: Some(pointer.into()),
            parameter: None,
            detail: detail.into(),
        }
    }

    /// A problem with the query parameter `name`.
    pub fn parameter(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: None,
            parameter: Some(name.into()),
            detail: detail.into(),
        }
    }
}

/// Everything a request can fail with; each variant documents its status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read at all (malformed JSON, bad query string).
    #[error("{detail}")]
    BadRequest {
        /// What is wrong.
        detail: String,
        /// Where, when known.
        errors: Vec<FieldError>,
    },
    /// 401: no valid bearer token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated, but the role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 403 with a problem type of its own (`urn:efms:problem:tenant-suspended`): the tenant is
    /// suspended, so its own callers may read but not write.
    #[error("{0}")]
    Suspended(String),
    /// 404: no such thing (or not one the caller may know of).
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the change conflicts with the current state (exists already, concurrent change).
    #[error("{0}")]
    Conflict(String),
    /// 409: a merge whose sides changed the same values, each listed.
    #[error("{detail}")]
    MergeConflict {
        /// What happened.
        detail: String,
        /// Each conflict: resource, pointer, base, ours, theirs.
        conflicts: serde_json::Value,
    },
    /// 429: a rate quota is reached; retry after the given seconds.
    #[error("{detail}")]
    TooManyRequests {
        /// Which quota, and how far.
        detail: String,
        /// When a retry may succeed.
        retry_after_seconds: u32,
    },
    /// 410: what the request names existed but is gone for good (a feed cursor older than the
    /// feed's retention).
    #[error("{detail}")]
    Gone {
        /// What is gone.
        detail: String,
        /// Where it was named.
        errors: Vec<FieldError>,
    },
    /// 412: `If-Match` names a version that is no longer current.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the body is JSON but not a valid request.
    #[error("the request is not valid")]
    Validation(Vec<FieldError>),
    /// 503: a dependency (the database) is unavailable; the request may be retried.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure. The cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// A 500 whose cause is logged.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        ApiError::Internal(error.to_string())
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::Suspended(_) => (
                StatusCode::FORBIDDEN,
                "tenant-suspended",
                "Tenant suspended",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            ApiError::MergeConflict { .. } => {
                (StatusCode::CONFLICT, "merge-conflict", "Merge conflict")
            }
            ApiError::Gone { .. } => (StatusCode::GONE, "gone", "Gone"),
            ApiError::PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Validation failed",
            ),
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }
}

/// The RFC 7807 body.
#[derive(Debug, Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "<[FieldError]>::is_empty")]
    errors: &'a [FieldError],
    #[serde(skip_serializing_if = "Option::is_none")]
    conflicts: Option<&'a serde_json::Value>,
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The problem document (RFC 7807) this error answers with, as JSON.
    pub fn problem(&self) -> serde_json::Value {
        serde_json::to_value(self.problem_body()).expect("a problem serialises")
    }

    fn problem_body(&self) -> Problem<'_> {
        let (status, kind, title) = self.parts();
        let errors: &[FieldError] = match self {
            ApiError::BadRequest { errors, .. }
            | ApiError::Gone { errors, .. }
            | ApiError::Validation(errors) => errors,
            _ => &[],
        };
        let detail = match self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                "the server failed to answer; the failure is logged".to_owned()
            }
            ApiError::Validation(errors) => match errors.as_slice() {
                [one] => one.detail.clone(),
                _ => format!("{} problems in the request", errors.len()),
            },
            other => other.to_string(),
        };
        Problem {
            kind: format!("urn:efms:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail,
            errors,
            conflicts: match self {
                ApiError::MergeConflict { conflicts, .. } => Some(conflicts),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.problem_body();
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let ApiError::TooManyRequests {
            retry_after_seconds,
            ..
        } = &self
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
        }
        if let ApiError::Unavailable(_) = &self {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECONDS),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"efms\""),
            );
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                ApiError::Unavailable("the database is unavailable; retry later".to_owned())
            }
            // Text the database cannot hold (a NUL character) came from the request.
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22021" | "22P05")) =>
            {
                ApiError::BadRequest {
                    detail: "the request contains a NUL character (U+0000), which cannot be stored"
                        .to_owned(),
                    errors: Vec::new(),
                }
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<efms_projections::ProjectionError> for ApiError {
    fn from(error: efms_projections::ProjectionError) -> Self {
        match error {
            efms_projections::ProjectionError::Database(error) => error.into(),
            other => ApiError::internal(other),
        }
    }
}

impl<E: std::error::Error> From<efms_commands::CommandError<E>> for ApiError {
    fn from(error: efms_commands::CommandError<E>) -> Self {
        use efms_commands::CommandError;
        match error {
            CommandError::Rejected(error) => ApiError::Conflict(error.to_string()),
            CommandError::Conflict => ApiError::Conflict(
                "a concurrent change to the same resource won; nothing was written, retry"
                    .to_owned(),
            ),
            CommandError::Unavailable(_) => {
                ApiError::Unavailable("the database is unavailable; nothing was written".to_owned())
            }
            CommandError::Internal(error) => ApiError::internal(error),
        }
    }
}

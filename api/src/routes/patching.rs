//! Patches (RFC 6902 JSON Patch, RFC 7396 merge patch) as `PATCH` and bulk `patch` operations
//! give them: the body read by its media type, and a refusal worded with the limit it met and the
//! setting that sets it (422). The patch itself is applied by the configuration service.

use axum::http::{header, HeaderMap};
use efms_domain::config::limits::{self, Limits, PatchRefusal};
use efms_domain::config::writes::{refusal_pointer, Patch};
use efms_domain::envoy::ResourceKind;
use serde_json::Value;

use crate::error::{ApiError, FieldError};
use crate::extract::parse_json;
use crate::limits::{MAX_DOCUMENT_BYTES, MAX_PATCH_OPERATIONS};

/// The patch of a `PATCH` request.
pub struct PatchBody(pub Patch);

impl<S: Send + Sync> axum::extract::FromRequest<S> for PatchBody {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let headers = request.headers().clone();
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::BadRequest {
                detail: rejection.body_text(),
                errors: Vec::new(),
            })?;
        Self::parse(&headers, &bytes)
    }
}

impl PatchBody {
    /// The patch of a `PATCH` request, by its media type.
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, ApiError> {
        let media = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(|value| value.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match media.as_str() {
            "application/json-patch+json" => parse_json(body).map(|p| PatchBody(Patch::Json(p))),
            "application/merge-patch+json" => parse_json(body).map(|p| PatchBody(Patch::Merge(p))),
            _ => Err(ApiError::UnsupportedMediaType(
                "a PATCH body is `application/json-patch+json` (RFC 6902) or \
                 `application/merge-patch+json` (RFC 7396)"
                    .to_owned(),
            )),
        }
    }
}

/// A refused patch of `kind` `name` given at `at`, as a 422 naming the operation at fault.
pub fn refused(refusal: &PatchRefusal, kind: ResourceKind, name: &str, at: &str) -> ApiError {
    ApiError::Validation(vec![FieldError::at(
        refusal_pointer(refusal, at),
        refusal_detail(refusal, kind, name),
    )])
}

/// What a refused patch of `kind` `name` met, naming the limit and its setting.
pub fn refusal_detail(refusal: &PatchRefusal, kind: ResourceKind, name: &str) -> String {
    match refusal {
        PatchRefusal::TooManyOperations { count, limit } => format!(
            "the patch has {count} operations; the limit is {limit} ({MAX_PATCH_OPERATIONS})"
        ),
        PatchRefusal::TooLarge { limit, .. } => format!(
            "the patch would make {kind} `{name}` larger than {limit} bytes, the limit on a \
             document ({MAX_DOCUMENT_BYTES}); nothing was changed"
        ),
        PatchRefusal::DoesNotApply {
            operation,
            path,
            reason,
        } => format!(
            "the patch does not apply to {kind} `{name}`: operation {operation} failed at path \
             '{path}': {reason}"
        ),
    }
}

/// What a document larger than a stored document may be is told.
pub fn too_large_detail(limit: usize) -> String {
    format!(
        "the document is larger than {limit} bytes, the limit on a document ({MAX_DOCUMENT_BYTES})"
    )
}

/// A document a create or replace gives, refused (422) when it is larger than a stored document
/// may be.
pub fn check_written(document: &Value, limits: &Limits) -> Result<(), ApiError> {
    limits::check_document(document, limits).map_err(|_| {
        ApiError::Validation(vec![FieldError::at(
            "",
            too_large_detail(limits.max_document_bytes),
        )])
    })
}

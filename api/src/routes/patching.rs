//! Patches (RFC 6902 JSON Patch, RFC 7396 merge patch) as `PATCH` and bulk `patch` operations
//! apply them: within the limits on a document's size and a patch's operations, checked while the
//! patch is applied (`efms_domain::config::limits`), and answered 422 naming the limit.

use axum::http::{header, HeaderMap};
use efms_domain::config::limits::{self, Limits, PatchRefusal};
use efms_domain::envoy::ResourceKind;
use serde_json::Value;

use crate::error::{ApiError, FieldError};
use crate::extract::parse_json;
use crate::limits::{MAX_DOCUMENT_BYTES, MAX_PATCH_OPERATIONS};

/// A parsed patch.
pub enum PatchBody {
    /// An RFC 6902 JSON Patch.
    Json(json_patch::Patch),
    /// An RFC 7396 merge patch.
    Merge(Value),
}

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
            "application/json-patch+json" => parse_json(body).map(PatchBody::Json),
            "application/merge-patch+json" => parse_json(body).map(PatchBody::Merge),
            _ => Err(ApiError::UnsupportedMediaType(
                "a PATCH body is `application/json-patch+json` (RFC 6902) or \
                 `application/merge-patch+json` (RFC 7396)"
                    .to_owned(),
            )),
        }
    }

    /// Applies the patch to `kind` `name`'s `document` within `limits`; a refusal is a 422 whose
    /// pointer names the operation at fault within the patch (under `at`).
    pub fn apply(
        &self,
        document: &mut Value,
        limits: &Limits,
        (kind, name): (ResourceKind, &str),
        at: &str,
    ) -> Result<(), ApiError> {
        let applied = match self {
            PatchBody::Json(patch) => limits::apply_patch(document, &patch.0, limits),
            PatchBody::Merge(patch) => limits::apply_merge_patch(document, patch, limits),
        };
        applied.map_err(|refusal| {
            let (pointer, detail) = refusal_at(&refusal, kind, name, at);
            ApiError::Validation(vec![FieldError::at(pointer, detail)])
        })
    }
}

/// Where a refused patch is at fault (under `at`) and what the refusal says, naming the limit and
/// its setting.
pub fn refusal_at(
    refusal: &PatchRefusal,
    kind: ResourceKind,
    name: &str,
    at: &str,
) -> (String, String) {
    let pointer = match refusal.operation() {
        Some(index) => format!("{at}/{index}"),
        None => at.to_owned(),
    };
    let detail = match refusal {
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
    };
    (pointer, detail)
}

/// A document a create or replace gives, refused (422) when it is larger than a stored document
/// may be.
pub fn check_written(document: &Value, limits: &Limits) -> Result<(), ApiError> {
    if limits::json_size(document) > limits.max_document_bytes {
        return Err(ApiError::Validation(vec![FieldError::at(
            "",
            format!(
                "the document is larger than {} bytes, the limit on a document ({MAX_DOCUMENT_BYTES})",
                limits.max_document_bytes
            ),
        )]));
    }
    Ok(())
}

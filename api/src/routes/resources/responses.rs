//! What the resource routes answer: one resource with its `ETag`, a page of resources, and the
//! redaction of secret material on every read.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, ResourceRow};
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;

/// One resource in a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListItem {
    name: String,
    version: i64,
    updated_at: DateTime<Utc>,
    updated_by: String,
    /// The Envoy resource (secrets without private material).
    #[schema(value_type = Object)]
    resource: Box<serde_json::value::RawValue>,
}

/// A page of resources.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListPage {
    items: Vec<ListItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Shared text handed to a response body without copying it.
pub(super) struct SharedText(pub(super) std::sync::Arc<str>);

impl AsRef<[u8]> for SharedText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A page of listed resources as JSON text (secret material redacted).
pub(super) fn render_page(
    kind: ResourceKind,
    page: crate::routes::PageSize,
    mut rows: Vec<read::ListedResource>,
) -> Result<String, ApiError> {
    let next_cursor = page.cut(&mut rows, |row| row.name.clone());
    let items = rows
        .into_iter()
        .map(|row| {
            let document: Value =
                serde_json::from_str(&row.document).map_err(ApiError::internal)?;
            let resource = serde_json::value::to_raw_value(&redact(kind, document))
                .map_err(ApiError::internal)?;
            Ok(ListItem {
                name: row.name,
                version: row.version,
                updated_at: row.updated_at,
                updated_by: row.updated_by,
                resource,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    serde_json::to_string(&ListPage { items, next_cursor }).map_err(ApiError::internal)
}

/// The response for one resource: its (redacted) Envoy JSON, `ETag` and `Last-Modified`.
pub fn resource_response(status: StatusCode, kind: ResourceKind, row: &ResourceRow) -> Response {
    let etag =
        HeaderValue::from_str(&format!("\"{}\"", row.version)).expect("a number is a header value");
    let modified = HeaderValue::from_str(
        &row.updated_at
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string(),
    )
    .expect("a date is a header value");
    let mut response = (status, Json(redact(kind, row.document.clone()))).into_response();
    response.headers_mut().insert(header::ETAG, etag);
    response
        .headers_mut()
        .insert(header::LAST_MODIFIED, modified);
    response
}

/// Resources are never read back with their secret material: every value Envoy's schema marks
/// sensitive is replaced by `{"redacted": true}` (which no write accepts), whatever the kind
/// (see [`efms_domain::envoy::sensitive`]).
pub fn redact(kind: ResourceKind, document: Value) -> Value {
    efms_domain::envoy::sensitive::redact(kind, document)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_read_without_private_material() {
        let secret = serde_json::json!({
            "name": "s",
            "tls_certificate": {
                "certificate_chain": { "inline_string": "CERT" },
                "private_key": { "inline_string": "KEY" }
            }
        });
        let shown = redact(ResourceKind::Secret, secret);
        assert_eq!(
            shown["tls_certificate"]["certificate_chain"]["inline_string"],
            "CERT"
        );
        assert!(!shown.to_string().contains("KEY"));
    }
}

//! Request extractors whose failures answer in the API's problem format, with the place at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use efms_commands::CommitMetadata;
use efms_domain::json_pointer;
use efms_domain::Actor;

use crate::error::{ApiError, FieldError};

/// A JSON body. Unlike `axum::Json`, a bad body is answered with the JSON pointer of the fault:
/// 400 when it is not JSON at all, 422 when it is JSON of the wrong shape.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON: send `Content-Type: application/json`".to_owned(),
            ));
        }
        let bytes =
            Bytes::from_request(req, state)
                .await
                .map_err(|rejection| ApiError::BadRequest {
                    detail: rejection.body_text(),
                    errors: Vec::new(),
                })?;
        parse_json(&bytes).map(ApiJson)
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim)
        .is_some_and(|media| {
            media.eq_ignore_ascii_case("application/json")
                || (media.starts_with("application/") && media.ends_with("+json"))
        })
}

/// Deserializes `bytes`, naming where it failed as a JSON pointer.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| json_error(error.path(), error.inner()))?;
    deserializer
        .end()
        .map_err(|error| json_error(&serde_path_to_error::Track::new().path(), &error))?;
    Ok(value)
}

fn json_error(path: &serde_path_to_error::Path, error: &serde_json::Error) -> ApiError {
    let message = error.to_string();
    let pointer = json_pointer::of_error(path, &message);
    if error.classify() == serde_json::error::Category::Data {
        ApiError::Validation(vec![FieldError::at(pointer, message)])
    } else {
        ApiError::BadRequest {
            detail: format!("the body is not valid JSON: {message}"),
            errors: vec![FieldError::at(pointer, message)],
        }
    }
}

/// A query string. A bad one is answered with 400 problem+json naming the problem.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_from_str(query).map(ApiQuery)
    }
}

fn serde_urlencoded_from_str<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{query}").parse().map_err(|_| {
        ApiError::BadRequest {
            detail: "the query string is malformed".to_owned(),
            errors: Vec::new(),
        }
    })?)
    .map(|axum::extract::Query(value)| value)
    .map_err(|rejection| ApiError::BadRequest {
        detail: rejection.body_text(),
        errors: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        port: u16,
    }

    fn pointer(error: ApiError) -> Option<String> {
        match error {
            ApiError::Validation(errors) | ApiError::BadRequest { errors, .. } => {
                errors.into_iter().next().and_then(|e| e.pointer)
            }
            _ => None,
        }
    }

    #[test]
    fn wrong_type_deep_in_the_body_is_a_422_at_its_pointer() {
        let error =
            parse_json::<Body>(br#"{"name":"a","items":[{"port":1},{"port":"x"}]}"#).unwrap_err();
        assert!(matches!(error, ApiError::Validation(_)));
        assert_eq!(pointer(error).as_deref(), Some("/items/1/port"));
    }

    #[test]
    fn unknown_field_is_a_422_at_its_own_pointer() {
        let error = parse_json::<Body>(br#"{"name":"a","items":[{"prot":1}]}"#).unwrap_err();
        assert!(matches!(error, ApiError::Validation(_)));
        assert_eq!(pointer(error).as_deref(), Some("/items/0/prot"));
    }

    #[test]
    fn missing_field_points_at_the_field() {
        let error = parse_json::<Body>(br#"{"items":[]}"#).unwrap_err();
        assert_eq!(pointer(error).as_deref(), Some("/name"));
    }

    #[test]
    fn malformed_json_is_a_400() {
        assert!(matches!(
            parse_json::<Body>(b"{\"name\":"),
            Err(ApiError::BadRequest { .. })
        ));
        assert!(matches!(
            parse_json::<Body>(br#"{"name":"a","items":[]} x"#),
            Err(ApiError::BadRequest { .. })
        ));
    }
}

/// The header that carries a commit's message.
pub const COMMIT_MESSAGE_HEADER: &str = "x-commit-message";

/// What a write request says of the commit it causes: its message (`X-Commit-Message`) and the
/// request's id (`X-Request-Id`, its first 128 characters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitMeta {
    /// The commit's message, if one was given.
    pub message: Option<String>,
    /// The request's id, if the client sent one.
    pub request_id: Option<String>,
}

impl CommitMeta {
    /// Reads the commit's message and the request id from `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(Self {
            message: commit_message(headers)?,
            request_id: crate::request_id::of(headers),
        })
    }

    /// The same, with `message` as the commit's message.
    #[must_use]
    pub fn with_message(self, message: Option<String>) -> Self {
        Self { message, ..self }
    }

    /// What the commit records: `actor`, the message and the request id.
    pub fn metadata(&self, actor: &Actor) -> CommitMetadata {
        CommitMetadata {
            actor: actor.audit_name(),
            message: self.message.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CommitMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_headers(&parts.headers)
    }
}

/// The commit message from `X-Commit-Message`, if any.
pub fn commit_message(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(COMMIT_MESSAGE_HEADER)
        .map(|value| {
            value
                .to_str()
                .map(|text| text.trim().to_owned())
                .map_err(|_| ApiError::BadRequest {
                    detail: format!("`{COMMIT_MESSAGE_HEADER}` must be visible ASCII text"),
                    errors: Vec::new(),
                })
        })
        .transpose()
        .map(|message| message.filter(|text| !text.is_empty()))
}

#[cfg(test)]
mod commit_meta_tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_commit_records_the_trimmed_message_and_at_most_128_characters_of_the_request_id() {
        let mut headers = HeaderMap::new();
        headers.insert(COMMIT_MESSAGE_HEADER, HeaderValue::from_static("  fix  "));
        let long_id = "r".repeat(10_000);
        headers.insert("x-request-id", HeaderValue::from_str(&long_id).unwrap());
        let meta = CommitMeta::from_headers(&headers).unwrap();
        assert_eq!(meta.message.as_deref(), Some("fix"));
        assert_eq!(meta.request_id.as_ref().map(String::len), Some(128));
        headers.insert(COMMIT_MESSAGE_HEADER, HeaderValue::from_static("   "));
        assert_eq!(CommitMeta::from_headers(&headers).unwrap().message, None);
    }
}

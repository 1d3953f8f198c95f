//! Request extractors whose failures answer in the API's problem format, with the place at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use efms_domain::json_pointer;

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

//! Every request's id (`X-Request-Id`): the client's when it sends a usable one (cut to
//! [`MAX_CHARS`] characters), else a new UUID v7; set on the request before anything reads it, so
//! the audit trail, the commit it causes and the request's log span all carry the same, and
//! returned on the response.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The header.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// The longest request id kept (the rest is cut): what a caller can make the server store.
pub const MAX_CHARS: usize = 128;

/// The request id `headers` carry, cut to [`MAX_CHARS`]; `None` when absent, empty or not text.
pub fn of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(|id| id.chars().take(MAX_CHARS).collect())
}

/// Gives the request its id and returns it on the response.
pub async fn assign(mut request: Request, next: Next) -> Response {
    let id = of(request.headers()).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    // Visible ASCII read from a header, or a UUID: always a valid header value.
    let value = HeaderValue::from_str(&id).expect("a request id is a valid header value");
    request.headers_mut().insert(HEADER, value.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(HEADER, value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_the_clients_trimmed_and_cut_and_none_when_blank() {
        let mut headers = HeaderMap::new();
        assert_eq!(of(&headers), None);
        headers.insert(HEADER, HeaderValue::from_static("  "));
        assert_eq!(of(&headers), None);
        headers.insert(HEADER, HeaderValue::from_static(" abc "));
        assert_eq!(of(&headers).as_deref(), Some("abc"));
        headers.insert(HEADER, HeaderValue::from_str(&"r".repeat(500)).unwrap());
        assert_eq!(of(&headers).map(|id| id.len()), Some(MAX_CHARS));
    }
}

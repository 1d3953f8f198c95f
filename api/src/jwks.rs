//! Fetching an identity provider's JWK set from its URL: over https (plain http only when a
//! setting allows it, for tests and closed networks), without following redirects, and at most
//! [`MAX_JWKS_BYTES`] of it. Anyone who could change the set could sign tokens efms accepts.

use std::time::Duration;

/// The largest JWK set read, in bytes; a provider's set holds a few keys of a few hundred bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a JWK set URL may be plain http.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainHttp {
    /// Only https (the default).
    #[default]
    Refused,
    /// http too (`EFMS_OIDC_JWKS_ALLOW_HTTP=true`).
    Allowed,
}

/// A client for fetching the JWK set at `url`, once the URL's scheme is checked.
pub fn client_for(url: &str, plain_http: PlainHttp) -> Result<reqwest::Client, String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| format!("not a URL: {error}"))?;
    match (parsed.scheme(), plain_http) {
        ("https", _) | ("http", PlainHttp::Allowed) => {}
        ("http", PlainHttp::Refused) => {
            return Err("the JWK set URL must be https (plain http only with \
                 EFMS_OIDC_JWKS_ALLOW_HTTP=true, for tests)"
                .to_owned())
        }
        _ => return Err("the JWK set URL must be https".to_owned()),
    }
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| format!("no HTTP client: {error}"))
}

/// The JWK set at `url` as text: a 2xx answer of at most [`MAX_JWKS_BYTES`]; a redirect is
/// refused, not followed.
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|error| format!("fetching {url}: {error}"))?;
    let status = response.status();
    if status.is_redirection() {
        return Err(format!(
            "{url} answered {status}, a redirect; redirects are not followed: configure the final URL"
        ));
    }
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    let too_big = || format!("{url}: the JWK set is larger than {MAX_JWKS_BYTES} bytes");
    if response
        .content_length()
        .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| format!("reading {url}: {error}"))?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| format!("{url}: the JWK set is not UTF-8"))
}

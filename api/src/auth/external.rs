//! An external identity provider (OIDC): its JWK set, from a file or fetched from a URL (see
//! [`crate::jwks`]) and kept fresh, and the verification of the tokens it issues.

use std::time::Duration;

use efms_domain::{Actor, Role, TenantSlug};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;

use crate::credentials::VerifiedToken;
use crate::error::ApiError;

/// One public key of an identity provider: its `kid`, algorithm and key.
type PublicKey = (Option<String>, Algorithm, DecodingKey);

/// How often a JWK set fetched from a URL is fetched again.
const JWKS_REFRESH: Duration = Duration::from_secs(300);
/// The least time between two fetches caused by tokens naming an unknown key.
const JWKS_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// An external identity provider: its public keys (a JWK set, from a file or fetched from a URL
/// and kept fresh), issuer and audience. Its tokens (RS256, RS384, RS512, ES256, ES384 or
/// PS256…) carry `sub`, `role` (`admin`, `operator`, `viewer` or `auditor`) and `tenant`.
pub struct ExternalIssuer {
    keys: std::sync::RwLock<Vec<PublicKey>>,
    /// Where the JWK set is fetched from, for a provider given by URL.
    source: Option<(reqwest::Client, String)>,
    /// When the JWK set was last fetched (or tried).
    fetched: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// The least time between two fetches caused by tokens naming an unknown key.
    min_interval: Duration,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for ExternalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("source", &self.source.as_ref().map(|(_, url)| url))
            .field("keys", &self.keys.read().map_or(0, |keys| keys.len()))
            .finish_non_exhaustive()
    }
}

/// The usable public keys of a JWK set (JSON), or what is wrong with it.
fn public_keys(jwks: &str) -> Result<Vec<PublicKey>, String> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(jwks).map_err(|error| format!("not a JWK set: {error}"))?;
    let mut keys = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|error| format!("key {index} is not usable: {error}"))?;
        let algorithm = jwk
            .common
            .key_algorithm
            .and_then(|alg| alg.to_string().parse::<Algorithm>().ok())
            .ok_or_else(|| format!("key {index} names no signing algorithm (`alg`)"))?;
        if algorithm.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return Err(format!(
                "key {index} is a shared secret; only public keys are accepted"
            ));
        }
        keys.push((jwk.common.key_id.clone(), algorithm, key));
    }
    if keys.is_empty() {
        return Err("the JWK set holds no key".to_owned());
    }
    Ok(keys)
}

impl ExternalIssuer {
    /// Reads a JWK set (JSON) and checks that every key is usable.
    pub fn from_jwks(jwks: &str, issuer: &str, audience: &str) -> Result<Self, String> {
        let keys = public_keys(jwks)?;
        Self::new(keys, None, issuer, audience)
    }

    /// A provider whose JWK set is fetched from `url` (https; http only when `plain_http` allows
    /// it; see [`crate::jwks`]): at once, every five minutes, and when a token names a key not in
    /// the set (at most every 30 seconds). Until the first fetch succeeds its tokens are refused.
    pub fn from_url(
        url: &str,
        issuer: &str,
        audience: &str,
        plain_http: crate::jwks::PlainHttp,
    ) -> Result<Self, String> {
        let client = crate::jwks::client_for(url, plain_http)?;
        Self::new(Vec::new(), Some((client, url.to_owned())), issuer, audience)
    }

    /// The same provider, fetching its JWK set for unknown keys at most every `interval`
    /// (30 seconds unless set).
    #[must_use]
    pub fn with_min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    fn new(
        keys: Vec<PublicKey>,
        source: Option<(reqwest::Client, String)>,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, String> {
        if issuer.is_empty() || audience.is_empty() {
            return Err("an issuer and an audience are required".to_owned());
        }
        Ok(Self {
            keys: std::sync::RwLock::new(keys),
            source,
            fetched: tokio::sync::Mutex::default(),
            min_interval: JWKS_MIN_INTERVAL,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// Fetches the JWK set again, for a provider given by URL; on failure the keys stay as they
    /// were. Returns how many keys it holds.
    pub async fn refresh(&self) -> Result<usize, String> {
        let Some((client, url)) = &self.source else {
            return Ok(self.keys.read().map_or(0, |keys| keys.len()));
        };
        *self.fetched.lock().await = Some(std::time::Instant::now());
        let text = crate::jwks::fetch(client, url).await?;
        let keys = public_keys(&text).map_err(|error| format!("{url}: {error}"))?;
        let count = keys.len();
        *self.keys.write().expect("identity provider keys lock") = keys;
        Ok(count)
    }

    /// Fetches the JWK set again unless that was done within the least interval; whether it
    /// was fetched.
    pub(super) async fn refresh_if_due(&self) -> bool {
        if self.source.is_none() {
            return false;
        }
        let due = self
            .fetched
            .lock()
            .await
            .is_none_or(|at| at.elapsed() >= self.min_interval);
        if !due {
            return false;
        }
        match self.refresh().await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "the identity provider's keys could not be fetched");
                false
            }
        }
    }

    /// For a provider given by URL: fetches its JWK set now and every five minutes (retrying
    /// sooner after a failure), for as long as the runtime runs.
    pub(super) fn keep_fresh(self: &std::sync::Arc<Self>) {
        if self.source.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let issuer = std::sync::Arc::downgrade(self);
        runtime.spawn(async move {
            let mut failures: u32 = 0;
            while let Some(issuer) = issuer.upgrade() {
                let pause = match issuer.refresh().await {
                    Ok(count) => {
                        tracing::info!(keys = count, "fetched the identity provider's keys");
                        failures = 0;
                        JWKS_REFRESH
                    }
                    Err(error) => {
                        tracing::error!(%error, "the identity provider's keys could not be fetched; its tokens are refused until they are");
                        failures = failures.saturating_add(1);
                        Duration::from_secs(u64::from(failures.min(60)))
                    }
                };
                drop(issuer);
                tokio::time::sleep(pause).await;
            }
        });
    }

    /// Whether the token's header names a key this provider does not (yet) have.
    pub(super) fn lacks_key(&self, header: &Header) -> bool {
        !self.keys.read().is_ok_and(|keys| {
            keys.iter().any(|(kid, algorithm, _)| {
                *algorithm == header.alg && (header.kid.is_none() || *kid == header.kid)
            })
        })
    }
    /// Verifies a token of this provider (its header already read): the caller it speaks for.
    pub(super) fn verify(&self, token: &str, header: &Header) -> Result<VerifiedToken, ApiError> {
        let keys = self
            .keys
            .read()
            .map_err(|_| refused("the identity provider's keys are unavailable"))?;
        let (_, algorithm, key) = keys
            .iter()
            .find(|(kid, algorithm, _)| {
                *algorithm == header.alg && (header.kid.is_none() || *kid == header.kid)
            })
            .ok_or_else(|| refused("no key of the identity provider matches it"))?;
        let mut validation = Validation::new(*algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<ExternalClaims>(token, key, &validation)
            .map_err(|error| refused(&error.to_string()))?
            .claims;
        if !matches!(
            claims.role,
            Role::Admin | Role::Operator | Role::Viewer | Role::Auditor
        ) {
            return Err(refused(&format!(
                "an identity provider grants `admin`, `operator`, `viewer` or `auditor`, not `{}`",
                claims.role
            )));
        }
        claims
            .role
            .check_tenant(claims.tenant.as_deref())
            .map_err(ApiError::Unauthorized)?;
        let tenant = claims
            .tenant
            .map(TenantSlug::parse)
            .transpose()
            .map_err(|error| refused(&format!("the token's tenant: {error}")))?;
        if claims.sub.is_empty() {
            return Err(refused("the token has no subject"));
        }
        Ok(VerifiedToken {
            actor: Actor {
                subject: claims.sub,
                role: claims.role,
                tenant,
            },
            user: None,
            proxy: None,
            expires_at: claims.exp,
        })
    }
}

/// The claims of an external identity provider's token.
#[derive(Debug, Deserialize)]
struct ExternalClaims {
    sub: String,
    role: Role,
    tenant: Option<String>,
    exp: i64,
}

/// A refusal of a bearer token, saying why.
pub(super) fn refused(reason: &str) -> ApiError {
    ApiError::Unauthorized(format!("the bearer token is not valid: {reason}"))
}

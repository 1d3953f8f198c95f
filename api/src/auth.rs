//! Authentication (NFR-SE-001, NFR-SE-002): HS256 bearer tokens with a role and, for tenant roles,
//! the tenant they are granted in.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use efms_domain::{Actor, Role, TenantSlug};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::credentials::{ProxyBinding, VerifiedToken};
use crate::error::ApiError;
pub use crate::ttl::parse_ttl;

/// The issuer and audience every token carries.
pub const ISSUER: &str = "efms";

/// The shortest secret accepted, in bytes: HS256 is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 32;

/// The claims of an efms token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token speaks for.
    pub sub: String,
    /// The role it grants.
    pub role: Role,
    /// The tenant slug a tenant role is granted in; absent for `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The user or service account the token was issued to, when it was; a deleted one's
    /// tokens are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<uuid::Uuid>,
    /// The generation of the user's role and password the token was issued in; a change of
    /// either refuses the tokens of earlier generations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i32>,
    /// A proxy token's id, by which it is listed and revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<uuid::Uuid>,
    /// The group a proxy token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Issuer (`efms`).
    pub iss: String,
    /// Audience (`efms`).
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expires at.
    pub exp: i64,
}

/// The user a token was issued to, and the generation of its role and password then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenUser {
    /// The user or service account.
    pub uid: uuid::Uuid,
    /// Its generation when the token was issued.
    pub generation: i32,
}

/// Signs and verifies tokens with the installation's secret, and verifies the tokens of an
/// external identity provider when one is configured.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    external: Option<std::sync::Arc<ExternalIssuer>>,
}

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
    async fn refresh_if_due(&self) -> bool {
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
    fn keep_fresh(self: &std::sync::Arc<Self>) {
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
    fn lacks_key(&self, header: &Header) -> bool {
        !self.keys.read().is_ok_and(|keys| {
            keys.iter().any(|(kid, algorithm, _)| {
                *algorithm == header.alg && (header.kid.is_none() || *kid == header.kid)
            })
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

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

impl JwtKeys {
    /// Keys from a shared secret (at least [`MIN_SECRET_BYTES`] long; the caller checks).
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            external: None,
        }
    }

    /// The same keys, also accepting the tokens of `issuer`.
    #[must_use]
    pub fn with_external(mut self, issuer: std::sync::Arc<ExternalIssuer>) -> Self {
        issuer.keep_fresh();
        self.external = Some(issuer);
        self
    }

    /// Verifies a token like [`JwtKeys::verify_token`]; a token of the identity provider that
    /// names a key not in its JWK set makes it fetch the set again (at most every 30 seconds),
    /// so that a rotated key is accepted as soon as the provider publishes it.
    pub async fn verify_token_fetching(&self, token: &str) -> Result<VerifiedToken, ApiError> {
        let result = self.verify_token(token);
        if result.is_err() {
            if let (Some(external), Ok(header)) =
                (&self.external, jsonwebtoken::decode_header(token))
            {
                if header.alg != Algorithm::HS256
                    && external.lacks_key(&header)
                    && external.refresh_if_due().await
                {
                    return self.verify_token(token);
                }
            }
        }
        result
    }

    /// Verifies a token of the external identity provider.
    fn verify_external(&self, token: &str, header: &Header) -> Result<VerifiedToken, ApiError> {
        let refused = |reason: String| {
            ApiError::Unauthorized(format!("the bearer token is not valid: {reason}"))
        };
        let external = self
            .external
            .as_ref()
            .ok_or_else(|| refused(format!("{:?} tokens are not accepted here", header.alg)))?;
        let keys = external
            .keys
            .read()
            .map_err(|_| refused("the identity provider's keys are unavailable".to_owned()))?;
        let (_, algorithm, key) = keys
            .iter()
            .find(|(kid, algorithm, _)| {
                *algorithm == header.alg && (header.kid.is_none() || *kid == header.kid)
            })
            .ok_or_else(|| refused("no key of the identity provider matches it".to_owned()))?;
        let mut validation = Validation::new(*algorithm);
        validation.set_issuer(&[&external.issuer]);
        validation.set_audience(&[&external.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<ExternalClaims>(token, key, &validation)
            .map_err(|error| refused(error.to_string()))?
            .claims;
        if !matches!(
            claims.role,
            Role::Admin | Role::Operator | Role::Viewer | Role::Auditor
        ) {
            return Err(refused(format!(
                "an identity provider grants `admin`, `operator`, `viewer` or `auditor`, not `{}`",
                claims.role
            )));
        }
        check_role_tenant(claims.role, claims.tenant.as_deref()).map_err(ApiError::Unauthorized)?;
        let tenant = claims
            .tenant
            .map(TenantSlug::parse)
            .transpose()
            .map_err(|error| refused(format!("the token's tenant: {error}")))?;
        if claims.sub.is_empty() {
            return Err(refused("the token has no subject".to_owned()));
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

    /// Issues a token for `subject` with `role` (in `tenant` for tenant roles), valid for `ttl`.
    pub fn issue(
        &self,
        subject: &str,
        role: Role,
        tenant: Option<&TenantSlug>,
        ttl: Duration,
    ) -> Result<String, String> {
        self.sign(subject, role, tenant, (None, None), ttl)
    }

    /// Issues a `proxy` token of `tenant` for `subject`, bound to `binding`, valid for `ttl`.
    pub fn issue_proxy(
        &self,
        subject: &str,
        tenant: &TenantSlug,
        binding: ProxyBinding,
        ttl: Duration,
    ) -> Result<String, String> {
        self.sign(
            subject,
            Role::Proxy,
            Some(tenant),
            (None, Some(binding)),
            ttl,
        )
    }

    fn sign(
        &self,
        subject: &str,
        role: Role,
        tenant: Option<&TenantSlug>,
        (user, proxy): (Option<TokenUser>, Option<ProxyBinding>),
        ttl: Duration,
    ) -> Result<String, String> {
        check_role_tenant(role, tenant.map(TenantSlug::as_str))?;
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(ttl.as_secs()).map_err(|_| "the TTL is too long".to_owned())?;
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            tenant: tenant.map(ToString::to_string),
            uid: user.map(|user| user.uid),
            generation: user.map(|user| user.generation),
            jti: proxy.as_ref().map(|proxy| proxy.token_id),
            group: proxy.map(|proxy| proxy.group),
            iss: ISSUER.to_owned(),
            aud: ISSUER.to_owned(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| format!("cannot sign the token: {error}"))
    }

    /// Verifies a token and returns the actor it speaks for.
    pub fn verify(&self, token: &str) -> Result<Actor, ApiError> {
        self.verify_user(token).map(|(actor, _)| actor)
    }

    /// Issues a token for `user` of `tenant`, with `role`, valid for `ttl`.
    pub fn issue_for_user(
        &self,
        subject: &str,
        role: Role,
        tenant: &TenantSlug,
        user: TokenUser,
        ttl: Duration,
    ) -> Result<String, String> {
        self.sign(subject, role, Some(tenant), (Some(user), None), ttl)
    }

    /// Verifies a token: the caller, and the user it was issued to, if any.
    pub fn verify_user(&self, token: &str) -> Result<(Actor, Option<TokenUser>), ApiError> {
        self.verify_token(token)
            .map(|token| (token.actor, token.user))
    }

    /// Verifies a token: the caller, what can withdraw the token, and when it expires.
    pub fn verify_token(&self, token: &str) -> Result<VerifiedToken, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            ApiError::Unauthorized(format!("the bearer token is not valid: {error}"))
        })?;
        if header.alg != Algorithm::HS256 {
            return self.verify_external(token, &header);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| {
                ApiError::Unauthorized(format!("the bearer token is not valid: {error}"))
            })?;
        let claims = data.claims;
        let user = claims.uid.map(|uid| TokenUser {
            uid,
            generation: claims.generation.unwrap_or_default(),
        });
        check_role_tenant(claims.role, claims.tenant.as_deref()).map_err(ApiError::Unauthorized)?;
        let tenant = claims
            .tenant
            .map(TenantSlug::parse)
            .transpose()
            .map_err(|error| ApiError::Unauthorized(format!("the token's tenant: {error}")))?;
        if claims.sub.is_empty() {
            return Err(ApiError::Unauthorized(
                "the token has no subject".to_owned(),
            ));
        }
        let proxy = match (claims.role, claims.jti, claims.group) {
            (Role::Proxy, Some(token_id), Some(group)) => Some(ProxyBinding { token_id, group }),
            _ => None,
        };
        Ok(VerifiedToken {
            actor: Actor {
                subject: claims.sub,
                role: claims.role,
                tenant,
            },
            user,
            proxy,
            expires_at: claims.exp,
        })
    }
}

fn check_role_tenant(role: Role, tenant: Option<&str>) -> Result<(), String> {
    match (role.is_tenant_role(), tenant) {
        (true, None) => Err(format!(
            "role `{role}` is granted within a tenant: name one"
        )),
        (false, Some(_)) => Err("role `system` belongs to no tenant".to_owned()),
        _ => Ok(()),
    }
}

/// Middleware for `/api/v1`: refuses requests without a valid bearer token (401 problem+json) and
/// hands the [`Principal`] to the handlers.
pub async fn require_bearer(
    State(state): State<crate::app::AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let keys = &state.jwt;
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("this route needs a bearer token".to_owned()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must read `Bearer <token>`".to_owned())
        })?;
    let verified = keys.verify_token_fetching(token).await?;
    crate::credentials::refuse_withdrawn(&state.pool, &verified).await?;
    let actor = verified.actor;
    if actor.role == Role::Proxy {
        return Err(ApiError::Forbidden(
            "a `proxy` token only streams configuration over xDS".to_owned(),
        ));
    }
    request.extensions_mut().insert(Principal(actor));
    Ok(next.run(request).await)
}

/// The authenticated caller of an `/api/v1` route.
#[derive(Debug, Clone)]
pub struct Principal(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("this route needs a bearer token".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> JwtKeys {
        JwtKeys::from_secret(&[7; 32])
    }

    #[test]
    fn issued_token_verifies_to_the_same_actor() {
        let acme = TenantSlug::parse("acme").unwrap();
        let token = keys()
            .issue("ops", Role::Operator, Some(&acme), Duration::from_secs(60))
            .unwrap();
        let actor = keys().verify(&token).unwrap();
        assert_eq!(actor.subject, "ops");
        assert_eq!(actor.role, Role::Operator);
        assert_eq!(actor.tenant, Some(acme));
    }

    #[test]
    fn token_signed_with_another_secret_is_refused() {
        let token = JwtKeys::from_secret(&[8; 32])
            .issue("ops", Role::System, None, Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            keys().verify(&token),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn unsigned_token_is_refused() {
        // {"alg":"none"} with valid-looking claims and no signature.
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let claims = "eyJzdWIiOiJ4Iiwicm9sZSI6InN5c3RlbSIsImlzcyI6ImVmbXMiLCJhdWQiOiJlZm1zIiwiaWF0IjowLCJuYmYiOjAsImV4cCI6OTk5OTk5OTk5OX0";
        assert!(keys().verify(&format!("{header}.{claims}.")).is_err());
    }

    #[test]
    fn tenant_role_without_tenant_cannot_be_issued() {
        assert!(keys()
            .issue("x", Role::Admin, None, Duration::from_secs(60))
            .is_err());
        let acme = TenantSlug::parse("acme").unwrap();
        assert!(keys()
            .issue("x", Role::System, Some(&acme), Duration::from_secs(60))
            .is_err());
    }
}

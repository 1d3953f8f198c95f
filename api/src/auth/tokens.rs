//! efms's own tokens (NFR-SE-001, NFR-SE-002): HS256 bearer tokens with a role and, for tenant
//! roles, the tenant they are granted in; their claims, signing and verification. Tokens of an
//! external identity provider are verified by [`super::external`].

use std::time::Duration;

use efms_domain::{Actor, Role, TenantSlug};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::external::{refused, ExternalIssuer};
use crate::credentials::{ProxyBinding, VerifiedToken};
use crate::error::ApiError;

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
    pub(super) encoding: EncodingKey,
    pub(super) decoding: DecodingKey,
    validation: Validation,
    external: Option<std::sync::Arc<ExternalIssuer>>,
    /// Seals the event feed's cursors, under a key derived from the same secret.
    cursors: efms_domain::feed::CursorSeal,
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
            cursors: efms_domain::feed::CursorSeal::from_secret(secret),
        }
    }

    /// What seals the event feed's cursors (every replica sharing the secret opens them).
    pub fn cursors(&self) -> &efms_domain::feed::CursorSeal {
        &self.cursors
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
        let external = self
            .external
            .as_ref()
            .ok_or_else(|| refused(&format!("{:?} tokens are not accepted here", header.alg)))?;
        external.verify(token, header)
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
        role.check_tenant(tenant.map(TenantSlug::as_str))?;
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
        claims
            .role
            .check_tenant(claims.tenant.as_deref())
            .map_err(ApiError::Unauthorized)?;
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

//! What a verified token says beyond its caller: what can withdraw it (its user, or its proxy token
//! id) and when it expires. The HTTP API checks it on every request, the xDS server when a stream
//! opens and then every few seconds while it is open, with the same rule
//! ([`efms_commands::credentials`]).

use std::sync::Arc;
use std::time::Duration;

use efms_commands::credentials::{withdrawn, Revocable};
use efms_commands::Scope;
use efms_domain::Actor;
use sqlx::PgPool;

use crate::auth::{JwtKeys, TokenUser};
use crate::error::ApiError;
use crate::settings::invalid::ConfigError;
use crate::ttl::parse_ttl;

/// What a proxy token of a bootstrap is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyBinding {
    /// The token's id (`jti`), by which it is listed and revoked.
    pub token_id: uuid::Uuid,
    /// The group whose configuration it streams, and no other.
    pub group: String,
}

/// A token whose signature, issuer, audience and times were checked.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// Who it speaks for.
    pub actor: Actor,
    /// The user or service account it was issued to, if any.
    pub user: Option<TokenUser>,
    /// For a bootstrap's proxy token: its id and group.
    pub proxy: Option<ProxyBinding>,
    /// When it expires (seconds since the epoch).
    pub expires_at: i64,
}

impl VerifiedToken {
    /// What can withdraw the token before it expires: its user, or its proxy token id.
    pub fn revocable(&self) -> Option<Revocable> {
        let tenant_id = self.actor.tenant.as_ref()?.tenant_id();
        if let Some(user) = self.user {
            return Some(Revocable::User {
                tenant_id,
                user_id: user.uid,
                generation: user.generation,
            });
        }
        self.proxy.as_ref().map(|proxy| Revocable::ProxyToken {
            tenant_id,
            token_id: proxy.token_id,
        })
    }
}

/// Refuses (401) a token whose user was deleted or changed, or whose proxy token was revoked.
pub async fn refuse_withdrawn(pool: &PgPool, token: &VerifiedToken) -> Result<(), ApiError> {
    let Some(revocable) = token.revocable() else {
        return Ok(());
    };
    match withdrawn(pool, Scope::Tenant(revocable.tenant_id()), revocable).await? {
        Some(reason) => Err(ApiError::Unauthorized(reason.to_string())),
        None => Ok(()),
    }
}

/// The xDS server's authenticator: verifies a stream's token with `keys` and hands over what the
/// server re-checks while the stream is open.
pub fn xds_authenticator(keys: JwtKeys) -> efms_xds::Authenticator {
    Arc::new(move |token: &str| {
        let token = keys
            .verify_token(token)
            .map_err(|error| error.to_string())?;
        Ok(efms_xds::identity::Credentials {
            revocable: token.revocable(),
            expires_at: chrono::DateTime::from_timestamp(token.expires_at, 0),
            group: token.proxy.map(|proxy| proxy.group),
            actor: token.actor,
        })
    })
}

/// The lifetimes of the proxy tokens bootstraps mint, and how often open xDS streams are checked
/// against deleted users and revoked tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSettings {
    /// A bootstrap's token lifetime when its `token_ttl` is not given.
    pub proxy_ttl: Duration,
    /// The longest `token_ttl` a bootstrap accepts.
    pub proxy_max_ttl: Duration,
    /// How often the xDS server re-checks the users and proxy tokens of open streams.
    pub recheck_interval: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            proxy_ttl: Duration::from_secs(30 * 86_400),
            proxy_max_ttl: Duration::from_secs(365 * 86_400),
            recheck_interval: efms_xds::DEFAULT_RECHECK,
        }
    }
}

/// The longest proxy token lifetime an installation may allow.
const MAX_PROXY_TOKEN_TTL: Duration = Duration::from_secs(3650 * 86_400);
/// The longest re-check interval.
const MAX_RECHECK: Duration = Duration::from_secs(3600);

impl TokenSettings {
    /// Checks the settings `EFMS_PROXY_TOKEN_TTL`, `EFMS_PROXY_TOKEN_MAX_TTL` (the default at most
    /// the maximum, the maximum at most 3650d) and `EFMS_XDS_CREDENTIAL_RECHECK` (at most 1h).
    pub fn from_settings(ttl: &str, max_ttl: &str, recheck: &str) -> Result<Self, ConfigError> {
        const TTL: &str = "EFMS_PROXY_TOKEN_TTL (--proxy-token-ttl)";
        const MAX: &str = "EFMS_PROXY_TOKEN_MAX_TTL (--proxy-token-max-ttl)";
        const RECHECK: &str = "EFMS_XDS_CREDENTIAL_RECHECK (--xds-credential-recheck)";
        let invalid = |setting: &'static str, reason: String| ConfigError { setting, reason };
        let parse = |setting: &'static str, text: &str| {
            parse_ttl(text).map_err(|reason| invalid(setting, reason))
        };
        let proxy_max_ttl = parse(MAX, max_ttl)?;
        if proxy_max_ttl > MAX_PROXY_TOKEN_TTL {
            return Err(invalid(MAX, format!("`{max_ttl}` is over 3650d")));
        }
        let proxy_ttl = parse(TTL, ttl)?;
        if proxy_ttl > proxy_max_ttl {
            return Err(invalid(
                TTL,
                format!("`{ttl}` is longer than EFMS_PROXY_TOKEN_MAX_TTL (`{max_ttl}`)"),
            ));
        }
        let recheck_interval = parse(RECHECK, recheck)?;
        if recheck_interval > MAX_RECHECK {
            return Err(invalid(RECHECK, format!("`{recheck}` is over 1h")));
        }
        Ok(Self {
            proxy_ttl,
            proxy_max_ttl,
            recheck_interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_parse_and_each_bad_setting_is_named() {
        assert_eq!(
            TokenSettings::from_settings("30d", "365d", "5s"),
            Ok(TokenSettings::default())
        );
        let setting = |ttl, max, recheck| {
            TokenSettings::from_settings(ttl, max, recheck)
                .unwrap_err()
                .setting
        };
        assert_eq!(
            setting("400d", "365d", "5s"),
            "EFMS_PROXY_TOKEN_TTL (--proxy-token-ttl)"
        );
        assert_eq!(
            setting("30d", "3651d", "5s"),
            "EFMS_PROXY_TOKEN_MAX_TTL (--proxy-token-max-ttl)"
        );
        assert_eq!(
            setting("30d", "365d", "soon"),
            "EFMS_XDS_CREDENTIAL_RECHECK (--xds-credential-recheck)"
        );
        assert_eq!(
            setting("30d", "365d", "2h"),
            "EFMS_XDS_CREDENTIAL_RECHECK (--xds-credential-recheck)"
        );
    }
}

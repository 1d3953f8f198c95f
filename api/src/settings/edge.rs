//! Settings of the HTTP listener's limits, the login throttle and the identity provider's JWK
//! set URL: what bounds the work and memory an unauthenticated client can cause.

use clap::Args;

use super::{invalid, ConfigError};
use crate::connections::HttpLimits;
use crate::jwks::PlainHttp;
use crate::login_throttle::ThrottleLimits;

/// Limits on the edge of `efms serve`.
#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// How long a client may take to send a request's header, from its first byte (such as 10s).
    #[arg(long, env = "EFMS_HTTP_HEADER_TIMEOUT", default_value = "10s")]
    pub http_header_timeout: String,
    /// How long a connection may stay silent with no request being answered, and the longest
    /// pause within a request body (such as 60s).
    #[arg(long, env = "EFMS_HTTP_IDLE_TIMEOUT", default_value = "60s")]
    pub http_idle_timeout: String,
    /// Most HTTP connections served at once; one more is closed at once.
    #[arg(long, env = "EFMS_HTTP_MAX_CONNECTIONS", default_value = "1024")]
    pub http_max_connections: String,
    /// Failed logins allowed per client address (an IPv6 /64) and minute, whatever the names.
    #[arg(long, env = "EFMS_LOGIN_FAILURES_PER_ADDRESS", default_value = "30")]
    pub login_failures_per_address: String,
    /// Most user names and addresses the login throttle keeps; when it is full of recent
    /// failures, logins of others answer 429 until some expire.
    #[arg(long, env = "EFMS_LOGIN_THROTTLE_ENTRIES", default_value = "50000")]
    pub login_throttle_entries: String,
    /// Accept a plain http EFMS_OIDC_JWKS_URL (`true`; for tests and closed networks only).
    #[arg(long, env = "EFMS_OIDC_JWKS_ALLOW_HTTP", default_value = "false")]
    pub oidc_jwks_allow_http: String,
}

/// Checked limits on the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeConfig {
    /// The HTTP listener's timeouts and connection limit.
    pub http: HttpLimits,
    /// The login throttle's limits.
    pub login: ThrottleLimits,
    /// Whether the JWK set URL may be plain http.
    pub jwks_plain_http: PlainHttp,
}

fn number(
    setting: &'static str,
    value: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            invalid(
                setting,
                format!(
                    "`{value}` is not a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

fn timeout(setting: &'static str, value: &str) -> Result<std::time::Duration, ConfigError> {
    crate::auth::parse_ttl(value)
        .ok()
        .filter(|duration| duration.as_secs() <= 3600)
        .ok_or_else(|| {
            invalid(
                setting,
                format!("`{value}` is not a duration from 1s to 1h, such as 10s or 2m"),
            )
        })
}

impl EdgeArgs {
    /// Whether the JWK set URL may be plain http.
    pub fn jwks_plain_http(&self) -> Result<PlainHttp, ConfigError> {
        match self.oidc_jwks_allow_http.as_str() {
            "false" | "" => Ok(PlainHttp::Refused),
            "true" => Ok(PlainHttp::Allowed),
            other => Err(invalid(
                "EFMS_OIDC_JWKS_ALLOW_HTTP (--oidc-jwks-allow-http)",
                format!("`{other}` is neither `true` nor `false`"),
            )),
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<EdgeConfig, ConfigError> {
        let http = HttpLimits {
            header_timeout: timeout(
                "EFMS_HTTP_HEADER_TIMEOUT (--http-header-timeout)",
                &self.http_header_timeout,
            )?,
            idle_timeout: timeout(
                "EFMS_HTTP_IDLE_TIMEOUT (--http-idle-timeout)",
                &self.http_idle_timeout,
            )?,
            max_connections: number(
                "EFMS_HTTP_MAX_CONNECTIONS (--http-max-connections)",
                &self.http_max_connections,
                1..=1_000_000,
            )?,
        };
        let login = ThrottleLimits {
            per_address: number(
                "EFMS_LOGIN_FAILURES_PER_ADDRESS (--login-failures-per-address)",
                &self.login_failures_per_address,
                1..=1_000_000,
            )?,
            max_entries: number(
                "EFMS_LOGIN_THROTTLE_ENTRIES (--login-throttle-entries)",
                &self.login_throttle_entries,
                100..=10_000_000,
            )?,
            ..ThrottleLimits::default()
        };
        Ok(EdgeConfig {
            http,
            login,
            jwks_plain_http: self.jwks_plain_http()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> EdgeArgs {
        EdgeArgs {
            http_header_timeout: "10s".to_owned(),
            http_idle_timeout: "60s".to_owned(),
            http_max_connections: "1024".to_owned(),
            login_failures_per_address: "30".to_owned(),
            login_throttle_entries: "50000".to_owned(),
            oidc_jwks_allow_http: "false".to_owned(),
        }
    }

    #[test]
    fn the_defaults_are_the_documented_limits() {
        let config = defaults().validate().unwrap();
        assert_eq!(config.http, HttpLimits::default());
        assert_eq!(config.login, ThrottleLimits::default());
        assert_eq!(config.jwks_plain_http, PlainHttp::Refused);
    }

    #[test]
    fn a_bad_limit_names_its_setting() {
        let mut args = defaults();
        args.http_header_timeout = "0s".to_owned();
        assert_eq!(
            args.validate().unwrap_err().setting,
            "EFMS_HTTP_HEADER_TIMEOUT (--http-header-timeout)"
        );
        let mut args = defaults();
        args.http_max_connections = "0".to_owned();
        assert_eq!(
            args.validate().unwrap_err().setting,
            "EFMS_HTTP_MAX_CONNECTIONS (--http-max-connections)"
        );
        let mut args = defaults();
        args.oidc_jwks_allow_http = "yes".to_owned();
        assert_eq!(
            args.validate().unwrap_err().setting,
            "EFMS_OIDC_JWKS_ALLOW_HTTP (--oidc-jwks-allow-http)"
        );
    }
}

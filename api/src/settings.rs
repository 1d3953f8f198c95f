//! The process settings from flags and environment (DPL-CM-001), checked before anything starts
//! (DPL-CM-003): a bad setting stops the process with a message that names it. (Not to be
//! confused with the Envoy configuration that `efms_domain::config` models.)

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sqlx::postgres::PgConnectOptions;

use crate::auth::MIN_SECRET_BYTES;

mod agent;
mod alerts;
mod edge;
mod fleet;
pub mod invalid;
mod maintenance;
mod read_replica;
mod replica;
mod secret_files;
mod telemetry;
mod webhooks;

pub use agent::{AgentArgs, AgentConfig};
pub use alerts::AlertArgs;
pub use edge::{EdgeArgs, EdgeConfig};
pub use fleet::FleetArgs;
pub(crate) use invalid::invalid;
pub use invalid::ConfigError;
pub use maintenance::{ReplayArgs, RotateArgs};
pub use read_replica::{ReadReplicaArgs, ReadReplicaConfig};
pub use replica::ReplicaArgs;
pub use telemetry::TelemetryArgs;
pub use webhooks::WebhookArgs;

/// The local Postgres of a development machine.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/efms";

/// efms: the Envoy Fleet Manager control plane.
#[derive(Debug, Parser)]
#[command(name = "efms", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the gRPC server (applies pending migrations first).
    Serve(Box<ServeArgs>),
    /// Create the database if it is missing and apply pending migrations, then exit.
    Migrate(DatabaseArgs),
    /// Print a signed access token (JWT, HS256 with EFMS_JWT_SECRET).
    Token(TokenArgs),
    /// Re-wrap every tenant data key under a new master key (key rotation); then serve with the
    /// new key as EFMS_MASTER_KEY.
    RotateMasterKey(RotateArgs),
    /// Run the fleet agent of this VM: report its Docker engine and host to the control plane.
    Agent(AgentArgs),
    /// Rebuild every read model from the log (of all tenants, or of one with --tenant), while
    /// servers keep running: readers see the old rows until the new ones are complete.
    Replay(ReplayArgs),
    /// Check every read model against the log (after a restore, say): each is rebuilt in a
    /// transaction rolled back once its rows are compared with the ones kept. Exits 1, naming
    /// them, when any differs; changes nothing.
    Verify(DatabaseArgs),
    /// Ask the server on this host whether it is ready (`/readyz`, over TLS when EFMS_TLS_CERT is
    /// set): a container's health check. Exits 0 when it is, 1 saying why not.
    Probe(crate::probe::ProbeArgs),
}

/// Where the database is.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL; the database is created when it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// A file holding the database user's password (a container secret, say), instead of a
    /// password in DATABASE_URL.
    #[arg(long, env = "EFMS_DATABASE_PASSWORD_FILE")]
    pub database_password_file: Option<String>,
    /// Most connections the pool opens.
    #[arg(long, env = "EFMS_DB_MAX_CONNECTIONS", default_value = "20")]
    pub db_max_connections: String,
}

/// `efms serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address the HTTP API listens on.
    #[arg(long, env = "EFMS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Address the gRPC (xDS) server listens on.
    #[arg(long, env = "EFMS_GRPC_ADDR", default_value = "127.0.0.1:18000")]
    pub grpc_addr: String,
    /// `host:port` proxies dial for xDS, written into the bootstraps the API hands out (default:
    /// EFMS_GRPC_ADDR, with 0.0.0.0 read as 127.0.0.1).
    #[arg(long, env = "EFMS_XDS_ADVERTISE_ADDR")]
    pub xds_advertise_addr: Option<String>,
    /// Secret that signs and verifies access tokens (at least 32 bytes).
    #[arg(long, env = "EFMS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// A file holding EFMS_JWT_SECRET (a container secret, say), instead of the variable.
    #[arg(long, env = "EFMS_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<String>,
    /// Key that wraps the tenants' data keys for secret material (base64 of 32 random bytes).
    #[arg(long, env = "EFMS_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// A file holding EFMS_MASTER_KEY, instead of the variable.
    #[arg(long, env = "EFMS_MASTER_KEY_FILE")]
    pub master_key_file: Option<String>,
    /// PEM certificate chain: with EFMS_TLS_KEY, HTTP and gRPC listen with TLS 1.3 only.
    #[arg(long, env = "EFMS_TLS_CERT")]
    pub tls_cert: Option<String>,
    /// PEM private key of EFMS_TLS_CERT.
    #[arg(long, env = "EFMS_TLS_KEY")]
    pub tls_key: Option<String>,
    /// A JWK set (JSON file) of an external identity provider whose tokens are accepted.
    #[arg(long, env = "EFMS_OIDC_JWKS_FILE")]
    pub oidc_jwks_file: Option<String>,
    /// Or the URL of that JWK set (https), fetched at start, every five minutes, and when a
    /// token names a key not in it.
    #[arg(long, env = "EFMS_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// The `iss` the identity provider's tokens must carry.
    #[arg(long, env = "EFMS_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The `aud` the identity provider's tokens must carry.
    #[arg(long, env = "EFMS_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// Log format: `json` (default) or `text`.
    #[arg(long, env = "EFMS_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// How often projections poll the log when no commit notification arrives, in milliseconds.
    #[arg(long, env = "EFMS_POLL_INTERVAL_MS", default_value = "250")]
    pub poll_interval_ms: String,
    /// Lifetime of the proxy tokens bootstraps mint when they name none (`token_ttl`).
    #[arg(long, env = "EFMS_PROXY_TOKEN_TTL", default_value = "30d")]
    pub proxy_token_ttl: String,
    /// The longest `token_ttl` a bootstrap may ask for.
    #[arg(long, env = "EFMS_PROXY_TOKEN_MAX_TTL", default_value = "365d")]
    pub proxy_token_max_ttl: String,
    /// How often open xDS streams are checked against deleted or changed users and revoked proxy
    /// tokens, such as 5s.
    #[arg(long, env = "EFMS_XDS_CREDENTIAL_RECHECK", default_value = "5s")]
    pub xds_credential_recheck: String,
    /// Timeouts, connection and login limits.
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// Limits on what requests write and run.
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,
    /// A JSON file of settings read again on SIGHUP or when it changes: `{"log": "<filter>"}`
    /// (the log filter, as EFMS_LOG takes it, which it overrides).
    #[arg(long, env = "EFMS_SETTINGS_FILE")]
    pub settings_file: Option<String>,
    /// How long a deleted tenant is kept, restorable, before it is purged for good, such as 7d.
    #[arg(long, env = "EFMS_TENANT_PURGE_GRACE", default_value = "7d")]
    pub tenant_purge_grace: String,
    /// Agents' heartbeats and samples.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// The proxies' statistics.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// This replica's lease on its proxies' streams.
    #[command(flatten)]
    pub replica: ReplicaArgs,
    /// The read replica.
    #[command(flatten)]
    pub read_replica: ReadReplicaArgs,
    /// The webhooks' deliveries.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// The alert rules' evaluation.
    #[command(flatten)]
    pub alerts: AlertArgs,
}

/// `efms token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Role: system, admin, operator, viewer or auditor.
    #[arg(long)]
    pub role: String,
    /// Tenant slug (required for every role but system).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Who the token speaks for.
    #[arg(long, default_value = "efms-cli")]
    pub subject: String,
    /// Lifetime, such as 90s, 30m, 1h or 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Secret that signs the token (at least 32 bytes).
    #[arg(long, env = "EFMS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Checked database settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Connection options.
    pub options: PgConnectOptions,
    /// Pool size.
    pub max_connections: u32,
}

/// Checked settings of `efms serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Database settings.
    pub database: DatabaseConfig,
    /// The read replica, if reads may go to one.
    pub read_replica: Option<ReadReplicaConfig>,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// The xDS address bootstraps name, when not derived from `grpc_addr`: host and port.
    pub xds_advertise_addr: Option<(String, u16)>,
    /// Token secret.
    pub jwt_secret: Vec<u8>,
    /// The master key of secret material.
    pub master_key: efms_domain::secrets::Key,
    /// The TLS certificate and key, when the listeners speak TLS 1.3.
    pub tls: Option<efms_xds::tls::TlsIdentity>,
    /// The files they were read from (certificate, key), read again on SIGHUP or a change.
    pub tls_files: Option<(String, String)>,
    /// The settings file, read at start and again on SIGHUP or a change.
    pub settings_file: Option<String>,
    /// The external identity provider whose tokens are accepted, if any.
    pub oidc: Option<std::sync::Arc<crate::auth::ExternalIssuer>>,
    /// Log format.
    pub log_format: LogFormat,
    /// Projection polling interval.
    pub poll_interval: Duration,
    /// Proxy token lifetimes and the xDS credential re-check interval.
    pub tokens: crate::credentials::TokenSettings,
    /// Timeouts, connection and login limits.
    pub edge: EdgeConfig,
    /// Limits on what requests write and run.
    pub limits: crate::limits::WriteLimits,
    /// How deleted tenants are kept before their purge.
    pub tenant_purge: efms_commands::tenant_purge::PurgeSettings,
    /// Agents' heartbeats and samples.
    pub fleet: efms_commands::fleet::upkeep::UpkeepSettings,
    /// The proxies' statistics.
    pub telemetry: efms_xds::TelemetrySettings,
    /// How long this replica's lease on its proxies' streams lasts.
    pub replica_lease: Duration,
    /// How webhooks are delivered.
    pub webhooks: efms_notify::WebhookSettings,
    /// How alert rules are evaluated.
    pub alerts: efms_notify::AlertSettings,
}

impl DatabaseArgs {
    /// Checks the database settings.
    pub fn validate(&self) -> Result<DatabaseConfig, ConfigError> {
        let mut options = PgConnectOptions::from_str(&self.database_url).map_err(|error| {
            invalid(
                "DATABASE_URL (--database-url)",
                format!("not a Postgres URL such as {DEFAULT_DATABASE_URL}: {error}"),
            )
        })?;
        let in_url = url_password(&self.database_url);
        if let Some(password) = secret_files::value_or_file(
            "a password in DATABASE_URL",
            in_url.as_deref(),
            "EFMS_DATABASE_PASSWORD_FILE (--database-password-file)",
            self.database_password_file.as_deref(),
        )? {
            options = options.password(&password);
        }
        let max_connections = self
            .db_max_connections
            .parse::<u32>()
            .ok()
            .filter(|n| (2..=1000).contains(n))
            .ok_or_else(|| {
                invalid(
                    "EFMS_DB_MAX_CONNECTIONS (--db-max-connections)",
                    format!(
                        "`{}` is not a whole number from 2 to 1000",
                        self.db_max_connections
                    ),
                )
            })?;
        Ok(DatabaseConfig {
            options,
            max_connections,
        })
    }
}

/// The password a Postgres URL holds, if any.
fn url_password(url: &str) -> Option<String> {
    let authority = url.split_once("://")?.1.split(['/', '?']).next()?;
    let (user_info, _) = authority.rsplit_once('@')?;
    user_info
        .split_once(':')
        .map(|(_, password)| password.to_owned())
        .filter(|password| !password.is_empty())
}

/// Checks a master key setting.
pub fn validate_master_key(
    setting: &'static str,
    key: Option<&str>,
) -> Result<efms_domain::secrets::Key, ConfigError> {
    let key = key.filter(|key| !key.is_empty()).ok_or_else(|| {
        invalid(
            setting,
            "missing: set 32 random bytes, base64-encoded (`head -c 32 /dev/urandom | base64`)",
        )
    })?;
    efms_domain::secrets::Key::from_base64(key).map_err(|error| invalid(setting, error.to_string()))
}

/// Checks the TLS settings: both files or neither, readable, a certificate and its key.
pub fn validate_tls(
    cert: Option<&str>,
    key: Option<&str>,
) -> Result<Option<efms_xds::tls::TlsIdentity>, ConfigError> {
    const CERT: &str = "EFMS_TLS_CERT (--tls-cert)";
    const KEY: &str = "EFMS_TLS_KEY (--tls-key)";
    let (cert, key) = match (
        cert.filter(|c| !c.is_empty()),
        key.filter(|k| !k.is_empty()),
    ) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(invalid(KEY, "missing: EFMS_TLS_CERT needs its key")),
        (None, Some(_)) => {
            return Err(invalid(CERT, "missing: EFMS_TLS_KEY needs its certificate"))
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let read = |setting: &'static str, path: &str| {
        std::fs::read_to_string(path)
            .map_err(|error| invalid(setting, format!("cannot read `{path}`: {error}")))
    };
    let (cert_pem, key_pem) = (read(CERT, cert)?, read(KEY, key)?);
    efms_xds::tls::TlsIdentity::from_pem(&cert_pem, &key_pem)
        .map(Some)
        .map_err(|error| match error {
            efms_xds::tls::TlsError::Certificate(reason) => invalid(CERT, reason),
            efms_xds::tls::TlsError::Key(reason) => invalid(KEY, reason),
        })
}

/// Checks a signing secret.
pub fn validate_secret(secret: Option<&str>) -> Result<Vec<u8>, ConfigError> {
    const SETTING: &str = "EFMS_JWT_SECRET (--jwt-secret)";
    let secret = secret
        .filter(|secret| !secret.is_empty())
        .ok_or_else(|| invalid(SETTING, "missing: set a random secret of at least 32 bytes"))?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(invalid(
            SETTING,
            format!(
                "too short ({} bytes): use at least {MIN_SECRET_BYTES}",
                secret.len()
            ),
        ));
    }
    Ok(secret.as_bytes().to_vec())
}

fn parse_addr(setting: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            setting,
            format!("`{value}` is not an address of the form IP:PORT, such as 127.0.0.1:8080"),
        )
    })
}

impl ServeArgs {
    /// Checks the external identity provider's settings: its keys (a file or a URL), issuer and
    /// audience, or none of them.
    fn validate_oidc(
        &self,
    ) -> Result<Option<std::sync::Arc<crate::auth::ExternalIssuer>>, ConfigError> {
        const FILE: &str = "EFMS_OIDC_JWKS_FILE (--oidc-jwks-file)";
        const URL: &str = "EFMS_OIDC_JWKS_URL (--oidc-jwks-url)";
        let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let keys = match (given(&self.oidc_jwks_file), given(&self.oidc_jwks_url)) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    URL,
                    format!("give the identity provider's keys once: {FILE} or {URL}"),
                ))
            }
            (file, url) => file
                .map(|file| (FILE, file, false))
                .or(url.map(|url| (URL, url, true))),
        };
        match (keys, given(&self.oidc_issuer), given(&self.oidc_audience)) {
            (None, None, None) => Ok(None),
            (Some((setting, source, remote)), Some(issuer), Some(audience)) => {
                let issuer = if remote {
                    let plain_http = self.edge.jwks_plain_http()?;
                    crate::auth::ExternalIssuer::from_url(&source, &issuer, &audience, plain_http)
                } else {
                    let jwks = std::fs::read_to_string(&source).map_err(|error| {
                        invalid(setting, format!("cannot read `{source}`: {error}"))
                    })?;
                    crate::auth::ExternalIssuer::from_jwks(&jwks, &issuer, &audience)
                };
                issuer
                    .map(|issuer| Some(std::sync::Arc::new(issuer)))
                    .map_err(|reason| invalid(setting, reason))
            }
            (_, None, _) => Err(invalid(
                "EFMS_OIDC_ISSUER (--oidc-issuer)",
                "missing: an identity provider needs its issuer",
            )),
            (_, _, None) => Err(invalid(
                "EFMS_OIDC_AUDIENCE (--oidc-audience)",
                "missing: an identity provider needs the audience of its tokens",
            )),
            (None, _, _) => Err(invalid(
                FILE,
                format!("missing: an identity provider needs its keys ({FILE} or {URL})"),
            )),
        }
    }

    /// The token signing secret and the master key, each from its variable or its file.
    fn validate_secrets(&self) -> Result<(Vec<u8>, efms_domain::secrets::Key), ConfigError> {
        let jwt_secret = secret_files::value_or_file(
            "EFMS_JWT_SECRET",
            self.jwt_secret.as_deref(),
            "EFMS_JWT_SECRET_FILE (--jwt-secret-file)",
            self.jwt_secret_file.as_deref(),
        )?;
        let master_key = secret_files::value_or_file(
            "EFMS_MASTER_KEY",
            self.master_key.as_deref(),
            "EFMS_MASTER_KEY_FILE (--master-key-file)",
            self.master_key_file.as_deref(),
        )?;
        Ok((
            validate_secret(jwt_secret.as_deref())?,
            validate_master_key("EFMS_MASTER_KEY (--master-key)", master_key.as_deref())?,
        ))
    }

    /// Checks every setting of `efms serve`, in the order the help lists them.
    pub fn validate(&self) -> Result<ServeConfig, ConfigError> {
        let database = self.database.validate()?;
        let http_addr = parse_addr("EFMS_HTTP_ADDR (--http-addr)", &self.http_addr)?;
        let grpc_addr = parse_addr("EFMS_GRPC_ADDR (--grpc-addr)", &self.grpc_addr)?;
        if http_addr == grpc_addr && http_addr.port() != 0 {
            return Err(invalid(
                "EFMS_GRPC_ADDR (--grpc-addr)",
                format!("`{grpc_addr}` is also EFMS_HTTP_ADDR; they need distinct addresses"),
            ));
        }
        let xds_advertise_addr = self
            .xds_advertise_addr
            .as_deref()
            .map(|text| {
                text.rsplit_once(':')
                    .and_then(|(host, port)| {
                        let port = port.parse::<u16>().ok().filter(|port| *port != 0)?;
                        let host = host.trim_start_matches('[').trim_end_matches(']');
                        (!host.is_empty()
                            && host
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "-.:_".contains(c)))
                        .then(|| (host.to_owned(), port))
                    })
                    .ok_or_else(|| {
                        invalid(
                            "EFMS_XDS_ADVERTISE_ADDR (--xds-advertise-addr)",
                            format!(
                                "`{text}` is not host:port (for example xds.example.com:18000)"
                            ),
                        )
                    })
            })
            .transpose()?;
        let (jwt_secret, master_key) = self.validate_secrets()?;
        let tls = validate_tls(self.tls_cert.as_deref(), self.tls_key.as_deref())?;
        let oidc = self.validate_oidc()?;
        let log_format = match self.log_format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(invalid(
                    "EFMS_LOG_FORMAT (--log-format)",
                    format!("`{other}` is neither `json` nor `text`"),
                ))
            }
        };
        let poll_interval = self
            .poll_interval_ms
            .parse::<u64>()
            .ok()
            .filter(|ms| (10..=60_000).contains(ms))
            .map(Duration::from_millis)
            .ok_or_else(|| {
                invalid(
                    "EFMS_POLL_INTERVAL_MS (--poll-interval-ms)",
                    format!(
                        "`{}` is not a number of milliseconds from 10 to 60000",
                        self.poll_interval_ms
                    ),
                )
            })?;
        let tokens = crate::credentials::TokenSettings::from_settings(
            &self.proxy_token_ttl,
            &self.proxy_token_max_ttl,
            &self.xds_credential_recheck,
        )?;
        let edge = self.edge.validate()?;
        Ok(ServeConfig {
            database,
            http_addr,
            grpc_addr,
            xds_advertise_addr,
            jwt_secret,
            master_key,
            tls_files: tls
                .as_ref()
                .and(self.tls_cert.clone().zip(self.tls_key.clone())),
            tls,
            settings_file: self.settings_file.clone().filter(|path| !path.is_empty()),
            oidc,
            log_format,
            poll_interval,
            tokens,
            edge,
            limits: self.limits.validate()?,
            tenant_purge: efms_commands::tenant_purge::PurgeSettings {
                grace: fleet::duration(
                    "EFMS_TENANT_PURGE_GRACE (--tenant-purge-grace)",
                    &self.tenant_purge_grace,
                    Duration::from_secs(1)..=Duration::from_secs(3_650 * 24 * 3_600),
                )?,
            },
            fleet: self.fleet.validate()?,
            telemetry: self.telemetry.validate()?,
            replica_lease: self.replica.validate()?,
            read_replica: self.read_replica.validate()?,
            webhooks: self.webhooks.validate()?,
            alerts: self.alerts.validate()?,
        })
    }
}

#[cfg(test)]
mod tests;

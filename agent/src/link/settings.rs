//! How the agent reaches the control plane: the settings of the link, checked into a gRPC
//! endpoint (TLS trusting the CA given).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::host::HostError;

/// How long a connection to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings that tell a dead server from a quiet one.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the agent keeps its files unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/efms-agent";

/// How the agent reaches the control plane and what it says of itself.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    /// The control plane's gRPC listener: `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`
    /// (plain `HOST:PORT` is TLS when a CA file is given).
    pub server: String,
    /// The file holding the VM's join token; read again at every connection attempt.
    pub token_file: PathBuf,
    /// The CA certificate (PEM) that signed the server's: the stream is TLS, trusting that CA.
    pub ca_file: Option<PathBuf>,
    /// The Docker engine (`None`: `DOCKER_HOST`, else the default socket).
    pub docker_host: Option<String>,
    /// The VM's region, as the agent's flags say (the API's value wins).
    pub region: String,
    /// The VM's zone, as the agent's flags say (the API's value wins).
    pub zone: String,
    /// The VM's labels, as the agent's flags say (the API's values win).
    pub labels: BTreeMap<String, String>,
    /// The first wait before connecting again.
    pub backoff_initial: Duration,
    /// The longest wait between attempts; the wait after the server refused the token.
    pub backoff_max: Duration,
    /// The most reports kept until the server acknowledges them.
    pub buffer_capacity: usize,
    /// Where the agent keeps the bootstraps of the containers it launches (owner only).
    pub state_dir: PathBuf,
    /// How often the running proxies' `config_dump`s are read and reported.
    pub config_check_interval: Duration,
}

/// How often the running proxies' `config_dump`s are read unless set: a minute.
pub const DEFAULT_CONFIG_CHECK_INTERVAL: Duration = Duration::from_secs(60);

impl LinkSettings {
    /// Settings with the defaults: backoff from 250 ms to 10 s, 10,000 reports buffered.
    pub fn new(server: impl Into<String>, token_file: impl Into<PathBuf>) -> Self {
        Self {
            server: server.into(),
            token_file: token_file.into(),
            ca_file: None,
            docker_host: None,
            region: String::new(),
            zone: String::new(),
            labels: BTreeMap::new(),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            buffer_capacity: 10_000,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            config_check_interval: DEFAULT_CONFIG_CHECK_INTERVAL,
        }
    }
}

/// The VM's labels from `KEY=VALUE` flags (spaces around either trimmed); an error saying which
/// flag is not one, or which key is given twice.
pub fn parse_labels<'a>(
    flags: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for flag in flags {
        let (key, value) = flag
            .split_once('=')
            .map(|(key, value)| (key.trim(), value.trim()))
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| format!("`{flag}` is not KEY=VALUE, such as rack=r7"))?;
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("`{key}` is given twice"));
        }
    }
    Ok(labels)
}

/// Why the link cannot run at all (a failed connection is retried, never an error).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server's address cannot be used.
    #[error("invalid server address {address:?}: {reason}")]
    Address {
        /// The address given.
        address: String,
        /// Why.
        reason: String,
    },
    /// The CA certificate cannot be read.
    #[error("cannot read the CA certificate {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The host's facts cannot be read.
    #[error(transparent)]
    Host(#[from] HostError),
}

/// The gRPC endpoint of the server, TLS with the CA given.
pub(super) fn endpoint(settings: &LinkSettings) -> Result<Endpoint, LinkError> {
    let address = settings.server.trim();
    let invalid = |reason: &str| LinkError::Address {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let (uri, tls) = if address.starts_with("https://") {
        (address.to_owned(), true)
    } else if address.starts_with("http://") {
        (address.to_owned(), false)
    } else if address.contains("://") {
        return Err(invalid("the scheme must be http or https"));
    } else {
        let tls = settings.ca_file.is_some();
        let scheme = if tls { "https" } else { "http" };
        (format!("{scheme}://{address}"), tls)
    };
    if tls && settings.ca_file.is_none() {
        return Err(invalid(
            "https needs the CA certificate that signed the server's (--ca-file)",
        ));
    }
    if !tls && settings.ca_file.is_some() {
        return Err(invalid("a CA file is given but the address says http://"));
    }
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|error| invalid(&error.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if endpoint.uri().port_u16().is_none() {
        return Err(invalid("the port is missing (HOST:PORT)"));
    }
    let Some(path) = settings.ca_file.as_ref() else {
        return Ok(endpoint);
    };
    let pem = std::fs::read(path).map_err(|source| LinkError::CaFile {
        path: path.clone(),
        source,
    })?;
    endpoint
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
        .map_err(|error| invalid(&error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(server: &str, ca_file: Option<&str>) -> LinkSettings {
        LinkSettings {
            ca_file: ca_file.map(PathBuf::from),
            ..LinkSettings::new(server, "/nonexistent/token")
        }
    }

    #[test]
    fn a_server_address_takes_a_scheme_or_none_and_needs_a_port() {
        let plain = endpoint(&settings("cp.example:18000", None)).unwrap();
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        assert_eq!(plain.uri().host(), Some("cp.example"));
        assert!(endpoint(&settings("http://10.0.0.1:18000", None)).is_ok());
        let no_port = endpoint(&settings("cp.example", None)).unwrap_err();
        assert!(no_port.to_string().contains("port"), "{no_port}");
        let https_without_ca = endpoint(&settings("https://cp.example:18000", None)).unwrap_err();
        assert!(
            https_without_ca.to_string().contains("--ca-file"),
            "{https_without_ca}"
        );
        let http_with_ca = endpoint(&settings("http://cp.example:18000", Some("/ca.pem")));
        assert!(http_with_ca.is_err());
        assert!(endpoint(&settings("grpc://cp.example:18000", None)).is_err());
        let missing_ca = endpoint(&settings("cp.example:18000", Some("/nonexistent/ca.pem")));
        assert!(matches!(missing_ca, Err(LinkError::CaFile { .. })));
    }

    #[test]
    fn labels_are_key_value_pairs_given_once_each() {
        let labels = parse_labels(["rack=r7", " tier = edge", "empty="]).unwrap();
        assert_eq!(labels["rack"], "r7");
        assert_eq!(labels["tier"], "edge");
        assert_eq!(labels["empty"], "");
        let error = parse_labels(["rack"]).unwrap_err();
        assert!(error.contains("`rack` is not KEY=VALUE"), "{error}");
        assert!(parse_labels(["=r7"]).is_err());
        let twice = parse_labels(["a=1", "a=2"]).unwrap_err();
        assert!(twice.contains("`a` is given twice"), "{twice}");
    }
}

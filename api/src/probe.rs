//! `efms probe`: a container's health check, which needs no client in the image but `efms`
//! itself. It asks the server on this host whether it is ready (`GET /readyz`), over TLS
//! when the server has a certificate, trusting that certificate's CA, as a client should.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Args;

/// How long the probe waits for an answer.
const PATIENCE: Duration = Duration::from_secs(3);

/// `efms probe`: the server's own settings, read from the same environment.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Address the HTTP API listens on (an unspecified address is asked on loopback).
    #[arg(long, env = "EFMS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// The server's PEM certificate chain, ending with its CA: when set, the probe speaks TLS and
    /// trusts that CA alone.
    #[arg(long, env = "EFMS_TLS_CERT")]
    pub tls_cert: Option<String>,
}

/// The URL of `/readyz` of the server listening on `http_addr`, asked on loopback when it
/// listens on every address.
///
/// # Errors
/// When `http_addr` is not `IP:PORT`.
pub fn readiness_url(http_addr: &str, tls: bool) -> Result<String, String> {
    let addr: SocketAddr = http_addr
        .parse()
        .map_err(|_| format!("EFMS_HTTP_ADDR `{http_addr}` is not IP:PORT"))?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    Ok(format!(
        "{scheme}://{}/readyz",
        SocketAddr::new(ip, addr.port())
    ))
}

/// Asks the server whether it is ready.
///
/// # Errors
/// Why it is not: no answer, an answer other than 200 (with its body), or settings that do not
/// name a server.
pub async fn probe(args: &ProbeArgs) -> anyhow::Result<()> {
    let url =
        readiness_url(&args.http_addr, args.tls_cert.is_some()).map_err(anyhow::Error::msg)?;
    let mut client = reqwest::Client::builder().no_proxy().timeout(PATIENCE);
    if let Some(path) = &args.tls_cert {
        let chain = std::fs::read(path)
            .map_err(|error| anyhow::anyhow!("EFMS_TLS_CERT `{path}` cannot be read: {error}"))?;
        let ca = reqwest::Certificate::from_pem_bundle(&chain)?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("EFMS_TLS_CERT `{path}` holds no certificate"))?;
        client = client
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
    }
    let answer = client.build()?.get(&url).send().await?;
    let status = answer.status();
    if status.is_success() {
        Ok(())
    } else {
        let body = answer.text().await.unwrap_or_default();
        anyhow::bail!("{url} answered {status}: {body}")
    }
}

#[cfg(test)]
mod tests {
    use super::readiness_url;

    #[test]
    fn a_server_on_every_address_is_asked_on_loopback_and_a_tls_one_over_https() {
        assert_eq!(
            readiness_url("0.0.0.0:8080", false).unwrap(),
            "http://127.0.0.1:8080/readyz"
        );
        assert_eq!(
            readiness_url("[::]:8443", true).unwrap(),
            "https://127.0.0.1:8443/readyz"
        );
        assert_eq!(
            readiness_url("10.0.0.5:80", false).unwrap(),
            "http://10.0.0.5:80/readyz"
        );
        assert!(readiness_url("localhost:80", false)
            .unwrap_err()
            .contains("EFMS_HTTP_ADDR"));
    }
}

//! What the running proxies hold (NFR-OB-004): each launched proxy's admin `config_dump`, read on
//! the VM (the containers share the host's network, so their admin listeners are on
//! `127.0.0.1:{efms.admin_port}`), and the version of each resource type it applied last. The
//! control plane compares them with what the proxy ACKed: a difference is configuration changed
//! behind its back.
//!
//! Only the types whose dump carries one version for the whole set are read: clusters and
//! listeners (`version_info` of `ClustersConfigDump` and `ListenersConfigDump`, the version of the
//! last CDS and LDS update applied, in SotW and delta alike). Route configurations and secrets
//! carry one version per resource, which Envoy leaves as it was when a response did not change
//! the resource; they cannot be compared exactly and are not reported.

use std::time::Duration;

use efms_fleet_proto as proto;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::engine::Engine;
use crate::inventory::{self, ContainerState, Watch};
use crate::operate::ADMIN_PORT_LABEL;
use crate::report::now_millis;

/// How long reading one proxy's dump may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest dump read (a larger one is reported as unreadable).
const MAX_DUMP: usize = 64 << 20;

/// The dump types read, and the resource type each stands for.
const SET_VERSIONED: [(&str, &str); 2] = [
    (
        "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    ),
    (
        "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "type.googleapis.com/envoy.config.listener.v3.Listener",
    ),
];

/// Reads the dump of every running proxy container that names its admin port (those the agent
/// launched); `None` when there is none, or the engine cannot be reached.
pub async fn check_round(docker_host: Option<&str>) -> Option<proto::ConfigChecks> {
    let engine = match Engine::connect(docker_host).await {
        Ok(engine) => engine,
        Err(error) => {
            tracing::debug!(%error, "no configuration check this round");
            return None;
        }
    };
    let containers = match inventory::list(&engine, &Watch::default()).await {
        Ok(containers) => containers,
        Err(error) => {
            tracing::debug!(%error, "no configuration check this round");
            return None;
        }
    };
    let read_at = now_millis();
    let mut proxies = Vec::new();
    for container in containers {
        if container.state != ContainerState::Running {
            continue;
        }
        let (Some(node_id), Some(port)) = (
            container.node_id.clone(),
            container
                .labels
                .get(ADMIN_PORT_LABEL)
                .and_then(|port| port.parse::<u16>().ok()),
        ) else {
            continue;
        };
        let (versions, error) = match read_versions(port).await {
            Ok(versions) => (versions, String::new()),
            Err(error) => (Vec::new(), error),
        };
        proxies.push(proto::ConfigCheck {
            container_id: container.id,
            node_id,
            versions,
            error,
        });
    }
    (!proxies.is_empty()).then_some(proto::ConfigChecks { read_at, proxies })
}

/// The set versions of the dump of the proxy whose admin listener is on `127.0.0.1:port`.
pub async fn read_versions(port: u16) -> Result<Vec<proto::ConfigVersion>, String> {
    let body = tokio::time::timeout(READ_TIMEOUT, get(port, "/config_dump"))
        .await
        .map_err(|_| format!("the admin listener did not answer within {READ_TIMEOUT:?}"))??;
    let dump: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|error| format!("the config_dump is not JSON: {error}"))?;
    Ok(set_versions(&dump))
}

/// The version of each set-versioned type in `dump` (empty where the proxy applied none).
pub fn set_versions(dump: &serde_json::Value) -> Vec<proto::ConfigVersion> {
    let configs = dump["configs"].as_array().map_or(&[][..], Vec::as_slice);
    SET_VERSIONED
        .iter()
        .filter_map(|(dump_type, type_url)| {
            let config = configs.iter().find(|c| c["@type"] == *dump_type)?;
            Some(proto::ConfigVersion {
                type_url: (*type_url).to_owned(),
                version: config["version_info"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            })
        })
        .collect()
}

/// `GET path` on `127.0.0.1:port` over HTTP/1.1; the body of a 200.
async fn get(port: u16, path: &str) -> Result<Vec<u8>, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|error| format!("the admin listener on port {port} cannot be reached: {error}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let failed = |error: std::io::Error| format!("reading the admin listener failed: {error}");
    stream.write_all(request.as_bytes()).await.map_err(failed)?;
    let mut response = Vec::new();
    (&mut stream)
        .take(u64::try_from(MAX_DUMP).unwrap_or(u64::MAX) + 1)
        .read_to_end(&mut response)
        .await
        .map_err(failed)?;
    if response.len() > MAX_DUMP {
        return Err(format!("the config_dump is over {} MiB", MAX_DUMP >> 20));
    }
    parse_response(&response)
}

/// The body of an HTTP/1.1 response read to its end, which must be a 200.
fn parse_response(response: &[u8]) -> Result<Vec<u8>, String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the admin listener's answer has no end of headers")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let body = &response[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("the admin listener answered `{status}`"));
    }
    let chunked = lines.any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if chunked {
        dechunk(body)
    } else {
        Ok(body.to_vec())
    }
}

/// A chunked body's content.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let broken = || "the admin listener's chunked answer is broken".to_owned();
    let mut content = Vec::with_capacity(body.len());
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(broken)?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| broken())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(content);
        }
        if body.len() < size + 2 {
            return Err(broken());
        }
        content.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_and_listener_set_versions_are_read_and_a_type_never_updated_is_empty() {
        let dump = serde_json::json!({ "configs": [
            { "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump" },
            { "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
              "version_info": "3f2a", "static_clusters": [] },
            { "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump" },
            { "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
              "dynamic_route_configs": [{ "version_info": "9" }] }
        ]});
        let versions: Vec<(String, String)> = set_versions(&dump)
            .into_iter()
            .map(|v| (v.type_url, v.version))
            .collect();
        assert_eq!(
            versions,
            [
                (
                    "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned(),
                    "3f2a".to_owned()
                ),
                (
                    "type.googleapis.com/envoy.config.listener.v3.Listener".to_owned(),
                    String::new()
                ),
            ]
        );
    }

    #[test]
    fn a_chunked_answer_is_joined_and_anything_but_200_is_refused() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), b"{\"a\":1}");
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(sized).unwrap(), b"{}");
        let refused = b"HTTP/1.1 503 Service Unavailable\r\n\r\n";
        assert!(parse_response(refused).unwrap_err().contains("503"));
        let cut = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nshort";
        assert!(parse_response(cut).is_err());
    }
}

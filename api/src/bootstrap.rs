//! The Envoy bootstrap with which a stock Envoy connects to this control plane: ADS over gRPC
//! (TLS 1.3 when the server has it) authenticated by a proxy token, an admin interface on
//! loopback, a cap on downstream connections, and the metrics service sink that streams the
//! proxy's own statistics back to the control plane, limited by a stats matcher to those efms
//! keeps (listed in `docs/telemetry.md`).

use serde::Deserialize;
use serde_json::{json, Value};

/// The downstream connections a bootstrapped Envoy accepts at most.
const MAX_DOWNSTREAM_CONNECTIONS: u32 = 50_000;

/// The static cluster of a bootstrap that points at the xDS server.
const XDS_CLUSTER: &str = "efms_xds";

/// The statistics a bootstrapped Envoy keeps and sends (suffixes of their full names), besides
/// `server.` and `control_plane.`: what the telemetry reads, nothing more, so that a proxy of
/// thousands of clusters still sends messages well under the cap.
const KEPT_STATS: [&str; 23] = [
    ".upstream_rq_total",
    ".upstream_rq_2xx",
    ".upstream_rq_3xx",
    ".upstream_rq_4xx",
    ".upstream_rq_5xx",
    ".upstream_rq_time",
    ".upstream_rq_retry",
    ".upstream_cx_total",
    ".upstream_cx_active",
    ".upstream_cx_rx_bytes_total",
    ".upstream_cx_tx_bytes_total",
    ".membership_healthy",
    ".membership_total",
    ".downstream_rq_total",
    ".downstream_rq_2xx",
    ".downstream_rq_3xx",
    ".downstream_rq_4xx",
    ".downstream_rq_5xx",
    ".downstream_rq_time",
    ".downstream_cx_total",
    ".downstream_cx_active",
    ".downstream_cx_rx_bytes_total",
    ".downstream_cx_tx_bytes_total",
];

/// The circuit breakers of the default priority, open or not.
const CIRCUIT_BREAKERS: &str =
    r"^cluster\..+\.circuit_breakers\.default\.(cx|rq|rq_pending|rq_retry)_open$";

/// The xDS protocol a bootstrap asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum XdsProtocol {
    /// State-of-the-World ADS (`GRPC`).
    #[default]
    Sotw,
    /// Incremental ADS (`DELTA_GRPC`).
    Delta,
}

/// What a bootstrap is made of.
pub(crate) struct BootstrapSpec<'a> {
    pub node_id: &'a str,
    pub group: &'a str,
    pub tenant: &'a str,
    pub token: &'a str,
    pub protocol: XdsProtocol,
    pub xds: &'a crate::state::XdsAddress,
    /// The addresses (`host:port`) of every replica whose lease is current: the proxy may reach
    /// any of them, so it moves to another when one goes.
    pub replicas: &'a [String],
    pub admin_port: u16,
    /// How often the proxy sends its statistics.
    pub stats_flush: std::time::Duration,
}

/// The xDS servers a bootstrap names: this replica first, then every other replica with a
/// current lease (an address that is not `host:port` is left out).
fn xds_servers(spec: &BootstrapSpec<'_>) -> Vec<(String, u16)> {
    let mut servers = vec![(spec.xds.host.clone(), spec.xds.port)];
    for authority in spec.replicas {
        let Some((host, port)) = authority.rsplit_once(':') else {
            continue;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if !host.is_empty() && !servers.iter().any(|(h, p)| h == host && *p == port) {
            servers.push((host.to_owned(), port));
        }
    }
    servers
}

/// The Envoy bootstrap (JSON) of `spec`.
pub(crate) fn bootstrap_document(spec: &BootstrapSpec<'_>) -> Value {
    let api_type = match spec.protocol {
        XdsProtocol::Sotw => "GRPC",
        XdsProtocol::Delta => "DELTA_GRPC",
    };
    let host = &spec.xds.host;
    let servers = xds_servers(spec);
    let discovery = if servers
        .iter()
        .all(|(host, _)| host.parse::<std::net::IpAddr>().is_ok())
    {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let lb_endpoints: Vec<Value> = servers
        .iter()
        .map(|(host, port)| {
            json!({ "endpoint": { "address": {
                "socket_address": { "address": host, "port_value": port },
            } } })
        })
        .collect();
    let mut bootstrap = json!({
        "node": {
            "id": spec.node_id,
            "cluster": spec.group,
            "metadata": { "tenant": spec.tenant, "group": spec.group },
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{
                    "envoy_grpc": { "cluster_name": XDS_CLUSTER },
                    "initial_metadata": [{ "key": "authorization", "value": format!("Bearer {}", spec.token) }],
                }],
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": discovery,
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {
                            "http2_protocol_options": {
                                "connection_keepalive": { "interval": "30s", "timeout": "10s" },
                            },
                        },
                    },
                },
                "load_assignment": {
                    "cluster_name": XDS_CLUSTER,
                    "endpoints": [{ "lb_endpoints": lb_endpoints }],
                },
            }],
        },
        "admin": {
            "address": { "socket_address": {
                "address": "127.0.0.1",
                "port_value": spec.admin_port,
            } },
        },
        // A cap on downstream connections, which Envoy asks every deployment to set.
        "overload_manager": {
            "resource_monitors": [{
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                },
            }],
        },
    });
    add_statistics(&mut bootstrap, spec);
    if let Some(ca) = &spec.xds.tls_ca {
        // TLS 1.3 to the control plane, trusting its certificate chain.
        let mut tls = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_params": {
                    "tls_minimum_protocol_version": "TLSv1_3",
                    "tls_maximum_protocol_version": "TLSv1_3",
                },
                "validation_context": { "trusted_ca": { "inline_string": ca.chain_pem() } },
            },
        });
        if discovery == "STRICT_DNS" {
            tls["sni"] = json!(host);
        }
        bootstrap["static_resources"]["clusters"][0]["transport_socket"] =
            json!({ "name": "envoy.transport_sockets.tls", "typed_config": tls });
    }
    bootstrap
}

/// Has `bootstrap` stream its statistics to the control plane every `spec.stats_flush`, through
/// the same cluster and with the same token as ADS, keeping only the statistics efms reads.
fn add_statistics(bootstrap: &mut Value, spec: &BootstrapSpec<'_>) {
    let statistics = json!({
        "stats_sinks": [{
            "name": "envoy.stat_sinks.metrics_service",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
                "transport_api_version": "V3",
                "report_counters_as_deltas": true,
                "emit_tags_as_labels": true,
                "grpc_service": {
                    "envoy_grpc": { "cluster_name": XDS_CLUSTER },
                    "initial_metadata": [{ "key": "authorization", "value": format!("Bearer {}", spec.token) }],
                },
            },
        }],
        "stats_flush_interval": format!("{}s", spec.stats_flush.as_secs().max(1)),
        "stats_config": { "stats_matcher": { "inclusion_list": { "patterns": kept_stats() } } },
    });
    if let (Some(bootstrap), Value::Object(statistics)) = (bootstrap.as_object_mut(), statistics) {
        bootstrap.extend(statistics);
    }
}

/// The stats matcher's patterns: the statistics efms reads, and Envoy's own state.
fn kept_stats() -> Vec<Value> {
    let mut patterns: Vec<Value> = KEPT_STATS
        .iter()
        .map(|suffix| json!({ "suffix": suffix }))
        .collect();
    patterns.push(json!({ "safe_regex": { "regex": CIRCUIT_BREAKERS } }));
    patterns.push(json!({ "prefix": "server." }));
    patterns.push(json!({ "prefix": "control_plane." }));
    patterns
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::XdsAddress;

    fn document(xds_host: &str, replicas: &[String]) -> Value {
        let xds = XdsAddress {
            host: xds_host.to_owned(),
            port: 18000,
            tls_ca: None,
        };
        bootstrap_document(&BootstrapSpec {
            node_id: "edge-1",
            group: "edge",
            tenant: "acme",
            token: "token",
            protocol: XdsProtocol::Sotw,
            xds: &xds,
            replicas,
            admin_port: 9901,
            stats_flush: std::time::Duration::from_secs(10),
        })
    }

    fn servers(bootstrap: &Value) -> Vec<String> {
        bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
            ["lb_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|endpoint| {
                let address = &endpoint["endpoint"]["address"]["socket_address"];
                format!(
                    "{}:{}",
                    address["address"].as_str().unwrap(),
                    address["port_value"]
                )
            })
            .collect()
    }

    #[test]
    fn a_bootstrap_names_this_replica_first_then_every_other_live_replica_once() {
        let replicas = [
            "127.0.0.2:18000".to_owned(),
            "127.0.0.1:18000".to_owned(),
            "[::1]:18001".to_owned(),
            "not an address".to_owned(),
        ];
        let bootstrap = document("127.0.0.1", &replicas);
        assert_eq!(
            servers(&bootstrap),
            ["127.0.0.1:18000", "127.0.0.2:18000", "::1:18001"]
        );
        assert_eq!(
            bootstrap["static_resources"]["clusters"][0]["type"],
            "STATIC"
        );
    }

    #[test]
    fn a_bootstrap_resolves_its_servers_by_dns_when_one_is_a_name() {
        let replicas = ["xds-2.example.com:18000".to_owned()];
        let bootstrap = document("127.0.0.1", &replicas);
        assert_eq!(
            bootstrap["static_resources"]["clusters"][0]["type"],
            "STRICT_DNS"
        );
        assert_eq!(servers(&bootstrap).len(), 2);
    }
}

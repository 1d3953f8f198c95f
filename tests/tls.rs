//! TLS 1.3 on both listeners (NFR-SE-004): a TLS 1.3 client is served over HTTP and gRPC, a TLS
//! 1.2-only client is refused, and a real Envoy streams its configuration over TLS from the
//! bootstrap the API hands out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use efms_tests::fleet::{eventually, free_port, Behaviour, Envoy, Upstream, ENVOY};
use efms_tests::TestApp;
use efms_xds::tls::TlsIdentity;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

const BASE: &str = "/api/v1/tenants/acme";

/// A certificate for 127.0.0.1 and localhost issued by a fresh CA (the served chain holds both,
/// so clients can trust the CA).
fn identity() -> TlsIdentity {
    let (chain, key) = efms_tests::certificates::issued();
    TlsIdentity::from_pem(&chain, &key).unwrap()
}

/// A client trusting `identity`, speaking only `version`, offering `alpn`.
fn client(
    identity: &TlsIdentity,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[u8],
) -> TlsConnector {
    // The chain's last certificate is the CA.
    let mut roots = RootCertStore::empty();
    let chain: Vec<_> = CertificateDer::pem_slice_iter(identity.chain_pem().as_bytes())
        .map(Result::unwrap)
        .collect();
    roots.add(chain.last().unwrap().clone()).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    connector.connect(name, tcp).await
}

fn http_addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("https://").parse().unwrap()
}

/// One HTTP/1.1 request over TLS 1.3: status and JSON body.
async fn https(
    app: &TestApp,
    identity: &TlsIdentity,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let connector = client(identity, &rustls::version::TLS13, b"http/1.1");
    let mut stream = connect(&connector, http_addr(app)).await.unwrap();
    let payload = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{payload}",
        app.system_token(),
        payload.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    // A server may end a TLS connection without close_notify after `connection: close`.
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut decoded = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            decoded.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        decoded
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn both_listeners_speak_tls_1_3_and_refuse_a_tls_1_2_client(pool: PgPool) {
    let identity = identity();
    let app = TestApp::spawn_tls(pool, identity.clone()).await;
    let (status, body) = https(&app, &identity, "GET", "/healthz", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = https(&app, &identity, "GET", "/api/v1/tenants", None).await;
    assert_eq!(status, 200);

    for (addr, alpn) in [(http_addr(&app), &b"http/1.1"[..]), (app.grpc, &b"h2"[..])] {
        let modern = connect(&client(&identity, &rustls::version::TLS13, alpn), addr)
            .await
            .unwrap();
        let (_, session) = modern.get_ref();
        assert_eq!(
            session.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(session.alpn_protocol(), Some(alpn));
        let old = connect(&client(&identity, &rustls::version::TLS12, alpn), addr).await;
        assert!(old.is_err(), "a TLS 1.2 client was served on {addr}");
    }
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn the_tls_listener_drops_a_half_sent_header_and_refuses_connections_beyond_its_limit(
    pool: PgPool,
) {
    let identity = identity();
    let limits = efms_api::connections::HttpLimits {
        header_timeout: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(600),
        max_connections: 1,
    };
    let app = TestApp::spawn_with_limits(pool, limits, Some(identity.clone())).await;
    let connector = client(&identity, &rustls::version::TLS13, b"http/1.1");
    let mut half = connect(&connector, http_addr(&app)).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    // While it holds the only slot, another connection is closed unanswered.
    let mut beyond = connect(&connector, http_addr(&app)).await.unwrap();
    let _ = beyond
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        beyond.read_to_end(&mut answer),
    )
    .await;
    assert!(
        ended.is_ok() && answer.is_empty(),
        "served beyond the limit"
    );
    let mut left = Vec::new();
    let dropped = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        half.read_to_end(&mut left),
    )
    .await;
    assert!(
        dropped.is_ok(),
        "the half-sent header was kept past its timeout"
    );
    assert!(left.is_empty());
}

#[sqlx::test(migrator = "efms_commands::MIGRATOR")]
async fn a_real_envoy_streams_its_configuration_over_tls(pool: PgPool) {
    let identity = identity();
    let app = TestApp::spawn_tls(pool, identity.clone()).await;
    let upstream = Upstream::start("A", Behaviour::Named).await;
    let port = free_port();
    let (status, body) = https(
        &app,
        &identity,
        "POST",
        "/api/v1/tenants",
        Some(&json!({ "slug": "acme", "name": "Acme" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let resources = [
        (
            "clusters",
            json!({ "name": "a", "connect_timeout": "1s", "type": "STATIC",
            "load_assignment": { "cluster_name": "a", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": upstream.addr.port() } } } }] }] } }),
        ),
        (
            "routes",
            json!({ "name": "main", "virtual_hosts": [{ "name": "all", "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "a" } }] }] }),
        ),
        (
            "listeners",
            json!({ "name": "http",
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
            "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "http",
                    "rds": { "route_config_name": "main", "config_source": { "ads": {}, "resource_api_version": "V3" } },
                    "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }] } }] }] }),
        ),
        (
            "groups",
            json!({ "name": "edge", "resources": [{ "kind": "listener", "name": "http" }] }),
        ),
    ];
    for (collection, resource) in resources {
        let (status, body) = https(
            &app,
            &identity,
            "POST",
            &format!("{BASE}/{collection}"),
            Some(&resource),
        )
        .await;
        assert_eq!(status, 201, "{collection}: {body}");
    }
    let (status, bootstrap) = https(
        &app,
        &identity,
        "GET",
        &format!(
            "{BASE}/groups/edge/bootstrap?node_id=tls-1&protocol=sotw&admin_port={}",
            free_port()
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{bootstrap}");
    let socket = &bootstrap["static_resources"]["clusters"][0]["transport_socket"];
    assert_eq!(socket["name"], "envoy.transport_sockets.tls", "{bootstrap}");
    let _envoy = Envoy::start(ENVOY, &bootstrap);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    eventually(Duration::from_secs(20), "Envoy to route to A", || async {
        let response = http
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .ok()?;
        (response.text().await.ok()? == "A").then_some(())
    })
    .await;
    // The status writer records what the proxy runs shortly after it happens.
    eventually(
        Duration::from_secs(20),
        "the proxy to show as connected",
        || async {
            let (status, proxy) = https(
                &app,
                &identity,
                "GET",
                &format!("{BASE}/proxies/tls-1"),
                None,
            )
            .await;
            (status == 200 && proxy["connected"] == true).then_some(())
        },
    )
    .await;
}

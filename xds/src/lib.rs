//! The gRPC side of the Envoy Fleet Manager: the xDS servers Envoy proxies stream their
//! configuration from (INT-XDS-001..005, DESIGN §7).
//!
//! It runs in the `efms` process beside the HTTP API, on its own address, and stops with it. It
//! serves the Aggregated Discovery Service in both the State-of-the-World and the delta protocol,
//! the per-type CDS, EDS, LDS, RDS and SDS services, Envoy's metrics service (the proxies' own
//! statistics, see [`telemetry`]), and the standard gRPC health service. Streams
//! read the group snapshots that `efms-projections` keeps; every stream is authenticated by the
//! bearer token in its metadata, and ends when that token expires or is withdrawn (its user
//! deleted or changed, its proxy token revoked); what each proxy was sent, accepted and refused is recorded
//! durably (see [`status`]).

mod credentials;
mod delta;
mod driver;
pub mod fleet;
mod grpc;
mod held;
pub mod identity;
pub mod metrics;
pub mod replicas;
mod services;
mod session;
mod sotw;
pub mod status;
pub mod telemetry;
pub mod tls;
mod wire;

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::MetricsServiceServer;
use grpc::{Aggregated, Clusters, DiscoveryService, Endpoints, Listeners, Routes, Secrets};

pub use credentials::DEFAULT_RECHECK;
pub use fleet::{BootstrapRequest, FleetServer, FleetStreamSettings, ProxyBootstraps};
pub use identity::{Authenticator, Credentials};
pub use metrics::{FleetMetrics, TelemetryMetrics, XdsMetrics};
pub use replicas::ReplicaSettings;
pub use session::{XdsServer, TENANT_STANDING_TTL};
pub use telemetry::{TelemetryServer, TelemetrySettings};

/// The largest message a proxy may send (an ACK carrying a long error, a big subscription).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Serves the xDS and health services on `listener` until `shutdown` resolves, then ends the
/// streams (proxies reconnect to another replica or to this one when it is back).
pub async fn serve(
    listener: TcpListener,
    xds: XdsServer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (router, shutdown) = router(xds, shutdown).await;
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// [`serve`] over TLS 1.3 with `identity` (gRPC negotiates HTTP/2 by ALPN).
pub async fn serve_tls(
    listener: TcpListener,
    identity: &tls::TlsIdentity,
    xds: XdsServer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let config = identity
        .server_config(&[b"h2"])
        .expect("the identity was checked when it was read");
    let connections = tls::accept(listener, config);
    let incoming = futures::stream::unfold(connections, |mut connections| async move {
        let connection = connections.recv().await?;
        Some((Ok::<_, std::io::Error>(connection), connections))
    });
    let (router, shutdown) = router(xds, shutdown).await;
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// [`serve`], or [`serve_tls`] when `tls` is given.
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<&tls::TlsIdentity>,
    xds: XdsServer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(identity) => serve_tls(listener, identity, xds, shutdown).await,
        None => serve(listener, xds, shutdown).await,
    }
}

/// The services, and a shutdown that also ends the open streams.
async fn router(
    xds: XdsServer,
    shutdown: impl Future<Output = ()> + Send,
) -> (
    tonic::transport::server::Router,
    impl Future<Output = ()> + Send,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let stopper = xds.clone();
    let shutdown = async move {
        shutdown.await;
        stopper.stop();
    };
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(health)
        .add_service(DiscoveryService::<Aggregated>::new(
            xds.clone(),
            MAX_MESSAGE,
        ))
        .add_service(DiscoveryService::<Clusters>::new(xds.clone(), MAX_MESSAGE))
        .add_service(DiscoveryService::<Endpoints>::new(xds.clone(), MAX_MESSAGE))
        .add_service(DiscoveryService::<Listeners>::new(xds.clone(), MAX_MESSAGE))
        .add_service(DiscoveryService::<Routes>::new(xds.clone(), MAX_MESSAGE))
        .add_service(DiscoveryService::<Secrets>::new(xds.clone(), MAX_MESSAGE));
    let router = router.add_optional_service(xds.fleet().cloned().map(fleet::FleetService::new));
    let router = router.add_optional_service(xds.telemetry().cloned().map(|telemetry| {
        let cap = telemetry.settings().max_message;
        MetricsServiceServer::new(telemetry::MetricsSink::new(xds.clone(), telemetry))
            .max_decoding_message_size(cap)
    }));
    (router, shutdown)
}

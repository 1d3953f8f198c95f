//! The gRPC side of the Envoy Fleet Manager: the server Envoy proxies connect to.
//!
//! It runs in the `efms` process beside the HTTP API, on its own address, and stops with it. Today
//! it serves the standard gRPC health service (`grpc.health.v1.Health`), which load balancers and
//! orchestrators probe; the xDS discovery services join it on the same server.

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// Serves the gRPC services on `listener` until `shutdown` resolves, then drains open streams.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

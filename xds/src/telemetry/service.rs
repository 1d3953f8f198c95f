//! `envoy.service.metrics.v3.MetricsService/StreamMetrics`: a proxy's statistics stream. Its
//! token is checked as an ADS stream's is; its first message names the node, which must be the
//! token's (a proxy token is minted for one node) and of the token's tenant; the stream then runs
//! until Envoy ends it, its token expires or is withdrawn, or the server stops.

use std::sync::Arc;

use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::MetricsService;
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use tonic::{Request, Response, Status, Streaming};

use super::absorb::absorb;
use super::TelemetryServer;
use crate::identity::Credentials;
use crate::session::{Identity, XdsServer};

/// The metrics service over the xDS server's identities and the telemetry server's buckets.
pub(crate) struct MetricsSink {
    xds: XdsServer,
    telemetry: TelemetryServer,
}

impl MetricsSink {
    /// The service of `telemetry`, admitting streams as `xds` does.
    pub(crate) fn new(xds: XdsServer, telemetry: TelemetryServer) -> Self {
        Self { xds, telemetry }
    }

    /// Counts a refused stream under `reason`, and gives its status back.
    fn refused(&self, reason: &str, status: Status) -> Status {
        self.telemetry.metrics().refused(reason);
        tracing::info!(reason, status = %status.message(), "a statistics stream was refused");
        status
    }
}

/// Why a stream was refused, as counted.
fn reason_of(status: &Status) -> &'static str {
    match status.code() {
        tonic::Code::Unauthenticated => "token",
        tonic::Code::PermissionDenied => "identity",
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => "oversize",
        tonic::Code::Unavailable => "unavailable",
        _ => "invalid",
    }
}

/// A message that did not decode: over the cap, or not a message at all.
fn unreadable(status: Status, cap: usize) -> Status {
    if matches!(
        status.code(),
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
    ) {
        Status::resource_exhausted(format!(
            "a statistics message is over the {cap} bytes this control plane takes: set a stats \
             matcher (the bootstrap it gives has one) or `batch_size` (Envoy 1.37 and later)"
        ))
    } else {
        status
    }
}

/// A proxy token speaks for the node it was minted for and no other.
fn check_node(credentials: &Credentials, identity: &Identity) -> Result<(), Status> {
    if credentials.actor.role != efms_domain::Role::Proxy {
        return Ok(());
    }
    match credentials.actor.subject.strip_prefix("proxy:") {
        Some(node) if node != identity.info.node_id => Err(Status::permission_denied(format!(
            "the token is for node `{node}`; the stream says node `{}`",
            identity.info.node_id
        ))),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl MetricsService for MetricsSink {
    async fn stream_metrics(
        &self,
        request: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        let cap = self.telemetry.settings().max_message;
        let credentials = self
            .xds
            .admit(request.metadata())
            .await
            .map_err(|status| self.refused("token", status))?;
        let mut stream = request.into_inner();
        let first = match stream.message().await {
            Ok(Some(first)) => first,
            Ok(None) => return Ok(Response::new(StreamMetricsResponse {})),
            Err(status) => {
                let status = unreadable(status, cap);
                return Err(self.refused(reason_of(&status), status));
            }
        };
        let node = first
            .identifier
            .as_ref()
            .and_then(|identifier| identifier.node.as_ref());
        let mut identity = self
            .xds
            .identify(&credentials, node)
            .await
            .map_err(|status| self.refused(reason_of(&status), status))?;
        check_node(&credentials, &identity).map_err(|status| self.refused("identity", status))?;
        let group: Arc<str> = Arc::from(identity.group.as_str());
        let proxy: Arc<str> = Arc::from(identity.info.node_id.as_str());
        let tenant_id = identity.tenant_id;
        let metrics = self.telemetry.metrics().clone();
        metrics.streams.inc();
        let _open = scopeguard(&metrics);
        let mut stopping = self.telemetry.stopping();
        let mut message = Some(first);
        loop {
            if let Some(message) = message.take() {
                metrics.messages.inc();
                let readings = absorb(&message.envoy_metrics);
                if !readings.is_empty() {
                    let now = chrono::Utc::now();
                    self.telemetry.gather(|open| {
                        open.add(tenant_id, &group, &proxy, now, readings);
                    });
                }
            }
            tokio::select! {
                next = stream.message() => match next {
                    Ok(Some(next)) => message = Some(next),
                    Ok(None) => return Ok(Response::new(StreamMetricsResponse {})),
                    Err(status) => {
                        let status = unreadable(status, cap);
                        return Err(self.refused(reason_of(&status), status));
                    }
                },
                status = identity.lapse.lapsed() => return Err(status),
                _ = stopping.wait_for(|stop| *stop) => {
                    return Err(Status::unavailable("the control plane is shutting down"));
                }
            }
        }
    }
}

/// Lowers the open streams' gauge when the stream ends, however it ends.
fn scopeguard(metrics: &crate::metrics::TelemetryMetrics) -> impl Drop + '_ {
    struct Open<'a>(&'a crate::metrics::TelemetryMetrics);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.streams.dec();
        }
    }
    Open(metrics)
}

//! The gRPC services, routed by hand rather than through the generated servers, so that responses
//! go out as [`Wire`] messages whose shared parts are encoded once (see [`crate::wire`]).
//!
//! Each discovery service (ADS, and the per-type CDS, EDS, LDS, RDS and SDS) answers its
//! `Stream…` method with the State-of-the-World engine, its `Delta…` method with the delta engine,
//! and its `Fetch…` method (polling) with `UNIMPLEMENTED`, on the wire exactly as the generated
//! servers would.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use efms_domain::envoy::ResourceKind;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};
use tonic_prost::ProstCodec;

use crate::driver::ResponseStream;
use crate::session::XdsServer;
use crate::wire::Wire;

/// One discovery service: its gRPC name and the one type it serves (`None`: every type, ADS).
pub(crate) trait Discovery: Send + Sync + 'static {
    /// The fully qualified gRPC service name.
    const NAME: &'static str;
    /// The type a per-type service serves.
    const ONLY: Option<ResourceKind>;
}

macro_rules! discovery {
    ($marker:ident, $module:ident, $only:expr) => {
        #[doc = concat!("The `", stringify!($module), "` service.")]
        pub(crate) struct $marker;
        impl Discovery for $marker {
            const NAME: &'static str = $module::SERVICE_NAME;
            const ONLY: Option<ResourceKind> = $only;
        }
    };
}

discovery!(Aggregated, aggregated_discovery_service_server, None);
discovery!(
    Clusters,
    cluster_discovery_service_server,
    Some(ResourceKind::Cluster)
);
discovery!(
    Endpoints,
    endpoint_discovery_service_server,
    Some(ResourceKind::Endpoints)
);
discovery!(
    Listeners,
    listener_discovery_service_server,
    Some(ResourceKind::Listener)
);
discovery!(
    Routes,
    route_discovery_service_server,
    Some(ResourceKind::Route)
);
discovery!(
    Secrets,
    secret_discovery_service_server,
    Some(ResourceKind::Secret)
);

/// The tower service of one discovery service over the xDS server.
pub(crate) struct DiscoveryService<D> {
    xds: XdsServer,
    max_decoding: usize,
    service: PhantomData<fn() -> D>,
}

impl<D: Discovery> DiscoveryService<D> {
    /// The service over `xds`, reading requests of at most `max_decoding` bytes.
    pub(crate) fn new(xds: XdsServer, max_decoding: usize) -> Self {
        Self {
            xds,
            max_decoding,
            service: PhantomData,
        }
    }
}

impl<D> Clone for DiscoveryService<D> {
    fn clone(&self) -> Self {
        Self {
            xds: self.xds.clone(),
            max_decoding: self.max_decoding,
            service: PhantomData,
        }
    }
}

impl<D: Discovery> NamedService for DiscoveryService<D> {
    const NAME: &'static str = D::NAME;
}

/// The State-of-the-World method of a service.
struct SotwMethod {
    xds: XdsServer,
    only: Option<ResourceKind>,
}

impl StreamingService<DiscoveryRequest> for SotwMethod {
    type Response = Wire;
    type ResponseStream = ResponseStream<Wire>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let (xds, only) = (self.xds.clone(), self.only);
        Box::pin(async move { xds.start_sotw(request, only).await })
    }
}

/// The delta method of a service.
struct DeltaMethod {
    xds: XdsServer,
    only: Option<ResourceKind>,
}

impl StreamingService<DeltaDiscoveryRequest> for DeltaMethod {
    type Response = Wire;
    type ResponseStream = ResponseStream<Wire>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let (xds, only) = (self.xds.clone(), self.only);
        Box::pin(async move { xds.start_delta(request, only).await })
    }
}

impl<D, B> Service<http::Request<B>> for DiscoveryService<D>
where
    D: Discovery,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.strip_prefix(D::NAME))
            .and_then(|path| path.strip_prefix('/'))
            .unwrap_or_default()
            .to_owned();
        let (xds, max_decoding) = (self.xds.clone(), Some(self.max_decoding));
        Box::pin(async move {
            if method.starts_with("Stream") {
                let mut grpc = Grpc::new(ProstCodec::<Wire, DiscoveryRequest>::default())
                    .apply_max_message_size_config(max_decoding, None);
                let method = SotwMethod { xds, only: D::ONLY };
                Ok(grpc.streaming(method, request).await)
            } else if method.starts_with("Delta") {
                let mut grpc = Grpc::new(ProstCodec::<Wire, DeltaDiscoveryRequest>::default())
                    .apply_max_message_size_config(max_decoding, None);
                let method = DeltaMethod { xds, only: D::ONLY };
                Ok(grpc.streaming(method, request).await)
            } else if method.starts_with("Fetch") {
                Ok(Status::unimplemented(
                    "fetch (polling) is not served: open a stream (SotW or delta)",
                )
                .into_http())
            } else {
                Ok(Status::unimplemented("").into_http())
            }
        })
    }
}

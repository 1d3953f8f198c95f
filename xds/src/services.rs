//! The gRPC services: ADS (State of the World and delta) and the per-type CDS, EDS, LDS, RDS and
//! SDS services, all over the same stream engines.

use efms_commands::credentials::withdrawn;
use efms_commands::Scope;
use efms_domain::envoy::ResourceKind;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryService;
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryService;
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryService;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tonic::{Request, Response, Status, Streaming};

use crate::driver::{drive, ResponseStream};
use crate::identity::{authenticate, Credentials};
use crate::session::{token_expired, XdsServer};
use crate::{delta, sotw};

/// A stream of SotW responses.
pub type SotwStream = ResponseStream<DiscoveryResponse>;
/// A stream of delta responses.
pub type DeltaStream = ResponseStream<DeltaDiscoveryResponse>;

impl XdsServer {
    /// The credentials of a new stream: a token of a role that streams, not expired, whose user
    /// or proxy token was not withdrawn.
    async fn admit(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Credentials, Status> {
        let admitted = async {
            let credentials = authenticate(metadata, self.authenticator())?;
            if let Some(at) = credentials
                .expires_at
                .filter(|at| *at <= chrono::Utc::now())
            {
                return Err(token_expired(at));
            }
            if let Some(revocable) = credentials.revocable {
                let scope = Scope::Tenant(revocable.tenant_id());
                let withdrawn =
                    withdrawn(self.pool(), scope, revocable)
                        .await
                        .map_err(|error| {
                            tracing::error!(%error, "the xDS server cannot check a token");
                            Status::unavailable("the configuration store is unavailable; retry")
                        })?;
                if let Some(reason) = withdrawn {
                    return Err(Status::unauthenticated(reason.to_string()));
                }
            }
            Ok(credentials)
        };
        admitted.await.inspect_err(|_| {
            self.metrics().refused.inc();
        })
    }

    async fn start_sotw(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
        only: Option<ResourceKind>,
    ) -> Result<Response<SotwStream>, Status> {
        let credentials = self.admit(request.metadata()).await?;
        Ok(Response::new(drive::<sotw::Sotw>(
            self.clone(),
            credentials,
            request.into_inner(),
            only,
        )))
    }

    async fn start_delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
        only: Option<ResourceKind>,
    ) -> Result<Response<DeltaStream>, Status> {
        let credentials = self.admit(request.metadata()).await?;
        Ok(Response::new(drive::<delta::Delta>(
            self.clone(),
            credentials,
            request.into_inner(),
            only,
        )))
    }
}

fn no_fetch() -> Status {
    Status::unimplemented("fetch (polling) is not served: open a stream (SotW or delta)")
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<SotwStream>, Status> {
        self.start_sotw(request, None).await
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaStream>, Status> {
        self.start_delta(request, None).await
    }
}

/// Implements one per-type discovery service over the stream engines.
macro_rules! per_type_service {
    ($service:ident, $kind:expr, $stream:ident, $delta:ident, $fetch:ident, $stream_ty:ident, $delta_ty:ident) => {
        #[tonic::async_trait]
        impl $service for XdsServer {
            type $stream_ty = SotwStream;
            type $delta_ty = DeltaStream;

            async fn $stream(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<SotwStream>, Status> {
                self.start_sotw(request, Some($kind)).await
            }

            async fn $delta(
                &self,
                request: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<DeltaStream>, Status> {
                self.start_delta(request, Some($kind)).await
            }

            async fn $fetch(
                &self,
                _request: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                Err(no_fetch())
            }
        }
    };
}

per_type_service!(
    ClusterDiscoveryService,
    ResourceKind::Cluster,
    stream_clusters,
    delta_clusters,
    fetch_clusters,
    StreamClustersStream,
    DeltaClustersStream
);
per_type_service!(
    EndpointDiscoveryService,
    ResourceKind::Endpoints,
    stream_endpoints,
    delta_endpoints,
    fetch_endpoints,
    StreamEndpointsStream,
    DeltaEndpointsStream
);
per_type_service!(
    ListenerDiscoveryService,
    ResourceKind::Listener,
    stream_listeners,
    delta_listeners,
    fetch_listeners,
    StreamListenersStream,
    DeltaListenersStream
);
per_type_service!(
    RouteDiscoveryService,
    ResourceKind::Route,
    stream_routes,
    delta_routes,
    fetch_routes,
    StreamRoutesStream,
    DeltaRoutesStream
);
per_type_service!(
    SecretDiscoveryService,
    ResourceKind::Secret,
    stream_secrets,
    delta_secrets,
    fetch_secrets,
    StreamSecretsStream,
    DeltaSecretsStream
);

//! How a stream starts, whatever the service (ADS or a per-type one, see [`crate::grpc`]): its
//! token is checked, then the protocol's engine drives it.

use efms_commands::credentials::withdrawn;
use efms_commands::Scope;
use efms_domain::envoy::ResourceKind;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tonic::{Request, Response, Status, Streaming};

use crate::driver::{drive, ResponseStream};
use crate::identity::{authenticate, Credentials};
use crate::session::{token_expired, XdsServer};
use crate::wire::Wire;
use crate::{delta, sotw};

impl XdsServer {
    /// The credentials of a new stream: a token of a role that streams, not expired, whose user
    /// or proxy token was not withdrawn.
    pub(crate) async fn admit(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Credentials, Status> {
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

    /// Starts a State-of-the-World stream (of the one type `only`, for a per-type service).
    pub(crate) async fn start_sotw(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
        only: Option<ResourceKind>,
    ) -> Result<Response<ResponseStream<Wire>>, Status> {
        let credentials = self.admit(request.metadata()).await?;
        Ok(Response::new(drive::<sotw::Sotw>(
            self.clone(),
            credentials,
            request.into_inner(),
            only,
        )))
    }

    /// Starts a delta stream (of the one type `only`, for a per-type service).
    pub(crate) async fn start_delta(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
        only: Option<ResourceKind>,
    ) -> Result<Response<ResponseStream<Wire>>, Status> {
        let credentials = self.admit(request.metadata()).await?;
        Ok(Response::new(drive::<delta::Delta>(
            self.clone(),
            credentials,
            request.into_inner(),
            only,
        )))
    }
}

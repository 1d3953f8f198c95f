//! The tower service of `efms.fleet.v1.Fleet`, routed by hand like the discovery services.

use std::convert::Infallible;
use std::task::{Context, Poll};

use efms_fleet_proto::{AgentMessage, ServerCodec, ServerMessage, SERVICE};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};

use super::stream::ServerStream;
use super::FleetServer;

/// The largest report an agent may send (a snapshot of many containers).
const MAX_REPORT: usize = 4 * 1024 * 1024;

/// The fleet service over the agents' streams.
#[derive(Clone)]
pub(crate) struct FleetService {
    fleet: FleetServer,
}

impl FleetService {
    /// The service over `fleet`.
    pub(crate) fn new(fleet: FleetServer) -> Self {
        Self { fleet }
    }
}

impl NamedService for FleetService {
    const NAME: &'static str = SERVICE;
}

struct ConnectMethod {
    fleet: FleetServer,
}

impl StreamingService<AgentMessage> for ConnectMethod {
    type Response = ServerMessage;
    type ResponseStream = ServerStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<AgentMessage>>) -> Self::Future {
        let fleet = self.fleet.clone();
        Box::pin(async move { fleet.connect(request).await })
    }
}

impl<B> Service<http::Request<B>> for FleetService
where
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
        let fleet = self.fleet.clone();
        Box::pin(async move {
            if request.uri().path() == efms_fleet_proto::CONNECT_PATH {
                let mut grpc = Grpc::new(ServerCodec::default())
                    .apply_max_message_size_config(Some(MAX_REPORT), None);
                Ok(grpc.streaming(ConnectMethod { fleet }, request).await)
            } else {
                Ok(Status::unimplemented("").into_http())
            }
        })
    }
}

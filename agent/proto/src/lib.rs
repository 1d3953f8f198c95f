//! The fleet protocol `efms.fleet.v1` (`fleet.proto` beside this crate is its specification):
//! one bidirectional stream per agent, [`AgentMessage`]s up, [`ServerMessage`]s down, on the
//! control plane's gRPC listener.
//!
//! The messages are written with prost's derives rather than generated at build time, which would
//! need `protoc` or a build script; a test decodes each of them with the descriptor compiled from
//! `fleet.proto`, so the two cannot drift apart.
#![forbid(unsafe_code)]

mod messages;
mod orders;

pub use messages::*;
pub use orders::{order, Launch};

use tonic::codegen::http::uri::PathAndQuery;

/// The gRPC service's full name.
pub const SERVICE: &str = "efms.fleet.v1.Fleet";

/// The path of `Connect`, the service's one method.
pub const CONNECT_PATH: &str = "/efms.fleet.v1.Fleet/Connect";

/// The codec of the agent's side of the stream (it encodes [`AgentMessage`]s).
pub type AgentCodec = tonic_prost::ProstCodec<AgentMessage, ServerMessage>;

/// The codec of the server's side of the stream (it encodes [`ServerMessage`]s).
pub type ServerCodec = tonic_prost::ProstCodec<ServerMessage, AgentMessage>;

/// Opens `Connect` on `channel`: the agent's messages go up as `messages` yields them, the
/// server's come back on the returned stream.
pub async fn connect<S>(
    channel: tonic::transport::Channel,
    request: tonic::Request<S>,
) -> Result<tonic::Streaming<ServerMessage>, tonic::Status>
where
    S: tonic::codegen::tokio_stream::Stream<Item = AgentMessage> + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|error| {
        tonic::Status::unavailable(format!("the server cannot be reached: {error}"))
    })?;
    let path = PathAndQuery::from_static(CONNECT_PATH);
    let response = grpc.streaming(request, path, AgentCodec::default()).await?;
    Ok(response.into_inner())
}

//! A control plane for the link's tests: a real gRPC server on a loopback port that serves the
//! fleet protocol's `Connect` and hands each stream to the test, which reads what the agent sends
//! and answers as it scripts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use efms_fleet_proto::server_message::Body;
use efms_fleet_proto::{
    AgentMessage, Hello, ServerCodec, ServerMessage, Settings, Welcome, CONNECT_PATH, SERVICE,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::codegen::{http, Body as HttpBody, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};

use super::PATIENCE;

/// A running test server.
pub struct ControlPlane {
    /// Where it listens.
    pub address: SocketAddr,
    connections: mpsc::UnboundedReceiver<Connection>,
    server: JoinHandle<()>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ControlPlane {
    /// Starts a server on a free loopback port.
    pub async fn start() -> Self {
        Self::serve(tonic::transport::Server::builder()).await
    }

    /// Starts a server on a free loopback port that speaks TLS with this certificate chain and
    /// key (PEM).
    pub async fn start_tls(chain_pem: &str, key_pem: &str) -> Self {
        let identity = tonic::transport::Identity::from_pem(chain_pem, key_pem);
        let builder = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("the test certificate is usable");
        Self::serve(builder).await
    }

    async fn serve(mut builder: tonic::transport::Server) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (sender, connections) = mpsc::unbounded_channel();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tokio::spawn(async move {
            builder
                .add_service(FleetService {
                    connections: sender,
                })
                .serve_with_incoming(incoming)
                .await
                .expect("the test control plane serves");
        });
        Self {
            address,
            connections,
            server,
        }
    }

    /// The next stream an agent opens; panics after [`PATIENCE`].
    pub async fn next_connection(&mut self) -> Connection {
        tokio::time::timeout(PATIENCE, self.connections.recv())
            .await
            .expect("the agent connected")
            .expect("the server runs")
    }
}

/// One `Connect` stream, as the server sees it. Dropping it ends the server's side.
pub struct Connection {
    /// The `authorization` metadata the agent sent.
    pub authorization: Option<String>,
    received: mpsc::UnboundedReceiver<AgentMessage>,
    to_agent: mpsc::UnboundedSender<Result<ServerMessage, Status>>,
}

impl Connection {
    /// The agent's next message; `None` once it ended its side. Panics after [`PATIENCE`].
    pub async fn next(&mut self) -> Option<AgentMessage> {
        tokio::time::timeout(PATIENCE, self.received.recv())
            .await
            .expect("the agent sent a message or ended its stream")
    }

    /// The agent's next message, which must come.
    pub async fn expect(&mut self) -> AgentMessage {
        self.next().await.expect("the agent's stream goes on")
    }

    /// The first message of the stream, which must be an unnumbered Hello.
    pub async fn hello(&mut self) -> Hello {
        let message = self.expect().await;
        assert_eq!(message.seq, 0, "Hello takes no seq: {message:?}");
        match message.body {
            Some(efms_fleet_proto::agent_message::Body::Hello(hello)) => hello,
            other => panic!("the first message is Hello, not {other:?}"),
        }
    }

    /// Sends a message to the agent.
    pub fn send(&self, body: Body) {
        let _ = self.to_agent.send(Ok(ServerMessage { body: Some(body) }));
    }

    /// Answers Hello.
    pub fn welcome(&self, acked_seq: u64, heartbeat_interval_ms: u32, last_event_nanos: i64) {
        self.send(Body::Welcome(Welcome {
            tenant: "acme".into(),
            vm: "vm-1".into(),
            settings: Some(Settings {
                heartbeat_interval_ms,
                watch_images: vec![],
            }),
            acked_seq,
            last_event_nanos,
        }));
    }

    /// Ends the stream with `status`.
    pub fn fail(&self, status: Status) {
        let _ = self.to_agent.send(Err(status));
    }
}

#[derive(Clone)]
struct FleetService {
    connections: mpsc::UnboundedSender<Connection>,
}

impl NamedService for FleetService {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for FleetService
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let connections = self.connections.clone();
        Box::pin(async move {
            if request.uri().path() != CONNECT_PATH {
                return Ok(Status::unimplemented("").into_http());
            }
            let mut grpc = Grpc::new(ServerCodec::default());
            Ok(grpc.streaming(ConnectMethod { connections }, request).await)
        })
    }
}

type ToAgent = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

struct ConnectMethod {
    connections: mpsc::UnboundedSender<Connection>,
}

impl StreamingService<AgentMessage> for ConnectMethod {
    type Response = ServerMessage;
    type ResponseStream = ToAgent;
    type Future = BoxFuture<tonic::Response<ToAgent>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<AgentMessage>>) -> Self::Future {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut incoming = request.into_inner();
        let (received_sender, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(message)) = incoming.message().await {
                if received_sender.send(message).is_err() {
                    return;
                }
            }
        });
        let (to_agent, mut outgoing) = mpsc::unbounded_channel();
        let _ = self.connections.send(Connection {
            authorization,
            received,
            to_agent,
        });
        let stream: ToAgent = Box::pin(futures::stream::poll_fn(move |context| {
            outgoing.poll_recv(context)
        }));
        Box::pin(async move { Ok(tonic::Response::new(stream)) })
    }
}

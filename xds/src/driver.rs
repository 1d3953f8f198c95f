//! Drives one xDS stream, whatever its protocol: reads the proxy's requests, follows its group's
//! snapshot, and yields the responses its engine computes.
//!
//! The response stream tonic polls is the driver itself: no task and no channel sit between the
//! proxy's connection and the engine, so a push costs one wake-up of the connection, and a stream
//! ends (recording the disconnection) as soon as tonic drops it.

use std::collections::VecDeque;
use std::pin::Pin;

use efms_domain::envoy::ResourceKind;
use efms_domain::Actor;
use envoy_types::pb::envoy::config::core::v3::Node;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use crate::session::{Session, XdsServer};
use crate::status::Protocol;

/// A protocol's stream logic: requests in, responses out.
pub(crate) trait Engine: Sized + Send + 'static {
    /// What the proxy sends.
    type Request: prost::Message + Default + Send + 'static;
    /// What the server sends.
    type Response: Send + 'static;
    /// The protocol, for the status records.
    const PROTOCOL: Protocol;

    /// The node of a request (set on the first one).
    fn node(request: &Self::Request) -> Option<&Node>;
    /// The engine of a newly opened stream; `only` restricts it to one type (per-type services).
    fn new(session: Session, only: Option<ResourceKind>) -> Self;
    /// The stream's session.
    fn session(&mut self) -> &mut Session;
    /// Takes a request in.
    fn on_request(&mut self, request: Self::Request) -> Result<(), Status>;
    /// Notes that the group's snapshot changed.
    fn snapshot_changed(&mut self);
    /// Whether responses may be due.
    fn due(&self) -> bool;
    /// The responses due now, in the order to send them.
    fn responses(&mut self) -> Vec<Self::Response>;
}

/// The responses of one stream, as tonic wants them.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The response stream of a stream opened by `actor`.
pub(crate) fn drive<E: Engine>(
    server: XdsServer,
    actor: Actor,
    requests: Streaming<E::Request>,
    only: Option<ResourceKind>,
) -> ResponseStream<E::Response> {
    let state = State::<E>::Opening(Box::new(Opening {
        server,
        actor,
        requests,
        only,
    }));
    Box::pin(futures::stream::unfold(state, step::<E>))
}

enum State<E: Engine> {
    Opening(Box<Opening<E>>),
    Running(Box<Running<E>>),
    Done,
}

struct Opening<E: Engine> {
    server: XdsServer,
    actor: Actor,
    requests: Streaming<E::Request>,
    only: Option<ResourceKind>,
}

struct Running<E: Engine> {
    engine: E,
    requests: Streaming<E::Request>,
    queue: VecDeque<E::Response>,
    server: XdsServer,
}

enum Event<R> {
    Request(R),
    Ended,
    SnapshotChanged,
    Stopping,
}

impl<E: Engine> Running<E> {
    fn handle(&mut self, request: E::Request) -> Result<(), Status> {
        self.engine.on_request(request)?;
        self.refill();
        Ok(())
    }

    fn refill(&mut self) {
        if self.engine.due() {
            self.queue.extend(self.engine.responses());
        }
    }

    async fn next_event(&mut self) -> Event<E::Request> {
        let Self {
            engine,
            requests,
            server,
            ..
        } = self;
        tokio::select! {
            message = requests.message() => match message {
                Ok(Some(request)) => Event::Request(request),
                Ok(None) => Event::Ended,
                Err(status) => {
                    tracing::debug!(node = engine.session().connection.node_id, %status, "stream ended");
                    Event::Ended
                }
            },
            changed = engine.session().snapshot.changed() => {
                if changed.is_ok() { Event::SnapshotChanged } else { Event::Ended }
            }
            () = server.stopped() => Event::Stopping,
        }
    }
}

type Step<E> = Option<(Result<<E as Engine>::Response, Status>, State<E>)>;

async fn step<E: Engine>(state: State<E>) -> Step<E> {
    let mut running = match state {
        State::Done => return None,
        State::Running(running) => running,
        State::Opening(opening) => {
            let Opening {
                server,
                actor,
                mut requests,
                only,
            } = *opening;
            let Ok(Some(first)) = requests.message().await else {
                return None;
            };
            let session = match server.open(&actor, E::node(&first), E::PROTOCOL).await {
                Ok(session) => session,
                Err(status) => {
                    server.metrics().refused.inc();
                    return Some((Err(status), State::Done));
                }
            };
            let mut running = Box::new(Running {
                engine: E::new(session, only),
                requests,
                queue: VecDeque::new(),
                server,
            });
            if let Err(status) = running.handle(first) {
                return Some((Err(status), State::Done));
            }
            running
        }
    };
    loop {
        if let Some(response) = running.queue.pop_front() {
            return Some((Ok(response), State::Running(running)));
        }
        match running.next_event().await {
            Event::Request(request) => {
                if let Err(status) = running.handle(request) {
                    return Some((Err(status), State::Done));
                }
            }
            Event::SnapshotChanged => {
                running.engine.snapshot_changed();
                running.refill();
            }
            Event::Ended => return None,
            Event::Stopping => {
                return Some((
                    Err(Status::unavailable(
                        "the control plane is shutting down; reconnect",
                    )),
                    State::Done,
                ))
            }
        }
    }
}

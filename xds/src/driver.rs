//! Drives one xDS stream, whatever its protocol: reads the proxy's requests, follows its group's
//! snapshot, and yields the responses its engine computes.
//!
//! The response stream tonic polls is the driver itself: no task and no channel sit between the
//! proxy's connection and the engine, so a push costs one wake-up of the connection, and a stream
//! ends (recording the disconnection) as soon as tonic drops it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use efms_domain::envoy::ResourceKind;
use envoy_types::pb::envoy::config::core::v3::Node;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use efms_projections::snapshots::KindResources;
use efms_projections::GroupSnapshot;

use crate::identity::Credentials;
use crate::session::{kind_of, static_type_url, Session, XdsServer};
use crate::status::Protocol;

/// A protocol's stream logic: requests in, responses out, over the stream's [`Core`].
pub(crate) trait Engine: Send + 'static {
    /// What the proxy sends.
    type Request: prost::Message + Default + Send + 'static;
    /// What the server sends.
    type Response: Send + 'static;
    /// What the stream keeps per resource type.
    type State: TypeState;
    /// The protocol, for the status records.
    const PROTOCOL: Protocol;

    /// The node of a request (set on the first one).
    fn node(request: &Self::Request) -> Option<&Node>;
    /// Takes a request in.
    fn on_request(core: &mut Core<Self::State>, request: Self::Request) -> Result<(), Status>;
    /// The responses due now, in the order to send them.
    fn responses(core: &mut Core<Self::State>) -> Vec<Self::Response>;
}

/// What a stream keeps of one resource type.
pub(crate) trait TypeState: Default + Send + 'static {
    /// A request awaits an answer whatever the content (first request, new subscription).
    fn must_answer(&self) -> bool;
}

/// What every stream holds, whatever its protocol.
pub(crate) struct Core<T> {
    /// The proxy's session.
    pub session: Session,
    /// The one type a per-type service serves; `None` for ADS.
    pub only: Option<ResourceKind>,
    /// Per resource type.
    pub types: BTreeMap<ResourceKind, T>,
    /// Removals are held back until listeners and routes are answered.
    pub holding: bool,
    /// The snapshot changed since responses were last computed.
    pub stale: bool,
}

impl<T: TypeState> Core<T> {
    fn new(session: Session, only: Option<ResourceKind>) -> Self {
        Self {
            session,
            only,
            types: BTreeMap::new(),
            holding: false,
            stale: true,
        }
    }

    /// Whether responses may be due: the snapshot changed, a request awaits an answer, or
    /// removals are held back. A plain ACK needs nothing computed.
    fn due(&self) -> bool {
        self.stale || self.holding || self.types.values().any(TypeState::must_answer)
    }

    /// Starts a round of responses: the current snapshot, marked as seen.
    pub fn round(&mut self) -> Arc<GroupSnapshot> {
        self.stale = false;
        self.holding = false;
        self.session.snapshot.borrow_and_update().clone()
    }

    /// Whether a listener or route push is unanswered or due (`pending` says so of a type's
    /// state), in which case removals of what they may use wait.
    pub fn dependents_pending(&self, pending: impl Fn(ResourceKind, &T) -> bool) -> bool {
        [ResourceKind::Listener, ResourceKind::Route]
            .into_iter()
            .any(|kind| {
                self.types
                    .get(&kind)
                    .is_some_and(|state| pending(kind, state))
            })
    }

    /// The kind a request's type URL names; `None` for a type ADS does not serve (ignored, as
    /// Envoy may ask for more than we serve); an error for a type a per-type service does not
    /// serve.
    pub fn requested_kind(&self, type_url: &str) -> Result<Option<ResourceKind>, Status> {
        match (kind_of(type_url), self.only) {
            (Some(kind), None) => Ok(Some(kind)),
            (Some(kind), Some(only)) if kind == only => Ok(Some(kind)),
            (None, None) => {
                tracing::debug!(type_url, "a type this server does not serve");
                Ok(None)
            }
            (_, Some(only)) => Err(Status::invalid_argument(format!(
                "this service serves {}, not `{type_url}`",
                static_type_url(only)
            ))),
        }
    }
}

/// What a proxy subscribed to of one resource type.
#[derive(Debug, Default)]
pub(crate) struct Subscription {
    /// The proxy asked for the type.
    pub requested: bool,
    /// It wants every resource of the type.
    pub wildcard: bool,
    /// The names it wants, when not a wildcard.
    pub names: BTreeSet<String>,
}

impl Subscription {
    /// Whether the proxy follows the type: it asked, and wants everything or at least one name.
    /// Envoy does not answer responses to a type it stopped following.
    pub fn active(&self) -> bool {
        self.requested && (self.wildcard || !self.names.is_empty())
    }

    /// Whether the proxy wants the resource `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// What the proxy should have of `kind` in `snapshot`: for a wildcard, the snapshot's own set,
    /// shared.
    pub fn select(&self, snapshot: &GroupSnapshot, kind: ResourceKind) -> KindResources {
        if self.wildcard {
            snapshot.kind_resources(kind)
        } else {
            Arc::new(
                self.names
                    .iter()
                    .filter_map(|name| snapshot.get(kind, name).map(|r| (name.clone(), r.clone())))
                    .collect(),
            )
        }
    }
}

/// The responses of one stream, as tonic wants them.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The response stream of a stream opened with `credentials`.
pub(crate) fn drive<E: Engine>(
    server: XdsServer,
    credentials: Credentials,
    requests: Streaming<E::Request>,
    only: Option<ResourceKind>,
) -> ResponseStream<E::Response> {
    let state = State::<E>::Opening(Box::new(Opening {
        server,
        credentials,
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
    credentials: Credentials,
    requests: Streaming<E::Request>,
    only: Option<ResourceKind>,
}

struct Running<E: Engine> {
    engine: Core<E::State>,
    requests: Streaming<E::Request>,
    queue: VecDeque<E::Response>,
    server: XdsServer,
}

enum Event<R> {
    Request(R),
    Ended,
    SnapshotChanged,
    Stopping,
    /// The token expired or was withdrawn.
    Lapsed(Status),
}

impl<E: Engine> Running<E> {
    fn handle(&mut self, request: E::Request) -> Result<(), Status> {
        E::on_request(&mut self.engine, request)?;
        self.refill();
        Ok(())
    }

    fn refill(&mut self) {
        if self.engine.due() {
            self.queue.extend(E::responses(&mut self.engine));
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
                    tracing::debug!(node = engine.session.connection.node_id, %status, "stream ended");
                    Event::Ended
                }
            },
            changed = engine.session.snapshot.changed() => {
                if changed.is_ok() { Event::SnapshotChanged } else { Event::Ended }
            }
            () = server.stopped() => Event::Stopping,
            status = engine.session.lapse.lapsed() => Event::Lapsed(status),
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
                credentials,
                mut requests,
                only,
            } = *opening;
            let Ok(Some(first)) = requests.message().await else {
                return None;
            };
            let session = match server
                .open(&credentials, E::node(&first), E::PROTOCOL)
                .await
            {
                Ok(session) => session,
                Err(status) => {
                    server.metrics().refused.inc();
                    return Some((Err(status), State::Done));
                }
            };
            let mut running = Box::new(Running {
                engine: Core::new(session, only),
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
                running.engine.stale = true;
                running.refill();
            }
            Event::Ended => return None,
            Event::Lapsed(status) => {
                tracing::info!(node = running.engine.session.connection.node_id, %status, "ending a stream whose token lapsed");
                return Some((Err(status), State::Done));
            }
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

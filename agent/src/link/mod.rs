//! The agent's link to the control plane: one `Connect` stream of the fleet protocol
//! (`efms.fleet.v1`) at a time, opened again with backoff whenever it ends, until shutdown.
//!
//! Each stream is authenticated by the VM's join token (read from its file at every attempt, so
//! a new token takes effect without a restart) and opens with `Hello`; the server's `Welcome`
//! says what it stored of this process's reports, and the reports after that are sent again, in
//! order, before new ones. What the agent reports is `reporter`'s job; what is kept until
//! acknowledged, `outbox`'s; the settings and the endpoint they make, `settings`'s.

mod backoff;
mod orders;
mod outbox;
mod reporter;
mod settings;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use efms_fleet_proto as proto;
use efms_fleet_proto::server_message::Body as ServerBody;
use efms_fleet_proto::{AgentMessage, ServerMessage};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tonic::{Code, Status, Streaming};

use crate::events::Cursor;
use crate::host;
use crate::inventory::Watch;
use crate::report;
use backoff::Backoff;
use orders::Orders;
use outbox::Outbox;
use reporter::{Instructions, ReporterSettings};
use settings::endpoint;
pub use settings::{
    parse_labels, LinkError, LinkSettings, DEFAULT_CONFIG_CHECK_INTERVAL, DEFAULT_STATE_DIR,
};

/// The heartbeat interval until the control plane says another.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest heartbeat interval the agent keeps to, whatever it is told.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// How long the server may take to answer `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shutdown waits for the server to close its side, reading its last acks.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Messages queued on a stream ahead of the network.
const STREAM_QUEUE: usize = 64;

/// Runs the link until `shutdown` resolves: then the stream is closed (the server reads its end)
/// and the function returns. Connection failures, refused tokens and engine outages are logged
/// and retried; only settings that cannot work are errors.
pub async fn run<F: Future>(settings: LinkSettings, shutdown: F) -> Result<(), LinkError> {
    let endpoint = endpoint(&settings)?;
    let facts = host::facts::collect(None).await?;
    let outbox = Arc::new(Outbox::new(settings.buffer_capacity));
    let (facts_sender, facts) = watch::channel(report::host_facts(&facts));
    let (instructions, instructions_receiver) = watch::channel(None);
    let _reporter = AbortOnDrop::spawn(reporter::run(
        ReporterSettings {
            docker_host: settings.docker_host.clone(),
            config_check_interval: settings.config_check_interval,
        },
        outbox.clone(),
        facts_sender,
        instructions_receiver,
    ));
    let epoch = uuid::Uuid::new_v4().simple().to_string();
    tracing::info!(server = %settings.server, %epoch, "linking to the control plane");
    let orders = Arc::new(Orders::new(
        settings.docker_host.clone(),
        settings.state_dir.clone(),
        outbox.clone(),
    ));
    let link = Link {
        endpoint,
        settings,
        epoch,
        outbox,
        facts,
        instructions,
        orders,
    };
    let (stop, stopped) = watch::channel(false);
    let connections = link.connect_until_stopped(stopped);
    tokio::pin!(connections);
    tokio::select! {
        () = &mut connections => return Ok(()),
        _ = shutdown => {}
    }
    stop.send_replace(true);
    connections.await;
    tracing::info!("link to the control plane closed");
    Ok(())
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T: Send + 'static> AbortOnDrop<T> {
    fn spawn(task: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }

    /// Waits for the task's output; `None` when it panicked.
    async fn join(&mut self) -> Option<T> {
        (&mut self.0).await.ok()
    }
}

/// How a stream ended.
enum StreamEnd {
    /// Shutdown.
    Stopped,
    /// The server refused the token or revoked it.
    Refused(String),
    /// Anything else; `welcomed` when the server had answered `Hello`.
    Failed { welcomed: bool, reason: String },
}

impl StreamEnd {
    fn from_status(status: &Status, welcomed: bool) -> Self {
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => {
                Self::Refused(format!("{:?}: {}", status.code(), status.message()))
            }
            code => Self::Failed {
                welcomed,
                reason: format!("{code:?}: {}", status.message()),
            },
        }
    }

    fn failed(welcomed: bool, reason: impl Into<String>) -> Self {
        Self::Failed {
            welcomed,
            reason: reason.into(),
        }
    }
}

struct Link {
    endpoint: Endpoint,
    settings: LinkSettings,
    epoch: String,
    outbox: Arc<Outbox>,
    facts: watch::Receiver<proto::HostFacts>,
    instructions: watch::Sender<Option<Instructions>>,
    /// The control plane's orders on the VM's containers.
    orders: Arc<Orders>,
}

/// Resolves once `stop` says so (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

impl Link {
    async fn connect_until_stopped(&self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(self.settings.backoff_initial, self.settings.backoff_max);
        loop {
            let end = match read_token(&self.settings) {
                Ok(token) => self.stream(&token, stop.clone()).await,
                Err(reason) => StreamEnd::failed(false, reason),
            };
            let wait = match end {
                StreamEnd::Stopped => return,
                StreamEnd::Refused(reason) => {
                    tracing::error!(
                        %reason,
                        "the control plane refused this agent's join token; retrying with the \
                         token file read again"
                    );
                    backoff.longest()
                }
                StreamEnd::Failed { welcomed, reason } => {
                    if welcomed {
                        backoff.reset();
                    }
                    tracing::warn!(%reason, "the stream to the control plane ended");
                    backoff.next()
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stopped(&mut stop) => return,
            }
        }
    }

    fn hello(&self) -> AgentMessage {
        AgentMessage {
            // Hello is not a report: it is never stored nor acknowledged, so it takes no seq.
            seq: 0,
            body: Some(proto::agent_message::Body::Hello(proto::Hello {
                epoch: self.epoch.clone(),
                facts: Some(self.facts.borrow().clone()),
                region: self.settings.region.clone(),
                zone: self.settings.zone.clone(),
                labels: self
                    .settings
                    .labels
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect(),
            })),
        }
    }

    /// One stream: Hello, Welcome, then the reports after what the server stored, until it ends.
    async fn stream(&self, token: &str, mut stop: watch::Receiver<bool>) -> StreamEnd {
        let opened = tokio::select! {
            opened = self.open(token) => opened,
            () = stopped(&mut stop) => return StreamEnd::Stopped,
        };
        let (to_server, mut responses) = match opened {
            Ok(opened) => opened,
            Err(end) => return end,
        };
        let welcome = tokio::select! {
            welcome = tokio::time::timeout(WELCOME_TIMEOUT, responses.message()) => welcome,
            () = stopped(&mut stop) => return StreamEnd::Stopped,
        };
        let welcome = match welcome {
            Ok(Ok(message)) => match welcomed(message) {
                Ok(welcome) => welcome,
                Err(end) => return end,
            },
            Ok(Err(status)) => return StreamEnd::from_status(&status, false),
            Err(_) => {
                let reason = format!("no Welcome within {WELCOME_TIMEOUT:?}");
                return StreamEnd::failed(false, reason);
            }
        };
        tracing::info!(
            tenant = %welcome.tenant,
            vm = %welcome.vm,
            acked_seq = welcome.acked_seq,
            "connected to the control plane"
        );
        self.outbox.ack(welcome.acked_seq);
        let resume_from =
            (welcome.last_event_nanos > 0).then_some(Cursor(welcome.last_event_nanos));
        self.instructions.send_replace(Some(Instructions {
            heartbeat_interval: heartbeat_interval(welcome.settings.as_ref()),
            watch: watch_of(welcome.settings.as_ref()),
            resume_from,
        }));
        let outbox = self.outbox.clone();
        let sender = AbortOnDrop::spawn(pump(outbox, to_server, welcome.acked_seq));
        loop {
            tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(message)) => {
                        if let Some(end) = self.on_server_message(message) {
                            return end;
                        }
                    }
                    Ok(None) => return StreamEnd::failed(true, "the server ended the stream"),
                    Err(status) => return StreamEnd::from_status(&status, true),
                },
                () = stopped(&mut stop) => {
                    // The request stream ends with the pump's sender: the server sees the end.
                    drop(sender);
                    let acks = self.read_acks(&mut responses);
                    let _ = tokio::time::timeout(CLOSE_GRACE, acks).await;
                    return StreamEnd::Stopped;
                }
            }
        }
    }

    /// Connects and opens `Connect` with Hello queued: the queue to the server and the server's
    /// messages.
    async fn open(
        &self,
        token: &str,
    ) -> Result<(mpsc::Sender<AgentMessage>, Streaming<ServerMessage>), StreamEnd> {
        let channel = self.endpoint.connect().await.map_err(|error| {
            StreamEnd::failed(false, format!("cannot connect: {}", chain(&error)))
        })?;
        let authorization = format!("Bearer {token}")
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| {
                StreamEnd::failed(
                    false,
                    "the token file holds characters a header cannot carry",
                )
            })?;
        let (to_server, mut outgoing) = mpsc::channel(STREAM_QUEUE);
        to_server
            .try_send(self.hello())
            .map_err(|_| StreamEnd::failed(false, "the stream's queue refused Hello"))?;
        let messages = futures::stream::poll_fn(move |context| outgoing.poll_recv(context));
        let mut request = tonic::Request::new(messages);
        request
            .metadata_mut()
            .insert("authorization", authorization);
        let responses = proto::connect(channel, request)
            .await
            .map_err(|status| StreamEnd::from_status(&status, false))?;
        Ok((to_server, responses))
    }

    fn on_server_message(&self, message: ServerMessage) -> Option<StreamEnd> {
        match message.body {
            Some(ServerBody::Ack(ack)) => self.outbox.ack(ack.seq),
            Some(ServerBody::Refused(refused)) => {
                // The server stored nothing of it and counts it as answered: resending it
                // would be refused again.
                tracing::warn!(seq = refused.seq, field = %refused.field, problem = %refused.problem,
                    "the control plane refused a report");
                self.outbox.ack(refused.seq);
            }
            Some(ServerBody::Settings(settings)) => {
                self.instructions.send_modify(|instructions| {
                    if let Some(instructions) = instructions {
                        instructions.heartbeat_interval = heartbeat_interval(Some(&settings));
                        instructions.watch = watch_of(Some(&settings));
                    }
                });
            }
            Some(ServerBody::Revoked(revoked)) => return Some(StreamEnd::Refused(revoked.reason)),
            Some(ServerBody::Order(order)) => self.orders.accept(order),
            Some(ServerBody::Welcome(_)) => {
                tracing::warn!("the server sent a second Welcome on one stream: ignored");
            }
            None => {}
        }
        None
    }

    /// Reads the server's last acks until it closes its side.
    async fn read_acks(&self, responses: &mut Streaming<ServerMessage>) {
        while let Ok(Some(message)) = responses.message().await {
            match message.body {
                Some(ServerBody::Ack(ack)) => self.outbox.ack(ack.seq),
                Some(ServerBody::Refused(refused)) => self.outbox.ack(refused.seq),
                _ => {}
            }
        }
    }
}

/// The server's answer to Hello, which must be `Welcome`.
fn welcomed(message: Option<ServerMessage>) -> Result<proto::Welcome, StreamEnd> {
    match message.and_then(|message| message.body) {
        Some(ServerBody::Welcome(welcome)) => Ok(welcome),
        Some(ServerBody::Revoked(revoked)) => Err(StreamEnd::Refused(revoked.reason)),
        Some(_) => Err(StreamEnd::failed(
            false,
            "the server did not answer Welcome",
        )),
        None => Err(StreamEnd::failed(
            false,
            "the server ended the stream before Welcome",
        )),
    }
}

/// Sends the outbox's reports after `sent`, in order, as they come.
async fn pump(outbox: Arc<Outbox>, to_server: mpsc::Sender<AgentMessage>, mut sent: u64) {
    loop {
        for message in outbox.next_batch(&mut sent).await {
            if to_server.send(message).await.is_err() {
                return;
            }
        }
    }
}

fn heartbeat_interval(settings: Option<&proto::Settings>) -> Duration {
    match settings.map_or(0, |settings| settings.heartbeat_interval_ms) {
        0 => DEFAULT_HEARTBEAT_INTERVAL,
        millis => Duration::from_millis(u64::from(millis)).max(MIN_HEARTBEAT_INTERVAL),
    }
}

fn watch_of(settings: Option<&proto::Settings>) -> Watch {
    Watch {
        images: settings.map_or_else(Vec::new, |settings| settings.watch_images.clone()),
    }
}

/// The join token, trimmed.
fn read_token(settings: &LinkSettings) -> Result<String, String> {
    let path = &settings.token_file;
    let token = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read the token file {}: {error}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// An error and its sources, for the logs (tonic's transport errors say little on their own).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_the_default_until_told_and_never_absurdly_short() {
        assert_eq!(heartbeat_interval(None), DEFAULT_HEARTBEAT_INTERVAL);
        let told = |ms| proto::Settings {
            heartbeat_interval_ms: ms,
            watch_images: vec![],
        };
        assert_eq!(
            heartbeat_interval(Some(&told(0))),
            DEFAULT_HEARTBEAT_INTERVAL
        );
        assert_eq!(
            heartbeat_interval(Some(&told(200))),
            Duration::from_millis(200)
        );
        assert_eq!(heartbeat_interval(Some(&told(1))), MIN_HEARTBEAT_INTERVAL);
    }
}

//! One agent's stream: who it is, then each report checked, stored and acknowledged.

use std::collections::HashSet;
use std::pin::Pin;
use std::time::Instant;

use efms_commands::fleet::presence;
use efms_commands::fleet::presence_writer::{Beat, Stored};
use efms_commands::fleet::{tokens, tokens::Joined, FleetError};
use efms_commands::CommandError;
use efms_domain::fleet::reports::ReportFault;
use efms_domain::fleet::{VmCommand, VmError};
use efms_fleet_proto::{
    agent_message::Body, server_message, Ack, AgentMessage, Hello, Refused, Revoked, ServerMessage,
    Settings, Welcome,
};
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{convert, FleetServer};

mod orders;
mod reports;

/// The server's half of an agent's stream.
pub(crate) type ServerStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

/// How a report went.
enum Outcome {
    /// Stored (or a resend of one stored before); `recorded` when the report's seq was stored
    /// with it.
    Stored {
        last_event_nanos: Option<i64>,
        recorded: bool,
    },
    /// Refused; nothing of it stored.
    Refused(ReportFault),
}

/// The most container ids a stream remembers as checked to be on its VM.
const KNOWN_CONTAINERS: usize = 4_096;
/// How long a stream trusts that a container it stored is its VM's before checking again (a
/// container's events come about once a minute; checking each would cost a read per event).
const KNOWN_CONTAINERS_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// A heartbeat that changes nothing is still decided by the VM at least this many heartbeat
/// intervals apart, so that a VM another replica took down comes back up.
const HEARTBEAT_RECHECK_INTERVALS: u32 = 3;

/// One open stream's identity and where its reports stand.
struct Agent {
    joined: Joined,
    epoch: String,
    /// This stream (a reconnection is another).
    stream_id: uuid::Uuid,
    cpus: Option<u32>,
    acked: u64,
    /// The engine's reachability the VM last decided on, and when.
    decided: Option<(bool, Instant)>,
    /// Containers stored as this VM's after a check that no other VM has them, since
    /// `known_since`.
    known_here: HashSet<String>,
    known_since: Instant,
    /// The images its VM watches, as told in `Welcome`.
    watch_images: Vec<String>,
    /// Operations sent to it as orders and not finished.
    ordered: HashSet<uuid::Uuid>,
}

impl Agent {
    /// Remembers that `ids` were stored as this VM's containers.
    fn remember_here(&mut self, ids: &[String]) {
        if self.known_here.len() + ids.len() > KNOWN_CONTAINERS {
            self.known_here.clear();
        }
        self.known_here.extend(ids.iter().cloned());
    }
}

fn stored_or_status(error: FleetError) -> Status {
    match error {
        CommandError::Rejected(VmError::Removed | VmError::NotFound) => {
            Status::permission_denied("the VM was removed")
        }
        CommandError::Rejected(error) => Status::invalid_argument(error.to_string()),
        CommandError::Conflict => Status::aborted("a concurrent change won; reconnect"),
        CommandError::Unavailable(error) => {
            Status::unavailable(format!("the database is unavailable: {error}"))
        }
        CommandError::Internal(error) => Status::internal(error.to_string()),
    }
}

fn database(error: &impl std::fmt::Display) -> Status {
    Status::unavailable(format!("the database is unavailable: {error}"))
}

fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<String, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| {
            Status::unauthenticated("an agent's stream needs `authorization: Bearer <join token>`")
        })?
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
    value
        .strip_prefix("Bearer ")
        .map(|token| token.trim().to_owned())
        .ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
        })
}

impl FleetServer {
    /// Opens an agent's stream: checks its token and its `Hello`, answers `Welcome`, then serves
    /// its reports until it ends, its token is revoked or the process stops.
    pub(crate) async fn connect(
        &self,
        request: tonic::Request<Streaming<AgentMessage>>,
    ) -> Result<tonic::Response<ServerStream>, Status> {
        let inner = &self.inner;
        let token = bearer(request.metadata())?;
        let pool = inner.fleet.pool().clone();
        let Some(joined) = tokens::authenticate(&pool, &token)
            .await
            .map_err(|error| database(&error))?
        else {
            inner.metrics.refused.inc();
            return Err(Status::unauthenticated(
                "the join token is unknown or revoked: issue a new one with POST /vms/{name}/token",
            ));
        };
        let mut incoming = request.into_inner();
        let first = tokio::time::timeout(self.settings().hello_timeout, incoming.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within the time allowed"))??;
        let Some(AgentMessage {
            body: Some(Body::Hello(hello)),
            ..
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        let mut agent = self.hello(joined, &hello).await?;
        agent.watch_images =
            tokens::watched_while_live(&pool, agent.joined.tenant_id, agent.joined.token_id)
                .await
                .map_err(|error| database(&error))?
                .ok_or_else(|| Status::unauthenticated("the join token was revoked meanwhile"))?;
        let resume = presence::connected(
            &pool,
            agent.joined.tenant_id,
            &agent.joined.vm,
            &agent.epoch,
            agent.stream_id,
        )
        .await
        .map_err(|error| database(&error))?;
        agent.acked = u64::try_from(resume.acked_seq).unwrap_or(0);
        let (sender, receiver) = mpsc::channel::<Result<ServerMessage, Status>>(64);
        let welcome = Welcome {
            tenant: agent.joined.tenant.clone(),
            vm: agent.joined.vm.clone(),
            settings: Some(self.agent_settings(&agent)),
            acked_seq: agent.acked,
            last_event_nanos: resume.last_event_nanos,
        };
        let _ = sender.try_send(Ok(message(server_message::Body::Welcome(welcome))));
        tracing::info!(tenant = %agent.joined.tenant, vm = %agent.joined.vm, epoch = %agent.epoch,
            acked = agent.acked, "agent connected");
        let server = self.clone();
        tokio::spawn(async move {
            inner_metrics_streams(&server, 1);
            let end = server.serve(&mut agent, incoming, &sender).await;
            if let Err(status) = end {
                let _ = sender.send(Err(status)).await;
            }
            let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.clone());
            if let Err(error) =
                presence::disconnected(server.inner.fleet.pool(), tenant_id, &vm, agent.stream_id)
                    .await
            {
                tracing::warn!(%error, %vm, "could not record an agent's disconnection");
            }
            inner_metrics_streams(&server, -1);
            tracing::info!(%vm, "agent stream ended");
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    /// What the agent is told to do: its heartbeat interval and the images it watches.
    fn agent_settings(&self, agent: &Agent) -> Settings {
        Settings {
            heartbeat_interval_ms: u32::try_from(self.settings().heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            watch_images: agent.watch_images.clone(),
        }
    }

    /// Checks `Hello` and records the facts and the heartbeat it stands for.
    async fn hello(&self, joined: Joined, hello: &Hello) -> Result<Agent, Status> {
        if hello.epoch.is_empty() || hello.epoch.len() > 200 {
            return Err(Status::invalid_argument("hello.epoch: 1 to 200 characters"));
        }
        let facts = hello
            .facts
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("hello.facts: is required"))?;
        let facts = convert::facts("hello.facts", facts)
            .map_err(|fault| Status::invalid_argument(fault.to_string()))?;
        let engine_reachable = facts.docker.is_some();
        let cpus = Some(facts.cpu_count);
        let fleet = &self.inner.fleet;
        let (tenant_id, vm) = (joined.tenant_id, joined.vm.clone());
        fleet
            .report(tenant_id, &vm, VmCommand::ReportFacts { facts })
            .await
            .map_err(stored_or_status)?;
        let mut agent = Agent {
            joined,
            epoch: hello.epoch.clone(),
            stream_id: uuid::Uuid::new_v4(),
            cpus,
            acked: 0,
            decided: None,
            known_here: HashSet::new(),
            known_since: Instant::now(),
            watch_images: Vec::new(),
            ordered: HashSet::new(),
        };
        // Hello stands for a heartbeat when it knows the engine answers; an agent that has not
        // reached its engine yet lets its first heartbeat say (no passing `docker_unreachable`).
        if engine_reachable {
            let beat = Beat {
                engine_error: None,
                usage: None,
                report: None,
            };
            self.heartbeat(&mut agent, beat).await?;
        }
        if !hello.region.is_empty() || !hello.zone.is_empty() || !hello.labels.is_empty() {
            tracing::warn!(%vm, region = %hello.region, zone = %hello.zone, labels = ?hello.labels,
                "the agent's --region, --zone and --label flags are ignored: the API's values hold");
        }
        Ok(agent)
    }

    /// Records a heartbeat; the VM decides on it when the engine's reachability changed, or
    /// when it has not for a few intervals. The report is recorded as stored with the heartbeat,
    /// or after the VM decided on it when it does.
    async fn heartbeat(&self, agent: &mut Agent, beat: Beat) -> Result<(), Status> {
        let fleet = &self.inner.fleet;
        let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.clone());
        let engine_reachable = beat.engine_error.is_none();
        let recheck = self.settings().heartbeat_interval * HEARTBEAT_RECHECK_INTERVALS;
        let decide = !agent
            .decided
            .is_some_and(|(reachable, at)| reachable == engine_reachable && at.elapsed() < recheck);
        let reason = beat.engine_error.clone();
        let report = beat.report.clone().filter(|_| decide);
        let presence = Beat {
            report: beat.report.filter(|_| !decide),
            ..beat
        };
        fleet
            .presence()
            .heartbeat(tenant_id, &vm, presence)
            .await
            .map_err(|error| database(&error))?;
        if !decide {
            return Ok(());
        }
        let command = VmCommand::Heartbeat {
            engine_reachable,
            reason,
        };
        fleet
            .report(tenant_id, &vm, command)
            .await
            .map_err(stored_or_status)?;
        agent.decided = Some((engine_reachable, Instant::now()));
        if let Some(report) = report {
            fleet
                .presence()
                .stored(tenant_id, &vm, report, None)
                .await
                .map_err(|error| database(&error))?;
        }
        Ok(())
    }

    /// Serves reports until the stream ends (`Ok`) or must end with a status.
    async fn serve(
        &self,
        agent: &mut Agent,
        mut incoming: Streaming<AgentMessage>,
        sender: &mpsc::Sender<Result<ServerMessage, Status>>,
    ) -> Result<(), Status> {
        let inner = &self.inner;
        let mut stopping = inner.stopping.subscribe();
        let token = (agent.joined.tenant_id, agent.joined.token_id);
        let images = agent.watch_images.clone();
        let mut watching = inner.tokens.watch(agent.stream_id, token, images);
        let mut nudges =
            inner
                .dispatch
                .register(agent.stream_id, agent.joined.tenant_id, &agent.joined.vm);
        self.send_orders(agent, sender).await?;
        let mut carried = None;
        loop {
            let next = if let Some(next) = carried.take() {
                next
            } else {
                tokio::select! {
                    next = incoming.next() => next,
                    changed = watching.verdict.changed() => {
                        if changed.is_ok() {
                            let verdict = watching.verdict.borrow_and_update().clone();
                            self.follow_token(agent, verdict, sender).await?;
                        }
                        continue;
                    }
                    changed = nudges.nudged.changed() => {
                        if changed.is_ok() {
                            nudges.nudged.mark_unchanged();
                            self.send_orders(agent, sender).await?;
                        }
                        continue;
                    }
                    () = async { drop(stopping.wait_for(|stop| *stop).await); } => {
                        return Err(Status::unavailable("the server is stopping; reconnect"));
                    }
                }
            };
            let Some(received) = next else {
                return Ok(());
            };
            let outcomes = match new_event(received?, agent.acked) {
                Ok(first) => {
                    let events = together(first, &mut incoming, &mut carried, agent.acked);
                    let outcomes = self.store_events(agent, events).await?;
                    outcomes
                        .into_iter()
                        .map(|(seq, o)| (seq, Some(o)))
                        .collect()
                }
                Err(report) if report.seq != 0 && report.seq <= agent.acked => {
                    vec![(report.seq, None)]
                }
                Err(report) => vec![(report.seq, Some(self.store(agent, *report).await?))],
            };
            for (seq, outcome) in outcomes {
                let answer = self.answer(agent, seq, outcome).await?;
                if !self.send_or_cut(sender, answer).await? {
                    return Ok(());
                }
            }
        }
    }

    /// Sends `body` to the agent; `false` when the agent is gone. An agent that stops reading
    /// is cut once the channel stays full for a re-check interval, rather than holding this
    /// stream's loop.
    async fn send_or_cut(
        &self,
        sender: &mpsc::Sender<Result<ServerMessage, Status>>,
        body: server_message::Body,
    ) -> Result<bool, Status> {
        let sent = sender.send(Ok(message(body)));
        match tokio::time::timeout(self.settings().recheck, sent).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(_)) => Ok(false),
            Err(_) => Err(Status::resource_exhausted("the agent does not read")),
        }
    }

    /// The answer to report `seq` given how it went (`None`: stored before, a resend), once
    /// where the agent's reports stand is marked.
    async fn answer(
        &self,
        agent: &mut Agent,
        seq: u64,
        outcome: Option<Outcome>,
    ) -> Result<server_message::Body, Status> {
        match outcome {
            None => {}
            Some(Outcome::Stored {
                last_event_nanos,
                recorded,
            }) => {
                if recorded {
                    agent.acked = agent.acked.max(seq);
                } else {
                    self.acknowledge(agent, seq, last_event_nanos).await?;
                }
            }
            Some(Outcome::Refused(fault)) => {
                self.inner.metrics.reports_refused.inc();
                tracing::warn!(vm = %agent.joined.vm, seq, %fault, "report refused");
                self.acknowledge(agent, seq, None).await?;
                return Ok(server_message::Body::Refused(Refused {
                    seq,
                    field: fault.field,
                    problem: fault.problem,
                }));
            }
        }
        Ok(server_message::Body::Ack(Ack { seq }))
    }

    async fn acknowledge(
        &self,
        agent: &mut Agent,
        seq: u64,
        last_event_nanos: Option<i64>,
    ) -> Result<(), Status> {
        let (tenant_id, vm) = (agent.joined.tenant_id, agent.joined.vm.as_str());
        let report = Stored {
            epoch: agent.epoch.clone(),
            seq: i64::try_from(seq).unwrap_or(i64::MAX),
        };
        self.inner
            .fleet
            .presence()
            .stored(tenant_id, vm, report, last_event_nanos)
            .await
            .map_err(|error| database(&error))?;
        agent.acked = agent.acked.max(seq);
        Ok(())
    }

    /// Ends the stream with `Revoked` when its token is no longer live (`verdict` is `None`);
    /// tells the agent its new settings when the images its VM watches changed.
    async fn follow_token(
        &self,
        agent: &mut Agent,
        verdict: Option<Vec<String>>,
        sender: &mpsc::Sender<Result<ServerMessage, Status>>,
    ) -> Result<(), Status> {
        if let Some(images) = verdict {
            if images != agent.watch_images {
                agent.watch_images = images;
                let settings = self.agent_settings(agent);
                sender
                    .send(Ok(message(server_message::Body::Settings(settings))))
                    .await
                    .map_err(|_| Status::cancelled("the agent is gone"))?;
            }
            return Ok(());
        }
        let reason = "the join token was revoked or the VM removed".to_owned();
        let _ = sender
            .send(Ok(message(server_message::Body::Revoked(Revoked {
                reason: reason.clone(),
            }))))
            .await;
        Err(Status::permission_denied(reason))
    }
}

/// The most lifecycle events that arrived together stored in one record.
const EVENTS_TOGETHER: usize = 256;

/// What the next read of a stream gave: a report, an error, or its end.
type Next = Option<Result<AgentMessage, Status>>;

/// `report` as a lifecycle event not stored before (its seq after `acked`), or `report` back.
fn new_event(
    report: AgentMessage,
    acked: u64,
) -> Result<(u64, efms_fleet_proto::ContainerEvent), Box<AgentMessage>> {
    match report {
        AgentMessage {
            seq,
            body: Some(Body::Event(event)),
        } if seq == 0 || seq > acked => Ok((seq, event)),
        other => Err(Box::new(other)),
    }
}

/// `first` and the new lifecycle events that arrived with it (read without waiting, up to
/// [`EVENTS_TOGETHER`]), so that an agent catching up is stored in few records; the first other
/// thing read is `carried` to the next turn.
fn together(
    first: (u64, efms_fleet_proto::ContainerEvent),
    incoming: &mut Streaming<AgentMessage>,
    carried: &mut Option<Next>,
    acked: u64,
) -> Vec<(u64, efms_fleet_proto::ContainerEvent)> {
    use futures::FutureExt as _;
    let mut events = vec![first];
    while events.len() < EVENTS_TOGETHER {
        match incoming.next().now_or_never() {
            None => break,
            Some(Some(Ok(report))) => match new_event(report, acked) {
                Ok(event) => events.push(event),
                Err(report) => {
                    *carried = Some(Some(Ok(*report)));
                    break;
                }
            },
            Some(next) => {
                *carried = Some(next);
                break;
            }
        }
    }
    events
}

fn message(body: server_message::Body) -> ServerMessage {
    ServerMessage { body: Some(body) }
}

fn inner_metrics_streams(server: &FleetServer, delta: i64) {
    server.inner.metrics.agent_streams.inc_by(delta);
}

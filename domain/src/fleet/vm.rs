//! The VM aggregate: its registration, join tokens, facts, state and its containers' history.

use std::collections::{BTreeMap, BTreeSet};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{Container, ContainerState, HostFacts, LifecycleEvent};
use super::operations::{ContainerOperation, OperationOutcome};
use super::state::VmState;
pub use super::vm_values::{check_image, check_label, VmName, VmPlacement, MAX_WATCHED_IMAGES};

/// How many recent lifecycle events of a container are remembered to drop repeats of them.
const REMEMBERED_EVENTS: usize = 64;

/// How many containers known to be gone are remembered, to drop late events of theirs (an
/// agent tells its snapshot before replaying the events since its cursor).
const REMEMBERED_GONE: usize = 256;

/// How many operations failed by the VM going down are remembered, to record the agent's late
/// word on them.
const REMEMBERED_ABANDONED: usize = 64;

/// How many finished operations are remembered, so that one asked again changes nothing.
const REMEMBERED_FINISHED: usize = 256;

/// Commands on a VM.
#[derive(Debug, Clone, PartialEq)]
pub enum VmCommand {
    /// Register the VM with its first join token.
    Register {
        /// Its name.
        name: VmName,
        /// Its labels, region and zone.
        placement: VmPlacement,
        /// The id of its join token.
        token_id: Uuid,
    },
    /// Set where it is, its labels and what its agent watches (an event only when it differs).
    Place {
        /// The new placement, whole.
        placement: VmPlacement,
    },
    /// Replace its join token.
    IssueToken {
        /// The new token's id.
        token_id: Uuid,
    },
    /// What the host is now (an event only when it differs).
    ReportFacts {
        /// The facts.
        facts: HostFacts,
    },
    /// A heartbeat arrived.
    Heartbeat {
        /// Whether the Docker engine answers.
        engine_reachable: bool,
        /// Why it does not, when it does not.
        reason: Option<String>,
    },
    /// No heartbeat within the interval and its grace.
    Silence {
        /// What was last heard, for the record.
        reason: String,
    },
    /// Every watched container as it is now: new and changed ones are observed, the known ones
    /// it lacks are gone.
    Observe {
        /// The containers.
        containers: Vec<Container>,
    },
    /// Lifecycle events from the engine; those already recorded are dropped.
    Record {
        /// The events, in the engine's order.
        events: Vec<LifecycleEvent>,
    },
    /// Ask the VM's agent to act on its containers (the VM must be ready; the container must be
    /// on it; a launch's node id must be free on it, and an empty one is chosen).
    Operate {
        /// The operation's id (its job's).
        operation_id: Uuid,
        /// What to do.
        operation: ContainerOperation,
        /// Who asked.
        requested_by: String,
    },
    /// The agent reports how an operation ended (an event only while it is pending).
    Finish {
        /// The operation's id.
        operation_id: Uuid,
        /// How it ended.
        outcome: OperationOutcome,
    },
    /// Remove the VM: its token is revoked and its containers are gone with it.
    Remove,
}

/// What happened to a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VmEvent {
    /// The VM was registered.
    Registered {
        /// Its name.
        name: VmName,
        /// Its labels, region and zone.
        placement: VmPlacement,
    },
    /// Its placement changed (labels, region, zone, watched images).
    Placed {
        /// The placement now, whole.
        placement: VmPlacement,
    },
    /// A join token was issued; the one before it is revoked.
    TokenIssued {
        /// The token's id (never the token).
        token_id: Uuid,
    },
    /// The host's facts, first or changed.
    FactsChanged {
        /// The facts.
        facts: HostFacts,
    },
    /// The VM's state changed.
    StateChanged {
        /// From.
        from: VmState,
        /// To.
        to: VmState,
        /// Why.
        reason: String,
    },
    /// A container first seen, or seen different from what was known.
    ContainerObserved {
        /// The container.
        container: Container,
    },
    /// A lifecycle event of a container.
    ContainerLifecycle {
        /// The event.
        event: LifecycleEvent,
    },
    /// A container is no longer on the engine.
    ContainerGone {
        /// Its id.
        container_id: String,
        /// Why it is known to be gone.
        reason: String,
    },
    /// An operation on its containers was asked for.
    OperationRequested {
        /// Its id (its job's).
        operation_id: Uuid,
        /// What.
        operation: ContainerOperation,
        /// Who asked.
        requested_by: String,
    },
    /// An operation ended: as the agent reported, or failed because the VM went down or was
    /// removed before it did.
    OperationFinished {
        /// Its id.
        operation_id: Uuid,
        /// How.
        outcome: OperationOutcome,
        /// Failed because the VM went down or was removed, not by the agent's word: a late
        /// outcome from the agent is still recorded.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        abandoned: bool,
    },
    /// The VM was removed.
    Removed,
}

impl DomainEvent for VmEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Registered { .. } => "VmRegistered",
            Self::Placed { .. } => "VmPlacementChanged",
            Self::TokenIssued { .. } => "VmTokenIssued",
            Self::FactsChanged { .. } => "VmFactsChanged",
            Self::StateChanged { .. } => "VmStateChanged",
            Self::ContainerObserved { .. } => "ContainerObserved",
            Self::ContainerLifecycle { .. } => "ContainerLifecycle",
            Self::ContainerGone { .. } => "ContainerGone",
            Self::OperationRequested { .. } => "ContainerOperationRequested",
            Self::OperationFinished { .. } => "ContainerOperationFinished",
            Self::Removed => "VmRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a VM command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmError {
    /// A VM of this name exists.
    #[error("VM `{0}` already exists")]
    AlreadyExists(VmName),
    /// A VM of this name existed and was removed: names are not reused.
    #[error("VM `{0}` was removed; a removed VM's name is not reused")]
    NameRetired(VmName),
    /// No VM of this name.
    #[error("the VM does not exist")]
    NotFound,
    /// The VM was removed.
    #[error("the VM was removed")]
    Removed,
    /// A snapshot named one container twice.
    #[error("container `{0}` appears twice in one snapshot")]
    DuplicateContainer(String),
    /// The VM is not ready: its agent cannot carry out an operation now.
    #[error("the VM is {}: its agent can act on containers only while it is ready", .0.as_str())]
    NotReady(VmState),
    /// No such container on the VM.
    #[error("there is no container `{0}` on the VM")]
    UnknownContainer(String),
    /// A container or pending launch on the VM already is this proxy.
    #[error("node id `{0}` is taken on the VM")]
    NodeIdTaken(String),
    /// A container or pending launch on the VM already has this admin port.
    #[error("admin port {0} is taken on the VM (the containers share the host's network)")]
    AdminPortTaken(u16),
}

/// The state a VM's commands are decided on.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    name: Option<VmName>,
    placement: VmPlacement,
    token_id: Option<Uuid>,
    state: VmState,
    facts: Option<HostFacts>,
    /// The containers on it, gone ones left out.
    containers: BTreeMap<String, Container>,
    /// Recent lifecycle events per container, by (engine time, kind), to drop repeats.
    recorded: BTreeMap<String, BTreeSet<(i64, super::EventKind)>>,
    /// Containers known to be gone, oldest first: their late events are dropped.
    #[serde(default)]
    gone: std::collections::VecDeque<String>,
    /// Operations asked for and not finished, by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    operations: BTreeMap<Uuid, (ContainerOperation, String)>,
    /// Operations failed because the VM went down or was removed, newest last: the agent may
    /// still report how they ended.
    #[serde(default, skip_serializing_if = "std::collections::VecDeque::is_empty")]
    abandoned: std::collections::VecDeque<Uuid>,
    /// Operations finished lately, newest last: asked again (a retry), they change nothing.
    #[serde(default, skip_serializing_if = "std::collections::VecDeque::is_empty")]
    finished: std::collections::VecDeque<Uuid>,
}

impl Vm {
    /// Its name, once registered.
    pub fn name(&self) -> Option<&VmName> {
        self.name.as_ref()
    }

    /// Its state.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// Its current join token's id.
    pub fn token_id(&self) -> Option<Uuid> {
        self.token_id
    }

    /// Its labels, region and zone.
    pub fn placement(&self) -> &VmPlacement {
        &self.placement
    }

    /// Its host's facts, once reported.
    pub fn facts(&self) -> Option<&HostFacts> {
        self.facts.as_ref()
    }

    /// The containers on it now.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    fn live(&self) -> Result<(), VmError> {
        match (&self.name, self.state) {
            (None, _) => Err(VmError::NotFound),
            (Some(_), VmState::Removed) => Err(VmError::Removed),
            _ => Ok(()),
        }
    }

    /// The events `command` causes, or why it is refused.
    pub fn decide(&self, command: VmCommand) -> Result<Vec<VmEvent>, VmError> {
        if let VmCommand::Register {
            name,
            placement,
            token_id,
        } = command
        {
            return match (&self.name, self.state) {
                (Some(_), VmState::Removed) => Err(VmError::NameRetired(name)),
                (Some(_), _) => Err(VmError::AlreadyExists(name)),
                (None, _) => Ok(vec![
                    VmEvent::Registered { name, placement },
                    VmEvent::TokenIssued { token_id },
                ]),
            };
        }
        self.live()?;
        Ok(match command {
            VmCommand::Register { .. } => unreachable!("decided above"),
            VmCommand::Place { placement } => {
                if self.placement == placement {
                    vec![]
                } else {
                    vec![VmEvent::Placed { placement }]
                }
            }
            VmCommand::IssueToken { token_id } => vec![VmEvent::TokenIssued { token_id }],
            VmCommand::ReportFacts { facts } => {
                if self.facts.as_ref() == Some(&facts) {
                    vec![]
                } else {
                    vec![VmEvent::FactsChanged { facts }]
                }
            }
            VmCommand::Heartbeat {
                engine_reachable,
                reason,
            } => self
                .state
                .after_heartbeat(engine_reachable)
                .map(|to| VmEvent::StateChanged {
                    from: self.state,
                    to,
                    reason: reason.unwrap_or_else(|| "heartbeat".to_owned()),
                })
                .into_iter()
                .collect(),
            VmCommand::Silence { reason } => match self.state.after_silence() {
                Some(to) => {
                    let why = format!("the VM went {} before its agent reported", to.as_str());
                    let mut events = vec![VmEvent::StateChanged {
                        from: self.state,
                        to,
                        reason,
                    }];
                    events.extend(self.abandon(&why));
                    events
                }
                None => vec![],
            },
            VmCommand::Operate {
                operation_id,
                operation,
                requested_by,
            } => self.operate(operation_id, operation, requested_by)?,
            VmCommand::Finish {
                operation_id,
                outcome,
            } => self.finish(operation_id, outcome),
            VmCommand::Observe { containers } => self.observe(containers)?,
            VmCommand::Record { events } => self.record(&events),
            VmCommand::Remove => {
                let mut events = self.abandon("the VM was removed before its agent reported");
                events.extend(self.containers.keys().map(|id| VmEvent::ContainerGone {
                    container_id: id.clone(),
                    reason: "its VM was removed".to_owned(),
                }));
                events.push(VmEvent::StateChanged {
                    from: self.state,
                    to: VmState::Removed,
                    reason: "removed".to_owned(),
                });
                events.push(VmEvent::Removed);
                events
            }
        })
    }

    fn observe(&self, containers: Vec<Container>) -> Result<Vec<VmEvent>, VmError> {
        let mut seen = BTreeSet::new();
        let mut events = Vec::new();
        for container in containers {
            if !seen.insert(container.id.clone()) {
                return Err(VmError::DuplicateContainer(container.id));
            }
            if self.containers.get(&container.id) != Some(&container) {
                events.push(VmEvent::ContainerObserved { container });
            }
        }
        for id in self.containers.keys().filter(|id| !seen.contains(*id)) {
            events.push(VmEvent::ContainerGone {
                container_id: id.clone(),
                reason: "no longer on the engine".to_owned(),
            });
        }
        Ok(events)
    }

    fn record(&self, events: &[LifecycleEvent]) -> Vec<VmEvent> {
        let mut fresh = Vec::new();
        let mut keys: BTreeSet<(&str, i64, super::EventKind)> = BTreeSet::new();
        // Containers an earlier event of this record takes away: what follows them is late.
        let mut gone_here: BTreeSet<&str> = BTreeSet::new();
        for event in events {
            let key = (event.time_nanos, event.kind);
            let known = self.gone.contains(&event.container_id)
                || gone_here.contains(event.container_id.as_str())
                || self
                    .recorded
                    .get(&event.container_id)
                    .is_some_and(|recorded| recorded.contains(&key));
            if !known && keys.insert((&event.container_id, key.0, key.1)) {
                let before = self.containers.get(&event.container_id);
                if event.applied_to(before).state == ContainerState::Gone {
                    gone_here.insert(&event.container_id);
                }
                fresh.push(event.clone());
            }
        }
        fresh
            .into_iter()
            .map(|event| VmEvent::ContainerLifecycle { event })
            .collect()
    }
}

impl Vm {
    /// Forgets a container that is gone, remembering only that it is.
    fn forget(&mut self, container_id: &str) {
        self.containers.remove(container_id);
        self.recorded.remove(container_id);
        if !self.gone.iter().any(|id| id == container_id) {
            self.gone.push_back(container_id.to_owned());
            if self.gone.len() > REMEMBERED_GONE {
                self.gone.pop_front();
            }
        }
    }
}

impl Aggregate for Vm {
    const TYPE: &'static str = "vm";
    type Command = VmCommand;
    type Event = VmEvent;
    type Error = VmError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            VmEvent::Registered { name, placement } => {
                self.name = Some(name);
                self.placement = placement;
            }
            VmEvent::Placed { placement } => self.placement = placement,
            VmEvent::TokenIssued { token_id } => self.token_id = Some(token_id),
            VmEvent::FactsChanged { facts } => self.facts = Some(facts),
            VmEvent::StateChanged { to, .. } => self.state = to,
            VmEvent::ContainerObserved { container } => {
                self.gone.retain(|id| *id != container.id);
                self.containers.insert(container.id.clone(), container);
            }
            VmEvent::ContainerLifecycle { event } => {
                let recorded = self.recorded.entry(event.container_id.clone()).or_default();
                recorded.insert((event.time_nanos, event.kind));
                while recorded.len() > REMEMBERED_EVENTS {
                    recorded.pop_first();
                }
                let after = event.applied_to(self.containers.get(&event.container_id));
                if after.state == ContainerState::Gone {
                    self.forget(&event.container_id);
                } else {
                    self.containers.insert(event.container_id.clone(), after);
                }
            }
            VmEvent::ContainerGone { container_id, .. } => self.forget(&container_id),
            VmEvent::OperationRequested {
                operation_id,
                operation,
                requested_by,
            } => {
                self.operations
                    .insert(operation_id, (operation, requested_by));
            }
            VmEvent::OperationFinished {
                operation_id,
                abandoned,
                ..
            } => {
                self.operations.remove(&operation_id);
                self.abandoned.retain(|id| *id != operation_id);
                if !self.finished.contains(&operation_id) {
                    self.finished.push_back(operation_id);
                    if self.finished.len() > REMEMBERED_FINISHED {
                        self.finished.pop_front();
                    }
                }
                if abandoned {
                    self.abandoned.push_back(operation_id);
                    if self.abandoned.len() > REMEMBERED_ABANDONED {
                        self.abandoned.pop_front();
                    }
                }
            }
            VmEvent::Removed => {
                self.state = VmState::Removed;
                self.token_id = None;
            }
        }
    }
}

#[path = "vm_operations.rs"]
mod deciding_operations;

#[cfg(test)]
#[path = "vm_tests.rs"]
mod tests;

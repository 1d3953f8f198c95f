//! A rollout: a group's containers replaced by containers of a new image, a batch at a time, each
//! counted done only once it is healthy and its proxy SYNCED; the first container that fails stops
//! it, and the rest are left as they were. A rollout is an aggregate (type `rollout`, id its
//! uuid): its steps are events, so a control plane that restarts goes on from the log.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::operations::LaunchSpec;

/// What a rollout does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// The group whose containers it replaces.
    pub group: String,
    /// The image they are replaced by.
    pub image: String,
    /// How many containers may be replaced at once (1 or more).
    pub max_unavailable: u32,
    /// How long a new container may take to be healthy and SYNCED, in milliseconds.
    pub health_timeout_ms: u64,
    /// How long to wait after a container is done before the next starts, in milliseconds.
    pub pause_between_ms: u64,
    /// Roll out even to an Envoy version no proxy of the tenant has accepted configuration with.
    #[serde(default)]
    pub force: bool,
}

/// Where the check of the new image's Envoy version stands (before any container is replaced).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "snake_case")]
pub enum VersionCheck {
    /// Not started.
    #[default]
    Unchecked,
    /// The image is being probed for its Envoy version.
    Probing {
        /// The probe's operation.
        operation_id: Uuid,
    },
    /// Passed: the new image's Envoy version.
    Passed {
        /// Such as `1.40.0`.
        envoy_version: String,
    },
}

/// Where one container of a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Not started.
    Pending,
    /// The old container is being drained and removed.
    Removing {
        /// The removal's operation (recorded before it is asked for).
        operation_id: Uuid,
        /// Since when.
        at: DateTime<Utc>,
    },
    /// Its replacement is being launched.
    Launching {
        /// The launch's operation (recorded before it is asked for).
        operation_id: Uuid,
        /// Since when.
        at: DateTime<Utc>,
    },
    /// Its replacement runs; waiting for it to be healthy and SYNCED.
    Verifying {
        /// The new container.
        container_id: String,
        /// Since when.
        since: DateTime<Utc>,
    },
    /// Replaced.
    Done {
        /// The new container.
        container_id: String,
        /// When it was found healthy and SYNCED.
        at: DateTime<Utc>,
    },
}

impl Step {
    /// Whether it is under way (neither pending nor done).
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            Self::Removing { .. } | Self::Launching { .. } | Self::Verifying { .. }
        )
    }
}

/// One container a rollout replaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutTarget {
    /// Its VM.
    pub vm: String,
    /// Its proxy's node id, which the replacement keeps.
    pub node_id: String,
    /// The container replaced.
    pub container_id: String,
    /// How it was launched (its replacement is launched the same way, with the new image).
    pub launch: LaunchSpec,
    /// Where it stands.
    pub step: Step,
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Replacing containers.
    Running,
    /// Finishing what is under way, starting nothing new.
    Paused,
    /// Every container replaced.
    Succeeded,
    /// Stopped at a container that failed.
    Failed,
    /// Stopped by an operator.
    Aborted,
}

impl RolloutState {
    /// The name as the API and the read model spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }

    /// Whether it has ended.
    pub fn ended(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Aborted)
    }
}

/// Why a rollout failed: the container, its VM, and Docker's, Envoy's or the gate's words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutFailure {
    /// The proxy whose replacement failed.
    pub node_id: String,
    /// Its VM.
    pub vm: String,
    /// The container concerned (old or new), when there is one.
    pub container_id: Option<String>,
    /// What happened.
    pub reason: String,
}

/// Commands on a rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutCommand {
    /// Start it.
    Start {
        /// What.
        spec: RolloutSpec,
        /// The containers, in the order they are replaced (all `Pending`).
        targets: Vec<RolloutTarget>,
        /// Who asked.
        requested_by: String,
    },
    /// A container moves on (its step must follow the one it is at). Once the rollout ended, a
    /// container being removed still moves to its replacement's launch, and that launch to its
    /// container (or either back to pending when it failed), so that no container is left
    /// removed and not replaced.
    Advance {
        /// The proxy.
        node_id: String,
        /// Its new step.
        step: Step,
    },
    /// The new image is being probed for its Envoy version.
    Probe {
        /// The probe's operation.
        operation_id: Uuid,
    },
    /// The new image's Envoy version passed the check: containers may be replaced.
    Pass {
        /// Its version.
        envoy_version: String,
    },
    /// A container failed: the rollout stops.
    Fail(RolloutFailure),
    /// Start nothing new.
    Pause,
    /// Go on after a pause.
    Resume,
    /// Stop for good (what is under way is not undone).
    Abort,
}

/// What happened to a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RolloutEvent {
    /// It started.
    Started {
        /// What.
        spec: RolloutSpec,
        /// The containers.
        targets: Vec<RolloutTarget>,
        /// Who asked.
        requested_by: String,
    },
    /// A container moved on.
    Advanced {
        /// The proxy.
        node_id: String,
        /// Its step now.
        step: Step,
    },
    /// The new image is being probed.
    Probing {
        /// The probe's operation.
        operation_id: Uuid,
    },
    /// The new image's Envoy version passed the check.
    Checked {
        /// Its version.
        envoy_version: String,
    },
    /// Every container is replaced.
    Succeeded,
    /// A container failed; it stopped.
    Failed(RolloutFailure),
    /// Paused.
    Paused,
    /// Resumed.
    Resumed,
    /// Aborted.
    Aborted,
}

impl DomainEvent for RolloutEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Started { .. } => "RolloutStarted",
            Self::Advanced { .. } => "RolloutAdvanced",
            Self::Probing { .. } => "RolloutProbing",
            Self::Checked { .. } => "RolloutChecked",
            Self::Succeeded => "RolloutSucceeded",
            Self::Failed(_) => "RolloutFailed",
            Self::Paused => "RolloutPaused",
            Self::Resumed => "RolloutResumed",
            Self::Aborted => "RolloutAborted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Why a rollout command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// No rollout of this id.
    #[error("the rollout does not exist")]
    NotFound,
    /// It was started before.
    #[error("the rollout exists")]
    AlreadyStarted,
    /// It has ended.
    #[error("the rollout has ended ({})", .0.as_str())]
    Ended(RolloutState),
    /// Nothing to replace.
    #[error("a rollout needs one container at least")]
    NoTargets,
    /// Not a container of this rollout.
    #[error("`{0}` is not a container of the rollout")]
    UnknownTarget(String),
    /// That step does not follow the container's.
    #[error("`{0}` cannot move to that step from where it is")]
    OutOfOrder(String),
}

/// The state a rollout's commands are decided on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    spec: Option<RolloutSpec>,
    targets: Vec<RolloutTarget>,
    state: Option<RolloutState>,
    requested_by: String,
    failure: Option<RolloutFailure>,
    #[serde(default)]
    check: VersionCheck,
}

impl Rollout {
    /// What it does, once started.
    pub fn spec(&self) -> Option<&RolloutSpec> {
        self.spec.as_ref()
    }

    /// Its containers and where they stand.
    pub fn targets(&self) -> &[RolloutTarget] {
        &self.targets
    }

    /// Where it stands, once started.
    pub fn state(&self) -> Option<RolloutState> {
        self.state
    }

    /// Who started it.
    pub fn requested_by(&self) -> &str {
        &self.requested_by
    }

    /// Why it failed.
    pub fn failure(&self) -> Option<&RolloutFailure> {
        self.failure.as_ref()
    }

    /// Where the check of the new image's Envoy version stands.
    pub fn check(&self) -> &VersionCheck {
        &self.check
    }

    /// When a container was last found replaced.
    pub fn last_done_at(&self) -> Option<DateTime<Utc>> {
        self.targets
            .iter()
            .filter_map(|t| match t.step {
                Step::Done { at, .. } => Some(at),
                _ => None,
            })
            .max()
    }

    /// Whether a container is being removed or its replacement launched: an ended rollout
    /// still sees that through.
    pub fn settling(&self) -> bool {
        self.targets
            .iter()
            .any(|t| matches!(t.step, Step::Removing { .. } | Step::Launching { .. }))
    }

    /// The containers to start now: while running, as many pending ones as `max_unavailable`
    /// leaves room for.
    pub fn to_start(&self) -> Vec<&RolloutTarget> {
        let (Some(spec), Some(RolloutState::Running), VersionCheck::Passed { .. }) =
            (&self.spec, self.state, &self.check)
        else {
            return vec![];
        };
        let in_flight = self.targets.iter().filter(|t| t.step.in_flight()).count();
        let room = usize::try_from(spec.max_unavailable)
            .unwrap_or(usize::MAX)
            .saturating_sub(in_flight);
        self.targets
            .iter()
            .filter(|t| t.step == Step::Pending)
            .take(room)
            .collect()
    }

    fn live(&self) -> Result<RolloutState, RolloutError> {
        match self.state {
            None => Err(RolloutError::NotFound),
            Some(state) if state.ended() => Err(RolloutError::Ended(state)),
            Some(state) => Ok(state),
        }
    }

    /// The events `command` causes, or why it is refused.
    pub fn decide(&self, command: RolloutCommand) -> Result<Vec<RolloutEvent>, RolloutError> {
        if let RolloutCommand::Start {
            spec,
            targets,
            requested_by,
        } = command
        {
            if self.state.is_some() {
                return Err(RolloutError::AlreadyStarted);
            }
            if targets.is_empty() {
                return Err(RolloutError::NoTargets);
            }
            return Ok(vec![RolloutEvent::Started {
                spec,
                targets,
                requested_by,
            }]);
        }
        if let RolloutCommand::Advance { node_id, step } = command {
            return self.advance(node_id, step);
        }
        let state = self.live()?;
        Ok(match command {
            RolloutCommand::Start { .. } | RolloutCommand::Advance { .. } => {
                unreachable!("decided above")
            }
            RolloutCommand::Probe { operation_id } => match self.check {
                VersionCheck::Unchecked => vec![RolloutEvent::Probing { operation_id }],
                _ => vec![],
            },
            RolloutCommand::Pass { envoy_version } => match self.check {
                VersionCheck::Passed { .. } => vec![],
                _ => vec![RolloutEvent::Checked { envoy_version }],
            },
            RolloutCommand::Fail(failure) => vec![RolloutEvent::Failed(failure)],
            RolloutCommand::Pause if state == RolloutState::Running => vec![RolloutEvent::Paused],
            RolloutCommand::Resume if state == RolloutState::Paused => vec![RolloutEvent::Resumed],
            RolloutCommand::Pause | RolloutCommand::Resume => vec![],
            RolloutCommand::Abort => vec![RolloutEvent::Aborted],
        })
    }

    fn advance(&self, node_id: String, step: Step) -> Result<Vec<RolloutEvent>, RolloutError> {
        let Some(state) = self.state else {
            return Err(RolloutError::NotFound);
        };
        let target = self
            .targets
            .iter()
            .find(|t| t.node_id == node_id)
            .ok_or_else(|| RolloutError::UnknownTarget(node_id.clone()))?;
        if target.step == step {
            return Ok(vec![]);
        }
        if state.ended() {
            // Only a container being replaced moves on: its removal to its replacement's
            // launch, the launch to its container; either back to pending when it failed.
            let settles = matches!(
                (&target.step, &step),
                (
                    Step::Removing { .. },
                    Step::Launching { .. } | Step::Pending
                ) | (
                    Step::Launching { .. },
                    Step::Verifying { .. } | Step::Pending
                )
            );
            return if settles {
                Ok(vec![RolloutEvent::Advanced { node_id, step }])
            } else {
                Err(RolloutError::Ended(state))
            };
        }
        let follows = matches!(
            (&target.step, &step),
            (
                Step::Pending,
                Step::Removing { .. } | Step::Launching { .. }
            ) | (Step::Removing { .. }, Step::Launching { .. })
                | (Step::Launching { .. }, Step::Verifying { .. })
                | (Step::Verifying { .. }, Step::Done { .. })
        );
        // A pause lets what is under way finish, and starts nothing.
        let starts = target.step == Step::Pending;
        if !follows || (starts && state != RolloutState::Running) {
            return Err(RolloutError::OutOfOrder(node_id));
        }
        let done = matches!(step, Step::Done { .. });
        let mut events = vec![RolloutEvent::Advanced { node_id, step }];
        let others_done = self
            .targets
            .iter()
            .filter(|t| t.node_id != target.node_id)
            .all(|t| matches!(t.step, Step::Done { .. }));
        if done && others_done {
            events.push(RolloutEvent::Succeeded);
        }
        Ok(events)
    }
}

impl Aggregate for Rollout {
    const TYPE: &'static str = "rollout";
    type Command = RolloutCommand;
    type Event = RolloutEvent;
    type Error = RolloutError;
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
            RolloutEvent::Started {
                spec,
                targets,
                requested_by,
            } => {
                self.spec = Some(spec);
                self.targets = targets;
                self.requested_by = requested_by;
                self.state = Some(RolloutState::Running);
            }
            RolloutEvent::Advanced { node_id, step } => {
                if let Some(target) = self.targets.iter_mut().find(|t| t.node_id == node_id) {
                    target.step = step;
                }
            }
            RolloutEvent::Probing { operation_id } => {
                self.check = VersionCheck::Probing { operation_id };
            }
            RolloutEvent::Checked { envoy_version } => {
                self.check = VersionCheck::Passed { envoy_version };
            }
            RolloutEvent::Succeeded => self.state = Some(RolloutState::Succeeded),
            RolloutEvent::Failed(failure) => {
                self.failure = Some(failure);
                self.state = Some(RolloutState::Failed);
            }
            RolloutEvent::Paused => self.state = Some(RolloutState::Paused),
            RolloutEvent::Resumed => self.state = Some(RolloutState::Running),
            RolloutEvent::Aborted => self.state = Some(RolloutState::Aborted),
        }
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;

//! Container lifecycle events from Docker's events stream, parsed and deduplicated.

use std::collections::{HashMap, HashSet, VecDeque};

use bollard::models::{EventMessage, EventMessageTypeEnum};
use serde::{Deserialize, Serialize};

use crate::inventory::{Health, NODE_ID_LABEL};

/// The lifecycle events the agent reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Created.
    Create,
    /// Started.
    Start,
    /// Restarted (`docker restart`, not the restart policy, which shows as die then start).
    Restart,
    /// Its main process ended (with an exit code).
    Die,
    /// The kernel's OOM killer struck inside it.
    Oom,
    /// Sent a signal.
    Kill,
    /// Stopped.
    Stop,
    /// Removed.
    Destroy,
    /// Its health check's status changed.
    HealthStatus,
}

impl EventKind {
    /// Every kind, by its action name in Docker's events.
    pub const ALL: [(EventKind, &'static str); 9] = [
        (Self::Create, "create"),
        (Self::Start, "start"),
        (Self::Restart, "restart"),
        (Self::Die, "die"),
        (Self::Oom, "oom"),
        (Self::Kill, "kill"),
        (Self::Stop, "stop"),
        (Self::Destroy, "destroy"),
        (Self::HealthStatus, "health_status"),
    ];

    /// The kind of a Docker action (`die`, `health_status: healthy`, ...); `None` for the others
    /// (`exec_start`, `attach`, ..., which a health check raises at every probe).
    pub fn from_action(action: &str) -> Option<Self> {
        let name = action.split(':').next().unwrap_or_default().trim();
        Self::ALL
            .iter()
            .find(|(_, action)| *action == name)
            .map(|(kind, _)| *kind)
    }
}

/// A point in the events stream: the time of the last event read, in nanoseconds since the epoch.
/// Reading resumes from it (`since`), so the engine replays what happened meanwhile, as far as it
/// still holds it (a restarted engine holds nothing from before its restart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor(pub i64);

impl Cursor {
    /// Now, by this host's clock (the engine's: they run on one host).
    pub fn now() -> Self {
        Self(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX))
    }

    /// The `since` parameter of the events API: seconds and nanoseconds.
    pub fn as_since(self) -> String {
        format!(
            "{}.{:09}",
            self.0.div_euclid(1_000_000_000),
            self.0.rem_euclid(1_000_000_000)
        )
    }
}

/// One lifecycle event of one container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerEvent {
    /// Docker's full container id.
    pub container_id: String,
    /// The container's name.
    pub name: String,
    /// The image reference it was created with.
    pub image: String,
    /// Its `efms.node_id` label.
    pub node_id: Option<String>,
    /// What happened.
    pub kind: EventKind,
    /// The exit code, for `die`.
    pub exit_code: Option<i64>,
    /// The signal, for `kill`.
    pub signal: Option<String>,
    /// The new status, for `health_status`.
    pub health: Option<Health>,
    /// When, in nanoseconds since the epoch (the engine's clock).
    pub time_nanos: i64,
    /// The container's labels (Docker sends them with every event).
    pub labels: HashMap<String, String>,
}

/// Attributes of an event that are not labels.
const NOT_LABELS: [&str; 5] = ["name", "image", "exitCode", "signal", "execDuration"];

impl ContainerEvent {
    /// The lifecycle event a Docker event message is; `None` for other objects and actions.
    pub fn from_message(message: &EventMessage) -> Option<Self> {
        if message.typ != Some(EventMessageTypeEnum::CONTAINER) {
            return None;
        }
        let action = message.action.as_deref()?;
        let kind = EventKind::from_action(action)?;
        let actor = message.actor.as_ref()?;
        let attributes = actor.attributes.clone().unwrap_or_default();
        let time_nanos = message.time_nano.or_else(|| {
            message
                .time
                .map(|seconds| seconds.saturating_mul(1_000_000_000))
        })?;
        let health = (kind == EventKind::HealthStatus)
            .then(|| {
                action
                    .split_once(':')
                    .map(|(_, status)| Health::from_docker_name(status))
            })
            .flatten();
        let labels: HashMap<String, String> = attributes
            .iter()
            .filter(|(key, _)| !NOT_LABELS.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Some(Self {
            container_id: actor.id.clone()?,
            name: attributes.get("name").cloned().unwrap_or_default(),
            image: attributes.get("image").cloned().unwrap_or_default(),
            node_id: attributes.get(NODE_ID_LABEL).cloned(),
            kind,
            exit_code: (kind == EventKind::Die)
                .then(|| {
                    attributes
                        .get("exitCode")
                        .and_then(|code| code.parse().ok())
                })
                .flatten(),
            signal: (kind == EventKind::Kill)
                .then(|| attributes.get("signal").cloned())
                .flatten(),
            health,
            time_nanos,
            labels,
        })
    }

    /// The cursor just at this event.
    pub fn cursor(&self) -> Cursor {
        Cursor(self.time_nanos)
    }
}

/// How many recent events are remembered to drop their replays.
const REMEMBERED: usize = 4096;

/// Drops what would report one thing twice:
/// - an event read again (resuming from a cursor replays the events at it);
/// - every `oom` of a container after its first, until it starts again (one OOM kill on cgroup v1
///   raises dozens of them);
/// - a `health_status` that repeats the container's current status.
#[derive(Debug, Default)]
pub struct Deduplicator {
    seen: HashSet<(String, EventKind, i64)>,
    order: VecDeque<(String, EventKind, i64)>,
    oom_reported: HashSet<String>,
    health: HashMap<String, Health>,
}

impl Deduplicator {
    /// A deduplicator that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `event` is to be reported; remembers it.
    pub fn admit(&mut self, event: &ContainerEvent) -> bool {
        let key = (event.container_id.clone(), event.kind, event.time_nanos);
        if self.seen.contains(&key) {
            return false;
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        if self.order.len() > REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        let id = &event.container_id;
        match event.kind {
            EventKind::Oom => self.oom_reported.insert(id.clone()),
            EventKind::Start | EventKind::Restart => {
                self.oom_reported.remove(id);
                true
            }
            EventKind::HealthStatus => {
                let status = event.health.unwrap_or(Health::None);
                self.health.insert(id.clone(), status) != Some(status)
            }
            EventKind::Die => {
                self.health.remove(id);
                true
            }
            EventKind::Destroy => {
                self.oom_reported.remove(id);
                self.health.remove(id);
                true
            }
            EventKind::Create | EventKind::Kill | EventKind::Stop => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, action: &str, time_nano: i64, extra: &[(&str, &str)]) -> EventMessage {
        let mut attributes = serde_json::json!({
            "name": "edge-1", "image": "efms-test/envoy:1.40.0", "efms.node_id": "edge-1"
        });
        for (key, value) in extra {
            attributes[*key] = serde_json::Value::from(*value);
        }
        serde_json::from_value(serde_json::json!({
            "Type": "container", "Action": action, "scope": "local",
            "Actor": {"ID": id, "Attributes": attributes},
            "time": time_nano / 1_000_000_000, "timeNano": time_nano
        }))
        .unwrap()
    }

    fn event(id: &str, action: &str, time_nano: i64) -> ContainerEvent {
        ContainerEvent::from_message(&message(id, action, time_nano, &[])).unwrap()
    }

    #[test]
    fn die_carries_its_exit_code_and_health_status_its_status() {
        let die = ContainerEvent::from_message(&message("c1", "die", 5, &[("exitCode", "137")]));
        let die = die.unwrap();
        assert_eq!(die.kind, EventKind::Die);
        assert_eq!(die.exit_code, Some(137));
        assert_eq!(die.node_id.as_deref(), Some("edge-1"));
        assert_eq!(
            die.labels.get("efms.node_id").map(String::as_str),
            Some("edge-1")
        );
        assert!(!die.labels.contains_key("exitCode"));
        let health = event("c1", "health_status: unhealthy", 6);
        assert_eq!(health.health, Some(Health::Unhealthy));
        assert!(
            ContainerEvent::from_message(&message("c1", "exec_start: /bin/sh", 7, &[])).is_none()
        );
    }

    #[test]
    fn one_oom_kill_is_reported_once_until_the_container_starts_again() {
        let mut dedup = Deduplicator::new();
        let admitted = (0..90)
            .filter(|n| dedup.admit(&event("c1", "oom", 100 + n)))
            .count();
        assert_eq!(admitted, 1);
        assert!(dedup.admit(&event("c2", "oom", 300)));
        assert!(dedup.admit(&event("c1", "start", 400)));
        assert!(dedup.admit(&event("c1", "oom", 500)));
    }

    #[test]
    fn a_replayed_event_and_a_repeated_health_status_are_dropped() {
        let mut dedup = Deduplicator::new();
        assert!(dedup.admit(&event("c1", "die", 10)));
        assert!(!dedup.admit(&event("c1", "die", 10)));
        assert!(dedup.admit(&event("c1", "die", 11)));
        assert!(dedup.admit(&event("c1", "health_status: healthy", 12)));
        assert!(!dedup.admit(&event("c1", "health_status: healthy", 13)));
        assert!(dedup.admit(&event("c1", "health_status: unhealthy", 14)));
    }

    #[test]
    fn cursor_reads_as_seconds_and_nanoseconds() {
        assert_eq!(
            Cursor(1_700_000_000_000_000_123).as_since(),
            "1700000000.000000123"
        );
    }
}

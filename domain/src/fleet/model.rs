//! What the fleet is made of: hosts' facts, containers, lifecycle events.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a VM's host is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// Its host name.
    pub hostname: String,
    /// Its addresses, loopback left out.
    pub addresses: Vec<InterfaceAddress>,
    /// Its operating system.
    pub os: String,
    /// Its kernel release.
    pub kernel: String,
    /// Its architecture.
    pub architecture: String,
    /// Its CPUs.
    pub cpu_count: u32,
    /// Its memory, in bytes.
    pub memory_bytes: u64,
    /// Its block devices.
    pub disks: Vec<Disk>,
    /// Its Docker engine, while reachable.
    pub docker: Option<EngineVersion>,
    /// The agent's version.
    pub agent_version: String,
}

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceAddress {
    /// The interface.
    pub interface: String,
    /// The address.
    pub address: std::net::IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The device.
    pub device: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Its filesystem.
    pub filesystem: String,
    /// Its size, in bytes.
    pub size_bytes: u64,
}

/// A Docker engine's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineVersion {
    /// The engine's version.
    pub version: String,
    /// The highest API version it speaks.
    pub api_version: String,
    /// The version the agent speaks with it.
    pub negotiated_api_version: String,
}

/// A container's state, as Docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Its main process runs.
    Running,
    /// Frozen.
    Paused,
    /// Being restarted by its restart policy.
    Restarting,
    /// Being removed.
    Removing,
    /// Its main process ended.
    Exited,
    /// Could not be stopped or removed cleanly.
    Dead,
    /// No longer on the engine (removed, or its VM removed).
    Gone,
}

impl ContainerState {
    /// The name as the API and the read models spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
            Self::Gone => "gone",
        }
    }
}

/// A container's health, from its health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No health check, or the container does not run.
    None,
    /// Checked, not yet healthy.
    Starting,
    /// The last checks passed.
    Healthy,
    /// The last checks failed.
    Unhealthy,
}

impl Health {
    /// The name as the API and the read models spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Starting => "starting",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// What a container may use; `None` for unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPUs.
    pub cpus: Option<f64>,
    /// Processes.
    pub pids: Option<u64>,
}

/// One port of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Inside the container.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The host address it is bound to.
    pub host_ip: Option<String>,
    /// The host port it is bound to.
    pub host_port: Option<u16>,
}

/// A container as its VM's agent last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// Docker's full id (64 lowercase hexadecimal digits).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its image as asked for.
    pub image: String,
    /// Its image's id.
    pub image_id: String,
    /// Its `efms.node_id` label: the proxy it is.
    pub node_id: Option<String>,
    /// Its state.
    pub state: ContainerState,
    /// Its health.
    pub health: Health,
    /// How often the engine restarted it.
    pub restart_count: u64,
    /// Its last exit code, once a run ended.
    pub exit_code: Option<i64>,
    /// Whether the OOM killer ended its last run.
    pub oom_killed: bool,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When it last started.
    pub started_at: Option<DateTime<Utc>>,
    /// When its last run ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// What it may use.
    pub limits: Limits,
    /// Its ports.
    pub ports: Vec<Port>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A kind of lifecycle event (FR-DC-004).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Created.
    Create,
    /// Started.
    Start,
    /// Restarted.
    Restart,
    /// Its main process ended.
    Die,
    /// The OOM killer struck inside it.
    Oom,
    /// Sent a signal.
    Kill,
    /// Stopped.
    Stop,
    /// Removed from the engine.
    Destroy,
    /// Its health changed.
    HealthStatus,
}

impl EventKind {
    /// The name as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Start => "start",
            Self::Restart => "restart",
            Self::Die => "die",
            Self::Oom => "oom",
            Self::Kill => "kill",
            Self::Stop => "stop",
            Self::Destroy => "destroy",
            Self::HealthStatus => "health_status",
        }
    }
}

/// One lifecycle event of a container, as its engine told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// The container's full id.
    pub container_id: String,
    /// Its name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// Its `efms.node_id` label.
    pub node_id: Option<String>,
    /// What happened.
    pub kind: EventKind,
    /// The exit code (`die`).
    pub exit_code: Option<i64>,
    /// The signal (`kill`).
    pub signal: Option<String>,
    /// The new health (`health_status`).
    pub health: Option<Health>,
    /// The engine's time of the event, in nanoseconds since the epoch.
    pub time_nanos: i64,
}

impl LifecycleEvent {
    /// The engine's time of the event.
    pub fn at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.time_nanos)
    }

    /// The container as this event leaves it, from what was known of it before (`None`: nothing).
    pub fn applied_to(&self, before: Option<&Container>) -> Container {
        let mut container = before.cloned().unwrap_or_else(|| Container {
            id: self.container_id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            node_id: self.node_id.clone(),
            state: ContainerState::Created,
            health: Health::None,
            restart_count: 0,
            exit_code: None,
            oom_killed: false,
            created_at: None,
            started_at: None,
            finished_at: None,
            limits: Limits::default(),
            ports: Vec::new(),
            labels: BTreeMap::new(),
        });
        let at = Some(self.at());
        match self.kind {
            EventKind::Create => container.created_at = container.created_at.or(at),
            EventKind::Start | EventKind::Restart => {
                container.state = ContainerState::Running;
                container.started_at = at;
                container.oom_killed = false;
            }
            EventKind::Die => {
                container.state = ContainerState::Exited;
                container.exit_code = self.exit_code;
                container.finished_at = at;
                container.health = Health::None;
            }
            EventKind::Oom => container.oom_killed = true,
            EventKind::Kill | EventKind::Stop => {}
            EventKind::Destroy => container.state = ContainerState::Gone,
            EventKind::HealthStatus => {
                if let Some(health) = self.health {
                    container.health = health;
                }
            }
        }
        container
    }
}

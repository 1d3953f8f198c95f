//! The messages of `fleet.proto`, field for field.

use std::collections::HashMap;

/// What an agent sends: one report, numbered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AgentMessage {
    /// Per agent process, from 1, one more per report: the server acknowledges by it. Hello is not
    /// a report (never stored nor acknowledged) and carries 0. Reports a full buffer dropped leave
    /// gaps.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The report.
    #[prost(oneof = "agent_message::Body", tags = "2, 3, 4, 5, 6, 7, 8, 9")]
    pub body: Option<agent_message::Body>,
}

/// The reports an [`AgentMessage`] carries.
pub mod agent_message {
    /// One report.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// The first message of every stream.
        #[prost(message, tag = "2")]
        Hello(super::Hello),
        /// The host's facts changed.
        #[prost(message, tag = "3")]
        Facts(super::HostFacts),
        /// Every heartbeat interval.
        #[prost(message, tag = "4")]
        Heartbeat(super::Heartbeat),
        /// Every watched container, after each (re)connection to the engine.
        #[prost(message, tag = "5")]
        Snapshot(super::ContainerSnapshot),
        /// One lifecycle event.
        #[prost(message, tag = "6")]
        Event(super::ContainerEvent),
        /// The running containers' CPU and memory.
        #[prost(message, tag = "7")]
        Usage(super::ContainerUsages),
        /// How an order ended.
        #[prost(message, tag = "8")]
        Done(super::OrderDone),
        /// What the running proxies hold, from their admin `config_dump`.
        #[prost(message, tag = "9")]
        Config(super::ConfigChecks),
    }
}

/// The first message of every stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// Random per agent process: a reconnection of the same process resends what was not acked.
    #[prost(string, tag = "1")]
    pub epoch: String,
    /// What the host is.
    #[prost(message, optional, tag = "2")]
    pub facts: Option<HostFacts>,
    /// The agent's `--region` flag (the API's value wins).
    #[prost(string, tag = "3")]
    pub region: String,
    /// The agent's `--zone` flag (the API's value wins).
    #[prost(string, tag = "4")]
    pub zone: String,
    /// The agent's `--label` flags (the API's values win).
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
}

/// What a host is.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HostFacts {
    /// Its host name.
    #[prost(string, tag = "1")]
    pub hostname: String,
    /// Its addresses, loopback left out.
    #[prost(message, repeated, tag = "2")]
    pub addresses: Vec<InterfaceAddress>,
    /// Its operating system (os-release's pretty name).
    #[prost(string, tag = "3")]
    pub os: String,
    /// Its kernel release.
    #[prost(string, tag = "4")]
    pub kernel: String,
    /// Its architecture.
    #[prost(string, tag = "5")]
    pub architecture: String,
    /// Its CPUs.
    #[prost(uint32, tag = "6")]
    pub cpu_count: u32,
    /// Its memory, in bytes.
    #[prost(uint64, tag = "7")]
    pub memory_bytes: u64,
    /// Its block devices.
    #[prost(message, repeated, tag = "8")]
    pub disks: Vec<Disk>,
    /// Its Docker engine; absent while the engine cannot be reached.
    #[prost(message, optional, tag = "9")]
    pub docker: Option<EngineVersion>,
    /// The agent's version.
    #[prost(string, tag = "10")]
    pub agent_version: String,
}

/// One address of one interface.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct InterfaceAddress {
    /// The interface.
    #[prost(string, tag = "1")]
    pub interface: String,
    /// The address, IPv4 or IPv6.
    #[prost(string, tag = "2")]
    pub address: String,
    /// Its prefix length.
    #[prost(uint32, tag = "3")]
    pub prefix_len: u32,
}

/// One block device.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Disk {
    /// The device.
    #[prost(string, tag = "1")]
    pub device: String,
    /// Where it is mounted.
    #[prost(string, tag = "2")]
    pub mount_point: String,
    /// Its filesystem.
    #[prost(string, tag = "3")]
    pub filesystem: String,
    /// Its size, in bytes.
    #[prost(uint64, tag = "4")]
    pub size_bytes: u64,
}

/// A Docker engine's version.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct EngineVersion {
    /// The engine's version.
    #[prost(string, tag = "1")]
    pub version: String,
    /// The highest API version the engine speaks.
    #[prost(string, tag = "2")]
    pub api_version: String,
    /// The API version the agent speaks with it.
    #[prost(string, tag = "3")]
    pub negotiated_api_version: String,
}

/// Sent every heartbeat interval.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {
    /// When it was sampled (milliseconds since the epoch).
    #[prost(int64, tag = "1")]
    pub sampled_at: i64,
    /// The host's utilisation; absent in a process's first heartbeat.
    #[prost(message, optional, tag = "2")]
    pub usage: Option<HostUsage>,
    /// Whether the Docker engine answers.
    #[prost(bool, tag = "3")]
    pub engine_reachable: bool,
    /// Why it does not, when it does not.
    #[prost(string, tag = "4")]
    pub engine_error: String,
}

/// How busy a host is, between two samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HostUsage {
    /// Percent of all CPUs: 0 to 100.
    #[prost(double, tag = "1")]
    pub cpu_percent: f64,
    /// Load average over a minute.
    #[prost(double, tag = "2")]
    pub load_1m: f64,
    /// Load average over five minutes.
    #[prost(double, tag = "3")]
    pub load_5m: f64,
    /// Load average over fifteen minutes.
    #[prost(double, tag = "4")]
    pub load_15m: f64,
    /// Memory used (total less available), in bytes.
    #[prost(uint64, tag = "5")]
    pub memory_used_bytes: u64,
    /// Memory in all, in bytes.
    #[prost(uint64, tag = "6")]
    pub memory_total_bytes: u64,
    /// Space per mounted disk.
    #[prost(message, repeated, tag = "7")]
    pub disks: Vec<DiskUsage>,
    /// Bytes received per second, loopback left out.
    #[prost(double, tag = "8")]
    pub network_rx_bytes_per_second: f64,
    /// Bytes sent per second, loopback left out.
    #[prost(double, tag = "9")]
    pub network_tx_bytes_per_second: f64,
}

/// Space on one mounted disk.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DiskUsage {
    /// Where it is mounted.
    #[prost(string, tag = "1")]
    pub mount_point: String,
    /// Used, in bytes.
    #[prost(uint64, tag = "2")]
    pub used_bytes: u64,
    /// Available, in bytes.
    #[prost(uint64, tag = "3")]
    pub available_bytes: u64,
    /// In all, in bytes.
    #[prost(uint64, tag = "4")]
    pub size_bytes: u64,
}

/// Every watched container as it is now.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerSnapshot {
    /// The containers.
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

/// A container's state, as Docker names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ContainerState {
    /// Not set: refused.
    Unspecified = 0,
    /// Created, never started.
    Created = 1,
    /// Its main process runs.
    Running = 2,
    /// Frozen.
    Paused = 3,
    /// Being restarted by its restart policy.
    Restarting = 4,
    /// Being removed.
    Removing = 5,
    /// Its main process ended.
    Exited = 6,
    /// Could not be stopped or removed cleanly.
    Dead = 7,
}

/// A container's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Health {
    /// Not set: refused where a health is due.
    Unspecified = 0,
    /// No health check, or the container does not run.
    None = 1,
    /// Checked, not yet healthy.
    Starting = 2,
    /// The last checks passed.
    Healthy = 3,
    /// The last checks failed.
    Unhealthy = 4,
}

/// One container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    /// Docker's full id (64 hex digits).
    #[prost(string, tag = "1")]
    pub id: String,
    /// Its name, without the leading `/`.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Its image as asked for.
    #[prost(string, tag = "3")]
    pub image: String,
    /// Its image's id.
    #[prost(string, tag = "4")]
    pub image_id: String,
    /// Its `efms.node_id` label.
    #[prost(string, optional, tag = "5")]
    pub node_id: Option<String>,
    /// Its state.
    #[prost(enumeration = "ContainerState", tag = "6")]
    pub state: i32,
    /// Its health.
    #[prost(enumeration = "Health", tag = "7")]
    pub health: i32,
    /// How often the engine restarted it.
    #[prost(uint64, tag = "8")]
    pub restart_count: u64,
    /// Its last exit code, once a run ended.
    #[prost(int64, optional, tag = "9")]
    pub exit_code: Option<i64>,
    /// Whether the OOM killer ended its last run.
    #[prost(bool, tag = "10")]
    pub oom_killed: bool,
    /// When it was created (milliseconds since the epoch).
    #[prost(int64, optional, tag = "11")]
    pub created_at: Option<i64>,
    /// When it last started.
    #[prost(int64, optional, tag = "12")]
    pub started_at: Option<i64>,
    /// When its last run ended.
    #[prost(int64, optional, tag = "13")]
    pub finished_at: Option<i64>,
    /// What it may use.
    #[prost(message, optional, tag = "14")]
    pub limits: Option<Limits>,
    /// Its ports.
    #[prost(message, repeated, tag = "15")]
    pub ports: Vec<Port>,
    /// Its labels.
    #[prost(map = "string, string", tag = "16")]
    pub labels: HashMap<String, String>,
}

/// What a container may use; absent for unlimited.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Limits {
    /// Memory, in bytes.
    #[prost(uint64, optional, tag = "1")]
    pub memory_bytes: Option<u64>,
    /// CPUs.
    #[prost(double, optional, tag = "2")]
    pub cpus: Option<f64>,
    /// Processes.
    #[prost(uint64, optional, tag = "3")]
    pub pids: Option<u64>,
}

/// One port of a container.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Port {
    /// Inside the container.
    #[prost(uint32, tag = "1")]
    pub container_port: u32,
    /// `tcp`, `udp` or `sctp`.
    #[prost(string, tag = "2")]
    pub protocol: String,
    /// The host address it is bound to.
    #[prost(string, optional, tag = "3")]
    pub host_ip: Option<String>,
    /// The host port it is bound to.
    #[prost(uint32, optional, tag = "4")]
    pub host_port: Option<u32>,
}

/// A kind of lifecycle event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EventKind {
    /// Not set: refused.
    Unspecified = 0,
    /// Created.
    Create = 1,
    /// Started.
    Start = 2,
    /// Restarted.
    Restart = 3,
    /// Its main process ended.
    Die = 4,
    /// The OOM killer struck inside it.
    Oom = 5,
    /// Sent a signal.
    Kill = 6,
    /// Stopped.
    Stop = 7,
    /// Removed.
    Destroy = 8,
    /// Its health changed.
    HealthStatus = 9,
}

/// One lifecycle event from the engine.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerEvent {
    /// The container's full id.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Its name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Its image.
    #[prost(string, tag = "3")]
    pub image: String,
    /// Its `efms.node_id` label.
    #[prost(string, optional, tag = "4")]
    pub node_id: Option<String>,
    /// What happened.
    #[prost(enumeration = "EventKind", tag = "5")]
    pub kind: i32,
    /// The exit code (`die`).
    #[prost(int64, optional, tag = "6")]
    pub exit_code: Option<i64>,
    /// The signal (`kill`).
    #[prost(string, optional, tag = "7")]
    pub signal: Option<String>,
    /// The new health (`health_status`).
    #[prost(enumeration = "Health", tag = "8")]
    pub health: i32,
    /// The engine's time of the event, in nanoseconds since the epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
}

/// What the running proxies hold, read from each one's admin `config_dump` on the VM.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigChecks {
    /// When the dumps were read (milliseconds since the epoch).
    #[prost(int64, tag = "1")]
    pub read_at: i64,
    /// One per running proxy container.
    #[prost(message, repeated, tag = "2")]
    pub proxies: Vec<ConfigCheck>,
}

/// One proxy container's dump.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigCheck {
    /// The container's full id.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// The container's `efms.node_id` label.
    #[prost(string, tag = "2")]
    pub node_id: String,
    /// The version of each resource type the dump carries one for.
    #[prost(message, repeated, tag = "3")]
    pub versions: Vec<ConfigVersion>,
    /// Why the dump could not be read (then `versions` is empty).
    #[prost(string, tag = "4")]
    pub error: String,
}

/// The version of one resource type a proxy applied last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigVersion {
    /// `type.googleapis.com/envoy.config.cluster.v3.Cluster`.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// The version (empty: none).
    #[prost(string, tag = "2")]
    pub version: String,
}

/// The running watched containers' CPU and memory.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerUsages {
    /// When they were sampled (milliseconds since the epoch).
    #[prost(int64, tag = "1")]
    pub sampled_at: i64,
    /// One per container.
    #[prost(message, repeated, tag = "2")]
    pub containers: Vec<ContainerUsage>,
}

/// One container's CPU and memory.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerUsage {
    /// The container's full id.
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// Percent of one CPU (200 is two CPUs busy).
    #[prost(double, tag = "2")]
    pub cpu_percent: f64,
    /// Memory used, in bytes.
    #[prost(uint64, tag = "3")]
    pub memory_used_bytes: u64,
    /// Its memory limit, in bytes.
    #[prost(uint64, optional, tag = "4")]
    pub memory_limit_bytes: Option<u64>,
    /// Its processes.
    #[prost(uint64, optional, tag = "5")]
    pub pids: Option<u64>,
}

/// What the server sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerMessage {
    /// The message.
    #[prost(oneof = "server_message::Body", tags = "1, 2, 3, 4, 5, 6")]
    pub body: Option<server_message::Body>,
}

/// The messages a [`ServerMessage`] carries.
pub mod server_message {
    /// One message.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// The answer to `Hello`.
        #[prost(message, tag = "1")]
        Welcome(super::Welcome),
        /// Everything up to a seq is stored.
        #[prost(message, tag = "2")]
        Ack(super::Ack),
        /// The VM's settings changed.
        #[prost(message, tag = "3")]
        Settings(super::Settings),
        /// The token was revoked or the VM removed; the stream ends.
        #[prost(message, tag = "4")]
        Revoked(super::Revoked),
        /// One report was refused; nothing of it was stored.
        #[prost(message, tag = "5")]
        Refused(super::Refused),
        /// An operation on the VM's containers.
        #[prost(message, tag = "6")]
        Order(super::Order),
    }
}

/// The answer to `Hello`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Welcome {
    /// The tenant's slug.
    #[prost(string, tag = "1")]
    pub tenant: String,
    /// The VM's name.
    #[prost(string, tag = "2")]
    pub vm: String,
    /// How the agent is to report.
    #[prost(message, optional, tag = "3")]
    pub settings: Option<Settings>,
    /// The last seq of this epoch the server stored (0 for a new epoch).
    #[prost(uint64, tag = "4")]
    pub acked_seq: u64,
    /// The engine time of the last container event stored for the VM, in nanoseconds (0: none).
    #[prost(int64, tag = "5")]
    pub last_event_nanos: i64,
}

/// Every message up to `seq` is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Ack {
    /// The last stored seq.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
}

/// How an agent is to report.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Settings {
    /// The heartbeat interval, in milliseconds.
    #[prost(uint32, tag = "1")]
    pub heartbeat_interval_ms: u32,
    /// Images whose containers are watched without the `efms.node_id` label.
    #[prost(string, repeated, tag = "2")]
    pub watch_images: Vec<String>,
}

/// One report was refused and nothing of it stored; it counts as acknowledged.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Refused {
    /// The report's seq.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The field, as a path (`heartbeat.usage.cpu_percent`).
    #[prost(string, tag = "2")]
    pub field: String,
    /// What is wrong with it.
    #[prost(string, tag = "3")]
    pub problem: String,
}

/// The token was revoked or the VM removed.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Revoked {
    /// Why.
    #[prost(string, tag = "1")]
    pub reason: String,
}

pub use crate::orders::{Order, OrderDone};

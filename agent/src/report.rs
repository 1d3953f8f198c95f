//! The agent's observations as the fleet protocol's messages (`efms.fleet.v1`): what the link to
//! the control plane sends. Times become milliseconds since the epoch, except an event's engine
//! time, which keeps its nanoseconds.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use efms_fleet_proto as proto;

use crate::engine::EngineVersion;
use crate::events::{ContainerEvent, EventKind};
use crate::host::facts::{Disk, HostFacts, InterfaceAddress};
use crate::host::usage::{DiskUsage, HostUsage};
use crate::inventory::{Container, ContainerState, Health, Limits, Port};
use crate::stats::ContainerUsage;

/// Now, in milliseconds since the epoch.
pub fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

fn millis(time: Option<DateTime<Utc>>) -> Option<i64> {
    time.map(|time| time.timestamp_millis())
}

/// The host's facts.
pub fn host_facts(facts: &HostFacts) -> proto::HostFacts {
    proto::HostFacts {
        hostname: facts.hostname.clone(),
        addresses: facts.addresses.iter().map(interface_address).collect(),
        os: facts.os.clone(),
        kernel: facts.kernel.clone(),
        architecture: facts.architecture.clone(),
        cpu_count: u32::try_from(facts.cpu_count).unwrap_or(u32::MAX),
        memory_bytes: facts.memory_bytes,
        disks: facts.disks.iter().map(disk).collect(),
        docker: facts.docker.as_ref().map(engine_version),
        agent_version: facts.agent_version.clone(),
    }
}

fn interface_address(address: &InterfaceAddress) -> proto::InterfaceAddress {
    proto::InterfaceAddress {
        interface: address.interface.clone(),
        address: address.address.to_string(),
        prefix_len: u32::from(address.prefix_len),
    }
}

fn disk(disk: &Disk) -> proto::Disk {
    proto::Disk {
        device: disk.device.clone(),
        mount_point: disk.mount_point.clone(),
        filesystem: disk.filesystem.clone(),
        size_bytes: disk.size_bytes,
    }
}

/// The Docker engine's version.
pub fn engine_version(version: &EngineVersion) -> proto::EngineVersion {
    proto::EngineVersion {
        version: version.version.clone(),
        api_version: version.api_version.clone(),
        negotiated_api_version: version.negotiated_api_version.clone(),
    }
}

/// The host's utilisation.
pub fn host_usage(usage: &HostUsage) -> proto::HostUsage {
    let [one_minute, five_minutes, fifteen_minutes] = usage.load;
    proto::HostUsage {
        cpu_percent: usage.cpu_percent,
        load_1m: one_minute,
        load_5m: five_minutes,
        load_15m: fifteen_minutes,
        memory_used_bytes: usage.memory_used_bytes,
        memory_total_bytes: usage.memory_total_bytes,
        disks: usage.disks.iter().map(disk_usage).collect(),
        network_rx_bytes_per_second: usage.network_rx_bytes_per_second,
        network_tx_bytes_per_second: usage.network_tx_bytes_per_second,
    }
}

fn disk_usage(disk: &DiskUsage) -> proto::DiskUsage {
    proto::DiskUsage {
        mount_point: disk.mount_point.clone(),
        used_bytes: disk.used_bytes,
        available_bytes: disk.available_bytes,
        size_bytes: disk.size_bytes,
    }
}

fn container_state(state: ContainerState) -> proto::ContainerState {
    match state {
        ContainerState::Created => proto::ContainerState::Created,
        ContainerState::Running => proto::ContainerState::Running,
        ContainerState::Paused => proto::ContainerState::Paused,
        ContainerState::Restarting => proto::ContainerState::Restarting,
        ContainerState::Removing => proto::ContainerState::Removing,
        ContainerState::Exited => proto::ContainerState::Exited,
        ContainerState::Dead => proto::ContainerState::Dead,
    }
}

fn health(health: Health) -> proto::Health {
    match health {
        Health::None => proto::Health::None,
        Health::Starting => proto::Health::Starting,
        Health::Healthy => proto::Health::Healthy,
        Health::Unhealthy => proto::Health::Unhealthy,
    }
}

fn event_kind(kind: EventKind) -> proto::EventKind {
    match kind {
        EventKind::Create => proto::EventKind::Create,
        EventKind::Start => proto::EventKind::Start,
        EventKind::Restart => proto::EventKind::Restart,
        EventKind::Die => proto::EventKind::Die,
        EventKind::Oom => proto::EventKind::Oom,
        EventKind::Kill => proto::EventKind::Kill,
        EventKind::Stop => proto::EventKind::Stop,
        EventKind::Destroy => proto::EventKind::Destroy,
        EventKind::HealthStatus => proto::EventKind::HealthStatus,
    }
}

/// Every watched container, as a snapshot.
pub fn snapshot(containers: &[Container]) -> proto::ContainerSnapshot {
    proto::ContainerSnapshot {
        containers: containers.iter().map(container).collect(),
    }
}

/// One container.
pub fn container(container: &Container) -> proto::Container {
    proto::Container {
        id: container.id.clone(),
        name: container.name.clone(),
        image: container.image.clone(),
        image_id: container.image_id.clone(),
        node_id: container.node_id.clone(),
        state: container_state(container.state).into(),
        health: health(container.health).into(),
        restart_count: container.restart_count,
        exit_code: container.exit_code,
        oom_killed: container.oom_killed,
        created_at: millis(container.created_at),
        started_at: millis(container.started_at),
        finished_at: millis(container.finished_at),
        limits: Some(limits(&container.limits)),
        ports: container.ports.iter().map(port).collect(),
        labels: container
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect::<HashMap<_, _>>(),
    }
}

fn limits(limits: &Limits) -> proto::Limits {
    proto::Limits {
        memory_bytes: limits.memory_bytes,
        cpus: limits.cpus,
        pids: limits.pids,
    }
}

fn port(port: &Port) -> proto::Port {
    proto::Port {
        container_port: u32::from(port.container_port),
        protocol: port.protocol.clone(),
        host_ip: port.host_ip.clone(),
        host_port: port.host_port.map(u32::from),
    }
}

/// One lifecycle event.
pub fn container_event(event: &ContainerEvent) -> proto::ContainerEvent {
    proto::ContainerEvent {
        container_id: event.container_id.clone(),
        name: event.name.clone(),
        image: event.image.clone(),
        node_id: event.node_id.clone(),
        kind: event_kind(event.kind).into(),
        exit_code: event.exit_code,
        signal: event.signal.clone(),
        health: event
            .health
            .map_or(proto::Health::Unspecified, health)
            .into(),
        time_nanos: event.time_nanos,
    }
}

/// One running container's CPU and memory.
pub fn container_usage(container_id: &str, usage: &ContainerUsage) -> proto::ContainerUsage {
    proto::ContainerUsage {
        container_id: container_id.to_owned(),
        cpu_percent: usage.cpu_percent,
        memory_used_bytes: usage.memory_used_bytes,
        memory_limit_bytes: usage.memory_limit_bytes,
        pids: usage.pids,
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;

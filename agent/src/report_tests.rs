use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::TimeZone as _;

use super::*;
use crate::stats::CgroupVersion;

fn at(seconds: i64, millis: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, millis * 1_000_000)
        .single()
        .unwrap()
}

#[test]
fn host_facts_keep_every_field_and_the_engine_only_when_reached() {
    let mut facts = HostFacts {
        hostname: "vm-1".into(),
        addresses: vec![InterfaceAddress {
            interface: "eth0".into(),
            address: "2001:db8::7".parse::<IpAddr>().unwrap(),
            prefix_len: 64,
        }],
        os: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-18-amd64".into(),
        architecture: "x86_64".into(),
        cpu_count: 2,
        memory_bytes: 8 << 30,
        disks: vec![Disk {
            device: "/dev/vda1".into(),
            mount_point: "/".into(),
            filesystem: "ext4".into(),
            size_bytes: 20 << 30,
        }],
        docker: Some(EngineVersion {
            version: "20.10.24+dfsg1".into(),
            api_version: "1.41".into(),
            negotiated_api_version: "1.41".into(),
        }),
        agent_version: "0.1.0".into(),
    };
    let message = host_facts(&facts);
    assert_eq!(message.hostname, "vm-1");
    assert_eq!(message.addresses[0].address, "2001:db8::7");
    assert_eq!(message.addresses[0].prefix_len, 64);
    assert_eq!(message.cpu_count, 2);
    assert_eq!(message.memory_bytes, 8 << 30);
    assert_eq!(message.disks[0].device, "/dev/vda1");
    assert_eq!(message.disks[0].size_bytes, 20 << 30);
    assert_eq!(message.docker.as_ref().unwrap().version, "20.10.24+dfsg1");
    assert_eq!(message.agent_version, "0.1.0");
    facts.docker = None;
    assert_eq!(host_facts(&facts).docker, None);
}

#[test]
fn host_usage_splits_the_load_averages() {
    let usage = host_usage(&HostUsage {
        cpu_percent: 37.5,
        load: [0.5, 1.25, 2.0],
        memory_used_bytes: 3 << 30,
        memory_total_bytes: 8 << 30,
        disks: vec![DiskUsage {
            mount_point: "/".into(),
            used_bytes: 5,
            available_bytes: 10,
            size_bytes: 16,
        }],
        network_rx_bytes_per_second: 1000.0,
        network_tx_bytes_per_second: 250.0,
    });
    assert!((usage.load_1m - 0.5).abs() < f64::EPSILON);
    assert!((usage.load_5m - 1.25).abs() < f64::EPSILON);
    assert!((usage.load_15m - 2.0).abs() < f64::EPSILON);
    assert!((usage.cpu_percent - 37.5).abs() < f64::EPSILON);
    assert_eq!(usage.memory_used_bytes, 3 << 30);
    assert_eq!(usage.disks[0].available_bytes, 10);
    assert!((usage.network_tx_bytes_per_second - 250.0).abs() < f64::EPSILON);
}

#[test]
fn a_container_keeps_its_state_health_times_in_milliseconds_limits_and_ports() {
    let container = Container {
        id: "f".repeat(64),
        name: "edge-1".into(),
        image: "efms-test/envoy:1.40.0".into(),
        image_id: "sha256:feed".into(),
        node_id: Some("edge-1".into()),
        state: ContainerState::Exited,
        health: Health::None,
        restart_count: 3,
        exit_code: Some(137),
        oom_killed: true,
        created_at: Some(at(1_764_504_000, 500)),
        started_at: Some(at(1_764_504_001, 0)),
        finished_at: None,
        limits: Limits {
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids: None,
        },
        ports: vec![Port {
            container_port: 10_000,
            protocol: "tcp".into(),
            host_ip: Some("0.0.0.0".into()),
            host_port: Some(18_080),
        }],
        labels: BTreeMap::from([("efms.node_id".into(), "edge-1".into())]),
    };
    let message = super::container(&container);
    assert_eq!(message.state(), proto::ContainerState::Exited);
    assert_eq!(message.health(), proto::Health::None);
    assert_eq!(message.created_at, Some(1_764_504_000_500));
    assert_eq!(message.started_at, Some(1_764_504_001_000));
    assert_eq!(message.finished_at, None);
    assert_eq!(message.exit_code, Some(137));
    assert!(message.oom_killed);
    assert_eq!(message.restart_count, 3);
    assert_eq!(
        message.limits,
        Some(proto::Limits {
            memory_bytes: Some(64 << 20),
            cpus: Some(0.5),
            pids: None
        })
    );
    assert_eq!(message.ports[0].container_port, 10_000);
    assert_eq!(message.ports[0].host_port, Some(18_080));
    assert_eq!(message.labels["efms.node_id"], "edge-1");
    assert_eq!(message.node_id.as_deref(), Some("edge-1"));

    let running = Container {
        state: ContainerState::Running,
        health: Health::Unhealthy,
        ..container
    };
    let message = super::container(&running);
    assert_eq!(message.state(), proto::ContainerState::Running);
    assert_eq!(message.health(), proto::Health::Unhealthy);
}

fn event(kind: EventKind) -> ContainerEvent {
    ContainerEvent {
        container_id: "c1".into(),
        name: "edge-1".into(),
        image: "efms-test/envoy:1.40.0".into(),
        node_id: Some("edge-1".into()),
        kind,
        exit_code: None,
        signal: None,
        health: None,
        time_nanos: 1_764_504_000_123_456_789,
        labels: std::collections::HashMap::new(),
    }
}

#[test]
fn an_event_keeps_its_kind_details_and_nanoseconds() {
    let die = container_event(&ContainerEvent {
        exit_code: Some(137),
        ..event(EventKind::Die)
    });
    assert_eq!(die.kind(), proto::EventKind::Die);
    assert_eq!(die.exit_code, Some(137));
    assert_eq!(die.health(), proto::Health::Unspecified);
    assert_eq!(die.time_nanos, 1_764_504_000_123_456_789);
    assert_eq!(die.container_id, "c1");

    let kill = container_event(&ContainerEvent {
        signal: Some("9".into()),
        ..event(EventKind::Kill)
    });
    assert_eq!(kill.kind(), proto::EventKind::Kill);
    assert_eq!(kill.signal.as_deref(), Some("9"));

    let unhealthy = container_event(&ContainerEvent {
        health: Some(Health::Unhealthy),
        ..event(EventKind::HealthStatus)
    });
    assert_eq!(unhealthy.kind(), proto::EventKind::HealthStatus);
    assert_eq!(unhealthy.health(), proto::Health::Unhealthy);

    for (kind, _) in EventKind::ALL {
        assert_ne!(
            container_event(&event(kind)).kind(),
            proto::EventKind::Unspecified,
            "{kind:?}"
        );
    }
}

#[test]
fn a_containers_usage_is_told_with_its_id() {
    let usage = container_usage(
        "c1",
        &ContainerUsage {
            cpu_percent: 150.0,
            memory_used_bytes: 42_000_000,
            memory_limit_bytes: Some(64 << 20),
            pids: Some(12),
            cgroup: CgroupVersion::V1,
        },
    );
    assert_eq!(usage.container_id, "c1");
    assert!((usage.cpu_percent - 150.0).abs() < f64::EPSILON);
    assert_eq!(usage.memory_used_bytes, 42_000_000);
    assert_eq!(usage.memory_limit_bytes, Some(64 << 20));
    assert_eq!(usage.pids, Some(12));
}

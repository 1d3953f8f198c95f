//! The hand-written messages against `fleet.proto`: each one, with every field set, decodes with
//! the descriptor compiled from the specification leaving nothing unknown and nothing unset, so a
//! field of one that the other lacks, or numbered or typed differently, fails here.

use std::collections::HashMap;

use efms_fleet_proto::{
    agent_message, server_message, Ack, AgentMessage, ConfigCheck, ConfigChecks, ConfigVersion,
    Container, ContainerEvent, ContainerSnapshot, ContainerState, ContainerUsage, ContainerUsages,
    Disk, DiskUsage, EngineVersion, EventKind, Health, Heartbeat, Hello, HostFacts, HostUsage,
    InterfaceAddress, Limits, Port, Revoked, ServerMessage, Settings, Welcome,
};
use efms_fleet_proto::{order, Launch, Order, OrderDone, Refused};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage as _};

fn pool() -> DescriptorPool {
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/fleet.proto");
    let files =
        protox::compile([spec], [env!("CARGO_MANIFEST_DIR")]).expect("fleet.proto compiles");
    DescriptorPool::from_file_descriptor_set(files).expect("descriptor pool")
}

/// Decodes `message` as the spec's `name` and checks every field is known and, but for the
/// oneof members in `unset`, set.
fn check(pool: &DescriptorPool, name: &str, message: &impl Message, unset: &[&str]) {
    let descriptor = pool
        .get_message_by_name(&format!("efms.fleet.v1.{name}"))
        .unwrap_or_else(|| panic!("{name} is in the spec"));
    let dynamic = DynamicMessage::decode(descriptor.clone(), message.encode_to_vec().as_slice())
        .unwrap_or_else(|error| panic!("{name} decodes with the spec: {error}"));
    assert_eq!(
        dynamic.unknown_fields().count(),
        0,
        "{name} has fields the spec lacks"
    );
    for field in descriptor.fields() {
        if unset.contains(&field.name()) {
            continue;
        }
        assert!(
            dynamic.has_field(&field),
            "{name}.{} of the spec is missing or numbered differently",
            field.name()
        );
    }
    assert_eq!(dynamic.descriptor().full_name(), descriptor.full_name());
}

fn labels() -> HashMap<String, String> {
    HashMap::from([("k".to_owned(), "v".to_owned())])
}

fn facts() -> HostFacts {
    HostFacts {
        hostname: "vm-1".into(),
        addresses: vec![InterfaceAddress {
            interface: "eth0".into(),
            address: "10.0.0.1".into(),
            prefix_len: 24,
        }],
        os: "Debian".into(),
        kernel: "6.1".into(),
        architecture: "x86_64".into(),
        cpu_count: 2,
        memory_bytes: 1,
        disks: vec![Disk {
            device: "/dev/vda".into(),
            mount_point: "/".into(),
            filesystem: "ext4".into(),
            size_bytes: 1,
        }],
        docker: Some(EngineVersion {
            version: "20.10".into(),
            api_version: "1.41".into(),
            negotiated_api_version: "1.41".into(),
        }),
        agent_version: "0.1.0".into(),
    }
}

fn container() -> Container {
    Container {
        id: "a".repeat(64),
        name: "envoy".into(),
        image: "envoy:1".into(),
        image_id: "sha256:1".into(),
        node_id: Some("n".into()),
        state: ContainerState::Running.into(),
        health: Health::Healthy.into(),
        restart_count: 1,
        exit_code: Some(0),
        oom_killed: true,
        created_at: Some(1),
        started_at: Some(2),
        finished_at: Some(3),
        limits: Some(Limits {
            memory_bytes: Some(1),
            cpus: Some(0.5),
            pids: Some(3),
        }),
        ports: vec![Port {
            container_port: 1,
            protocol: "tcp".into(),
            host_ip: Some("0.0.0.0".into()),
            host_port: Some(2),
        }],
        labels: labels(),
    }
}

#[test]
fn every_agent_message_matches_the_spec_field_for_field() {
    let pool = pool();
    let usage = HostUsage {
        cpu_percent: 1.0,
        load_1m: 1.0,
        load_5m: 1.0,
        load_15m: 1.0,
        memory_used_bytes: 1,
        memory_total_bytes: 2,
        disks: vec![DiskUsage {
            mount_point: "/".into(),
            used_bytes: 1,
            available_bytes: 1,
            size_bytes: 2,
        }],
        network_rx_bytes_per_second: 1.0,
        network_tx_bytes_per_second: 1.0,
    };
    let hello = Hello {
        epoch: "e".into(),
        facts: Some(facts()),
        region: "r".into(),
        zone: "z".into(),
        labels: labels(),
    };
    let heartbeat = Heartbeat {
        sampled_at: 1,
        usage: Some(usage.clone()),
        engine_reachable: true,
        engine_error: "e".into(),
    };
    let event = ContainerEvent {
        container_id: "a".repeat(64),
        name: "envoy".into(),
        image: "envoy:1".into(),
        node_id: Some("n".into()),
        kind: EventKind::Die.into(),
        exit_code: Some(137),
        signal: Some("9".into()),
        health: Health::Unhealthy.into(),
        time_nanos: 1,
    };
    let usages = ContainerUsages {
        sampled_at: 1,
        containers: vec![ContainerUsage {
            container_id: "a".repeat(64),
            cpu_percent: 1.0,
            memory_used_bytes: 1,
            memory_limit_bytes: Some(2),
            pids: Some(3),
        }],
    };
    check(&pool, "Hello", &hello, &[]);
    check(&pool, "HostFacts", &facts(), &[]);
    check(&pool, "Heartbeat", &heartbeat, &[]);
    check(&pool, "HostUsage", &usage, &[]);
    check(&pool, "Container", &container(), &[]);
    check(&pool, "ContainerEvent", &event, &[]);
    check(&pool, "ContainerUsages", &usages, &[]);
    let config = config_checks();
    check(&pool, "ConfigChecks", &config, &[]);
    check(&pool, "ConfigCheck", &config.proxies[0], &[]);
    let snapshot = ContainerSnapshot {
        containers: vec![container()],
    };
    check(&pool, "ContainerSnapshot", &snapshot, &[]);
    let bodies = [
        ("hello", agent_message::Body::Hello(hello)),
        ("facts", agent_message::Body::Facts(facts())),
        ("heartbeat", agent_message::Body::Heartbeat(heartbeat)),
        ("snapshot", agent_message::Body::Snapshot(snapshot)),
        ("event", agent_message::Body::Event(event)),
        ("usage", agent_message::Body::Usage(usages)),
        ("done", agent_message::Body::Done(done())),
        ("config", agent_message::Body::Config(config)),
    ];
    check(&pool, "OrderDone", &done(), &[]);
    let members = [
        "hello",
        "facts",
        "heartbeat",
        "snapshot",
        "event",
        "usage",
        "done",
        "config",
    ];
    for (name, body) in bodies {
        let unset: Vec<&str> = members.iter().copied().filter(|m| *m != name).collect();
        let message = AgentMessage {
            seq: 7,
            body: Some(body),
        };
        check(&pool, "AgentMessage", &message, &unset);
    }
}

#[test]
fn every_server_message_matches_the_spec_field_for_field() {
    let pool = pool();
    let settings = Settings {
        heartbeat_interval_ms: 10_000,
        watch_images: vec!["envoy".into()],
    };
    let welcome = Welcome {
        tenant: "acme".into(),
        vm: "vm-1".into(),
        settings: Some(settings.clone()),
        acked_seq: 3,
        last_event_nanos: 4,
    };
    check(&pool, "Welcome", &welcome, &[]);
    check(&pool, "Settings", &settings, &[]);
    let bodies = [
        ("welcome", server_message::Body::Welcome(welcome)),
        ("ack", server_message::Body::Ack(Ack { seq: 1 })),
        ("settings", server_message::Body::Settings(settings)),
        (
            "revoked",
            server_message::Body::Revoked(Revoked {
                reason: "removed".into(),
            }),
        ),
        (
            "refused",
            server_message::Body::Refused(Refused {
                seq: 2,
                field: "heartbeat.usage.cpu_percent".into(),
                problem: "-1 is not between 0 and 100".into(),
            }),
        ),
        ("order", server_message::Body::Order(launch_order())),
    ];
    let actions = ["launch", "restart", "stop", "start", "remove", "probe"];
    let orders = [
        ("launch", launch_order()),
        ("restart", order_of(order::Action::Restart("c".into()))),
        ("stop", order_of(order::Action::Stop("c".into()))),
        ("start", order_of(order::Action::Start("c".into()))),
        ("remove", order_of(order::Action::Remove("c".into()))),
        ("probe", order_of(order::Action::Probe("envoy:1".into()))),
    ];
    for (name, order) in orders {
        let unset: Vec<&str> = actions.iter().copied().filter(|m| *m != name).collect();
        check(&pool, "Order", &order, &unset);
    }
    if let Some(order::Action::Launch(launch)) = launch_order().action {
        check(&pool, "Launch", &launch, &[]);
    }
    let members = ["welcome", "ack", "settings", "revoked", "refused", "order"];
    for (name, body) in bodies {
        let unset: Vec<&str> = members.iter().copied().filter(|m| *m != name).collect();
        check(
            &pool,
            "ServerMessage",
            &ServerMessage { body: Some(body) },
            &unset,
        );
    }
}

#[test]
fn the_enumerations_number_their_values_as_the_spec_does() {
    let pool = pool();
    let numbers = |name: &str| -> Vec<(String, i32)> {
        pool.get_enum_by_name(&format!("efms.fleet.v1.{name}"))
            .unwrap_or_else(|| panic!("{name} is in the spec"))
            .values()
            .map(|value| (value.name().to_owned(), value.number()))
            .collect()
    };
    let states = numbers("ContainerState");
    assert_eq!(states.len(), 8);
    for (name, number) in states {
        let ours = ContainerState::try_from(number).expect("a value of ours");
        assert_eq!(
            format!("CONTAINER_STATE_{}", ours.as_str_name_upper()),
            name
        );
    }
    let kinds = numbers("EventKind");
    assert_eq!(kinds.len(), 10);
    for (name, number) in kinds {
        let ours = EventKind::try_from(number).expect("a value of ours");
        assert_eq!(format!("EVENT_KIND_{}", ours.as_str_name_upper()), name);
    }
    let healths = numbers("Health");
    assert_eq!(healths.len(), 5);
    for (name, number) in healths {
        let ours = Health::try_from(number).expect("a value of ours");
        assert_eq!(format!("HEALTH_{}", ours.as_str_name_upper()), name);
    }
}

/// The upper-case snake name of a value, as `Debug` spells it in camel case.
trait UpperName {
    fn as_str_name_upper(&self) -> String;
}

impl<T: std::fmt::Debug> UpperName for T {
    fn as_str_name_upper(&self) -> String {
        let mut out = String::new();
        for (i, c) in format!("{self:?}").chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }
}

fn config_checks() -> ConfigChecks {
    ConfigChecks {
        read_at: 1,
        proxies: vec![ConfigCheck {
            container_id: "a".repeat(64),
            node_id: "edge-1".into(),
            versions: vec![ConfigVersion {
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                version: "v1".into(),
            }],
            error: "refused".into(),
        }],
    }
}

fn done() -> OrderDone {
    OrderDone {
        operation_id: "op-1".into(),
        container_id: "c".into(),
        error: "no such image".into(),
        image_id: "sha256:1".into(),
        envoy_version: "1.40.0".into(),
    }
}

fn order_of(action: order::Action) -> Order {
    Order {
        operation_id: "op-1".into(),
        action: Some(action),
    }
}

fn launch_order() -> Order {
    order_of(order::Action::Launch(Launch {
        node_id: "vm-1-edge-1".into(),
        group: "edge".into(),
        image: "envoy:1".into(),
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        admin_port: 9901,
        env: labels(),
        labels: labels(),
        bootstrap: "{}".into(),
    }))
}

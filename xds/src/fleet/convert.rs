//! The fleet protocol's messages read into the domain's terms, every field checked: a report
//! that fails is refused whole, naming the field as a path (`snapshot.containers[2].id`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use efms_domain::fleet::config_check::{check_config_check, ConfigCheck};
use efms_domain::fleet::reports::{
    check_container, check_container_usage, check_event, check_host_usage, ContainerUsage,
    DiskUsage, HostUsage, ReportFault,
};
use efms_domain::fleet::{
    Container, ContainerState, Disk, EngineVersion, EventKind, Health, HostFacts, InterfaceAddress,
    LifecycleEvent, Limits, Port,
};
use efms_fleet_proto as proto;

fn fault(field: impl Into<String>, problem: impl Into<String>) -> ReportFault {
    ReportFault {
        field: field.into(),
        problem: problem.into(),
    }
}

fn required<'a, T>(field: &str, value: Option<&'a T>) -> Result<&'a T, ReportFault> {
    value.ok_or_else(|| fault(field, "is required"))
}

/// The latest time a report may carry: a day ahead of this server's clock.
fn latest() -> DateTime<Utc> {
    Utc::now() + chrono::TimeDelta::days(1)
}

fn time_ms(field: &str, ms: Option<i64>) -> Result<Option<DateTime<Utc>>, ReportFault> {
    ms.map(|ms| {
        DateTime::from_timestamp_millis(ms)
            .filter(|at| at.timestamp() >= 0 && *at <= latest())
            .ok_or_else(|| {
                fault(
                    field,
                    "is not a time since 1970 and before tomorrow (milliseconds since the epoch)",
                )
            })
    })
    .transpose()
}

/// Checks a text a report carries: at most `max` bytes, no control character (which the
/// database could not store, or a log would print).
pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<(), ReportFault> {
    if value.len() > max {
        return Err(fault(field, format!("has more than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(fault(field, "contains a control character"));
    }
    Ok(())
}

/// Checks the texts of a container or an event: name, image, node id, labels.
fn container_texts(
    field: &str,
    strings: &[(&str, &str)],
    labels: &std::collections::HashMap<String, String>,
) -> Result<(), ReportFault> {
    for (name, value) in strings {
        text(&format!("{field}.{name}"), value, 1024)?;
    }
    for (key, value) in labels {
        text(&format!("{field}.labels"), key, 1024)?;
        text(&format!("{field}.labels.{key}"), value, 4096)?;
    }
    Ok(())
}

/// A host's facts.
pub(crate) fn facts(field: &str, facts: &proto::HostFacts) -> Result<HostFacts, ReportFault> {
    if facts.hostname.is_empty() {
        return Err(fault(format!("{field}.hostname"), "is required"));
    }
    for (name, value) in [
        ("hostname", &facts.hostname),
        ("os", &facts.os),
        ("kernel", &facts.kernel),
        ("architecture", &facts.architecture),
        ("agent_version", &facts.agent_version),
    ] {
        text(&format!("{field}.{name}"), value, 1024)?;
    }
    for (i, disk) in facts.disks.iter().enumerate() {
        for (name, value) in [
            ("device", &disk.device),
            ("mount_point", &disk.mount_point),
            ("filesystem", &disk.filesystem),
        ] {
            text(&format!("{field}.disks[{i}].{name}"), value, 4096)?;
        }
    }
    if let Some(docker) = &facts.docker {
        for (name, value) in [
            ("version", &docker.version),
            ("api_version", &docker.api_version),
            ("negotiated_api_version", &docker.negotiated_api_version),
        ] {
            text(&format!("{field}.docker.{name}"), value, 200)?;
        }
    }
    if facts.cpu_count == 0 {
        return Err(fault(
            format!("{field}.cpu_count"),
            "a host has at least one CPU",
        ));
    }
    let addresses = facts
        .addresses
        .iter()
        .enumerate()
        .map(|(i, address)| {
            let at = format!("{field}.addresses[{i}]");
            text(&format!("{at}.interface"), &address.interface, 200)?;
            let parsed: std::net::IpAddr = address
                .address
                .parse()
                .map_err(|_| fault(format!("{at}.address"), "is not an IP address"))?;
            let most = if parsed.is_ipv4() { 32 } else { 128 };
            let prefix_len = u8::try_from(address.prefix_len)
                .ok()
                .filter(|len| u32::from(*len) <= most)
                .ok_or_else(|| fault(format!("{at}.prefix_len"), format!("is over {most}")))?;
            Ok(InterfaceAddress {
                interface: address.interface.clone(),
                address: parsed,
                prefix_len,
            })
        })
        .collect::<Result<_, ReportFault>>()?;
    Ok(HostFacts {
        hostname: facts.hostname.clone(),
        addresses,
        os: facts.os.clone(),
        kernel: facts.kernel.clone(),
        architecture: facts.architecture.clone(),
        cpu_count: facts.cpu_count,
        memory_bytes: facts.memory_bytes,
        disks: facts
            .disks
            .iter()
            .map(|disk| Disk {
                device: disk.device.clone(),
                mount_point: disk.mount_point.clone(),
                filesystem: disk.filesystem.clone(),
                size_bytes: disk.size_bytes,
            })
            .collect(),
        docker: facts.docker.as_ref().map(|docker| EngineVersion {
            version: docker.version.clone(),
            api_version: docker.api_version.clone(),
            negotiated_api_version: docker.negotiated_api_version.clone(),
        }),
        agent_version: facts.agent_version.clone(),
    })
}

/// A host's utilisation.
pub(crate) fn host_usage(field: &str, usage: &proto::HostUsage) -> Result<HostUsage, ReportFault> {
    for (i, disk) in usage.disks.iter().enumerate() {
        text(
            &format!("{field}.disks[{i}].mount_point"),
            &disk.mount_point,
            4096,
        )?;
    }
    let usage = HostUsage {
        cpu_percent: usage.cpu_percent,
        load: [usage.load_1m, usage.load_5m, usage.load_15m],
        memory_used_bytes: usage.memory_used_bytes,
        memory_total_bytes: usage.memory_total_bytes,
        disks: usage
            .disks
            .iter()
            .map(|disk| DiskUsage {
                mount_point: disk.mount_point.clone(),
                used_bytes: disk.used_bytes,
                available_bytes: disk.available_bytes,
                size_bytes: disk.size_bytes,
            })
            .collect(),
        network_rx_bytes_per_second: usage.network_rx_bytes_per_second,
        network_tx_bytes_per_second: usage.network_tx_bytes_per_second,
    };
    check_host_usage(field, &usage)?;
    Ok(usage)
}

fn state(field: &str, value: i32) -> Result<ContainerState, ReportFault> {
    match proto::ContainerState::try_from(value) {
        Ok(proto::ContainerState::Created) => Ok(ContainerState::Created),
        Ok(proto::ContainerState::Running) => Ok(ContainerState::Running),
        Ok(proto::ContainerState::Paused) => Ok(ContainerState::Paused),
        Ok(proto::ContainerState::Restarting) => Ok(ContainerState::Restarting),
        Ok(proto::ContainerState::Removing) => Ok(ContainerState::Removing),
        Ok(proto::ContainerState::Exited) => Ok(ContainerState::Exited),
        Ok(proto::ContainerState::Dead) => Ok(ContainerState::Dead),
        Ok(proto::ContainerState::Unspecified) | Err(_) => {
            Err(fault(field, format!("{value} is not a container state")))
        }
    }
}

fn health(field: &str, value: i32) -> Result<Option<Health>, ReportFault> {
    match proto::Health::try_from(value) {
        Ok(proto::Health::Unspecified) => Ok(None),
        Ok(proto::Health::None) => Ok(Some(Health::None)),
        Ok(proto::Health::Starting) => Ok(Some(Health::Starting)),
        Ok(proto::Health::Healthy) => Ok(Some(Health::Healthy)),
        Ok(proto::Health::Unhealthy) => Ok(Some(Health::Unhealthy)),
        Err(_) => Err(fault(field, format!("{value} is not a health"))),
    }
}

fn kind(field: &str, value: i32) -> Result<EventKind, ReportFault> {
    match proto::EventKind::try_from(value) {
        Ok(proto::EventKind::Create) => Ok(EventKind::Create),
        Ok(proto::EventKind::Start) => Ok(EventKind::Start),
        Ok(proto::EventKind::Restart) => Ok(EventKind::Restart),
        Ok(proto::EventKind::Die) => Ok(EventKind::Die),
        Ok(proto::EventKind::Oom) => Ok(EventKind::Oom),
        Ok(proto::EventKind::Kill) => Ok(EventKind::Kill),
        Ok(proto::EventKind::Stop) => Ok(EventKind::Stop),
        Ok(proto::EventKind::Destroy) => Ok(EventKind::Destroy),
        Ok(proto::EventKind::HealthStatus) => Ok(EventKind::HealthStatus),
        Ok(proto::EventKind::Unspecified) | Err(_) => {
            Err(fault(field, format!("{value} is not an event kind")))
        }
    }
}

/// A container of a snapshot.
pub(crate) fn container(
    field: &str,
    container: &proto::Container,
) -> Result<Container, ReportFault> {
    container_texts(
        field,
        &[
            ("name", &container.name),
            ("image", &container.image),
            ("image_id", &container.image_id),
            ("node_id", container.node_id.as_deref().unwrap_or_default()),
        ],
        &container.labels,
    )?;
    let limits = container.limits.clone().unwrap_or_default();
    let ports = container
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let at = format!("{field}.ports[{i}]");
            let number = |name: &str, value: u32| {
                u16::try_from(value)
                    .map_err(|_| fault(format!("{at}.{name}"), format!("{value} is not a port")))
            };
            text(&format!("{at}.protocol"), &port.protocol, 16)?;
            text(
                &format!("{at}.host_ip"),
                port.host_ip.as_deref().unwrap_or_default(),
                64,
            )?;
            Ok(Port {
                container_port: number("container_port", port.container_port)?,
                protocol: port.protocol.clone(),
                host_ip: port.host_ip.clone(),
                host_port: port
                    .host_port
                    .map(|value| number("host_port", value))
                    .transpose()?,
            })
        })
        .collect::<Result<_, ReportFault>>()?;
    let converted = Container {
        id: container.id.clone(),
        name: container.name.clone(),
        image: container.image.clone(),
        image_id: container.image_id.clone(),
        node_id: container.node_id.clone().filter(|id| !id.is_empty()),
        state: state(&format!("{field}.state"), container.state)?,
        health: required(
            &format!("{field}.health"),
            health(&format!("{field}.health"), container.health)?.as_ref(),
        )
        .copied()?,
        restart_count: container.restart_count,
        exit_code: container.exit_code,
        oom_killed: container.oom_killed,
        created_at: time_ms(&format!("{field}.created_at"), container.created_at)?,
        started_at: time_ms(&format!("{field}.started_at"), container.started_at)?,
        finished_at: time_ms(&format!("{field}.finished_at"), container.finished_at)?,
        limits: Limits {
            memory_bytes: limits.memory_bytes,
            cpus: limits.cpus,
            pids: limits.pids,
        },
        ports,
        labels: container
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    };
    check_container(field, &converted)?;
    Ok(converted)
}

/// A lifecycle event.
pub(crate) fn event(
    field: &str,
    event: &proto::ContainerEvent,
) -> Result<LifecycleEvent, ReportFault> {
    container_texts(
        field,
        &[
            ("name", &event.name),
            ("image", &event.image),
            ("node_id", event.node_id.as_deref().unwrap_or_default()),
            ("signal", event.signal.as_deref().unwrap_or_default()),
        ],
        &std::collections::HashMap::new(),
    )?;
    let latest_nanos = latest().timestamp_nanos_opt().unwrap_or(i64::MAX);
    if event.time_nanos > latest_nanos {
        return Err(fault(
            format!("{field}.time_nanos"),
            "is after tomorrow (nanoseconds since the epoch)",
        ));
    }
    let converted = LifecycleEvent {
        container_id: event.container_id.clone(),
        name: event.name.clone(),
        image: event.image.clone(),
        node_id: event.node_id.clone().filter(|id| !id.is_empty()),
        kind: kind(&format!("{field}.kind"), event.kind)?,
        exit_code: event.exit_code,
        signal: event.signal.clone(),
        health: health(&format!("{field}.health"), event.health)?,
        time_nanos: event.time_nanos,
    };
    if converted.kind == EventKind::HealthStatus && converted.health.is_none() {
        return Err(fault(
            format!("{field}.health"),
            "a health_status event says the new health",
        ));
    }
    check_event(field, &converted)?;
    Ok(converted)
}

/// A round of container usage, on a host of `cpus` CPUs.
pub(crate) fn usages(
    field: &str,
    usages: &proto::ContainerUsages,
    cpus: Option<u32>,
) -> Result<Vec<ContainerUsage>, ReportFault> {
    usages
        .containers
        .iter()
        .enumerate()
        .map(|(i, usage)| {
            let converted = ContainerUsage {
                container_id: usage.container_id.clone(),
                cpu_percent: usage.cpu_percent,
                memory_used_bytes: usage.memory_used_bytes,
                memory_limit_bytes: usage.memory_limit_bytes,
                pids: usage.pids,
            };
            check_container_usage(&format!("{field}.containers[{i}]"), &converted, cpus)?;
            Ok(converted)
        })
        .collect()
}

/// The most proxies one configuration check report may carry.
const MAX_CHECKED_PROXIES: usize = 1_000;

/// A configuration check report: when the dumps were read, and each proxy container's.
pub(crate) fn config_checks(
    field: &str,
    checks: &proto::ConfigChecks,
) -> Result<(DateTime<Utc>, Vec<ConfigCheck>), ReportFault> {
    let read_at = time_ms(&format!("{field}.read_at"), Some(checks.read_at))?
        .ok_or_else(|| fault(format!("{field}.read_at"), "is required"))?;
    if checks.proxies.len() > MAX_CHECKED_PROXIES {
        return Err(fault(
            format!("{field}.proxies"),
            format!("at most {MAX_CHECKED_PROXIES} proxies"),
        ));
    }
    let mut converted = Vec::with_capacity(checks.proxies.len());
    for (i, proxy) in checks.proxies.iter().enumerate() {
        let at = format!("{field}.proxies[{i}]");
        text(&format!("{at}.node_id"), &proxy.node_id, 256)?;
        text(&format!("{at}.error"), &proxy.error, 4_096)?;
        let check = ConfigCheck {
            container_id: proxy.container_id.clone(),
            node_id: proxy.node_id.clone(),
            versions: proxy
                .versions
                .iter()
                .map(|v| (v.type_url.clone(), v.version.clone()))
                .collect(),
            error: (!proxy.error.is_empty()).then(|| proxy.error.clone()),
        };
        check_config_check(&at, &check)?;
        converted.push(check);
    }
    Ok((read_at, converted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proto_container() -> proto::Container {
        proto::Container {
            id: "ab".repeat(32),
            name: "envoy".into(),
            image: "envoy:1".into(),
            state: proto::ContainerState::Running.into(),
            health: proto::Health::Healthy.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_sound_container_reads_as_the_domain_has_it() {
        let container = container("snapshot.containers[0]", &proto_container()).unwrap();
        assert_eq!(container.state, ContainerState::Running);
        assert_eq!(container.health, Health::Healthy);
    }

    #[test]
    fn a_container_without_a_state_or_with_a_short_id_is_refused_naming_the_field() {
        let mut unset = proto_container();
        unset.state = 0;
        assert_eq!(
            container("snapshot.containers[0]", &unset)
                .unwrap_err()
                .field,
            "snapshot.containers[0].state"
        );
        let mut short = proto_container();
        short.id = "abc".into();
        assert_eq!(
            container("snapshot.containers[0]", &short)
                .unwrap_err()
                .field,
            "snapshot.containers[0].id"
        );
    }

    #[test]
    fn a_container_with_a_control_character_or_a_time_before_1970_is_refused_naming_the_field() {
        let mut nul = proto_container();
        nul.name = "envoy\u{0}".into();
        assert_eq!(
            container("c", &nul).unwrap_err().field,
            "c.name",
            "the database could not store it"
        );
        let mut ancient = proto_container();
        ancient.created_at = Some(-300_000_000_000_000);
        assert_eq!(container("c", &ancient).unwrap_err().field, "c.created_at");
        let mut label = proto_container();
        label.labels.insert("k".into(), "v\u{0}".into());
        assert_eq!(container("c", &label).unwrap_err().field, "c.labels.k");
    }

    #[test]
    fn a_health_event_without_its_health_is_refused() {
        let event_without_health = proto::ContainerEvent {
            container_id: "ab".repeat(32),
            kind: proto::EventKind::HealthStatus.into(),
            time_nanos: 1,
            ..Default::default()
        };
        assert_eq!(
            event("event", &event_without_health).unwrap_err().field,
            "event.health"
        );
    }

    #[test]
    fn facts_with_a_malformed_address_are_refused_naming_it() {
        let facts_in = proto::HostFacts {
            hostname: "vm".into(),
            cpu_count: 2,
            addresses: vec![proto::InterfaceAddress {
                interface: "eth0".into(),
                address: "10.0.0.300".into(),
                prefix_len: 24,
            }],
            ..Default::default()
        };
        assert_eq!(
            facts("hello.facts", &facts_in).unwrap_err().field,
            "hello.facts.addresses[0].address"
        );
    }

    #[test]
    fn a_configuration_check_without_a_time_or_with_a_control_character_is_refused_naming_it() {
        let proxy = proto::ConfigCheck {
            container_id: "ab".repeat(32),
            node_id: "edge-1".into(),
            versions: vec![proto::ConfigVersion {
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                version: "v1".into(),
            }],
            error: String::new(),
        };
        let sound = proto::ConfigChecks {
            read_at: 1_700_000_000_000,
            proxies: vec![proxy.clone()],
        };
        let (_, checks) = config_checks("config", &sound).unwrap();
        assert_eq!(checks[0].error, None);
        let untimed = proto::ConfigChecks {
            read_at: -1,
            ..sound.clone()
        };
        assert_eq!(
            config_checks("config", &untimed).unwrap_err().field,
            "config.read_at"
        );
        let mut bell = proxy;
        bell.node_id = "edge\u{7}".into();
        let ringing = proto::ConfigChecks {
            proxies: vec![bell],
            ..sound
        };
        assert_eq!(
            config_checks("config", &ringing).unwrap_err().field,
            "config.proxies[0].node_id"
        );
    }
}

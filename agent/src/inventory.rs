//! The Envoy containers of one engine: which ones the agent watches, and what it says of each.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum, HostConfig, PortMap,
};
use bollard::query_parameters::ListContainersOptionsBuilder;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::{is_not_found, Engine, EngineError};
use crate::time::parse_docker_time;

/// The label naming the Envoy `node.id` a container runs; such a container is that proxy.
pub const NODE_ID_LABEL: &str = "efms.node_id";

/// Which containers the agent reports: those labelled [`NODE_ID_LABEL`], and those of the images
/// the VM is told to watch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// Image references: `repository` matches every tag of it, `repository:tag` that tag only.
    pub images: Vec<String>,
}

impl Watch {
    /// Whether a container with these labels, created from `image` (the reference it was created
    /// with), is watched.
    pub fn matches(&self, labels: &HashMap<String, String>, image: &str) -> bool {
        labels.contains_key(NODE_ID_LABEL) || self.images.iter().any(|w| image_matches(w, image))
    }
}

/// Whether the image reference `image` is `watched`, or a tag of it when `watched` has none.
fn image_matches(watched: &str, image: &str) -> bool {
    if image == watched {
        return true;
    }
    let (repository, _tag) = split_tag(image);
    split_tag(watched).1.is_none() && repository == watched
}

/// `repository[:tag]` split at the tag's colon (not a registry port's).
fn split_tag(image: &str) -> (&str, Option<&str>) {
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[name_start..].find(':') {
        Some(colon) => (
            &image[..name_start + colon],
            Some(&image[name_start + colon + 1..]),
        ),
        None => (image, None),
    }
}

/// A container's state, as Docker names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl ContainerState {
    fn from_docker(status: Option<ContainerStateStatusEnum>) -> Self {
        match status {
            Some(ContainerStateStatusEnum::RUNNING) => Self::Running,
            Some(ContainerStateStatusEnum::PAUSED) => Self::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => Self::Restarting,
            Some(ContainerStateStatusEnum::REMOVING) => Self::Removing,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::STOPPING) => {
                Self::Exited
            }
            Some(ContainerStateStatusEnum::DEAD) => Self::Dead,
            _ => Self::Created,
        }
    }
}

/// A container's health, from its health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No health check, or the container does not run (Docker keeps the last status of a
    /// stopped container; it says nothing any more).
    None,
    /// Checked, not yet healthy (start period).
    Starting,
    /// The last checks passed.
    Healthy,
    /// The last checks failed.
    Unhealthy,
}

impl Health {
    /// Docker's name of a status (`healthy`, ...), as in `health_status` events.
    pub fn from_docker_name(name: &str) -> Self {
        match name.trim() {
            "starting" => Self::Starting,
            "healthy" => Self::Healthy,
            "unhealthy" => Self::Unhealthy,
            _ => Self::None,
        }
    }

    fn from_docker(status: Option<HealthStatusEnum>) -> Self {
        match status {
            Some(HealthStatusEnum::STARTING) => Self::Starting,
            Some(HealthStatusEnum::HEALTHY) => Self::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => Self::Unhealthy,
            _ => Self::None,
        }
    }
}

/// The resources a container may use; `None` for unlimited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory, in bytes (`--memory`).
    pub memory_bytes: Option<u64>,
    /// CPUs, possibly fractional (`--cpus`, or `--cpu-quota` over `--cpu-period`).
    pub cpus: Option<f64>,
    /// Processes (`--pids-limit`).
    pub pids: Option<u64>,
}

impl Limits {
    fn from_host_config(config: &HostConfig) -> Self {
        let positive =
            |value: Option<i64>| value.and_then(|v| u64::try_from(v).ok()).filter(|&v| v > 0);
        #[allow(clippy::cast_precision_loss)]
        let cpus = match (positive(config.nano_cpus), positive(config.cpu_quota)) {
            (Some(nano), _) => Some(nano as f64 / 1e9),
            (None, Some(quota)) => {
                // The kernel's default period when none is set: 100 ms.
                let period = positive(config.cpu_period).unwrap_or(100_000);
                Some(quota as f64 / period as f64)
            }
            (None, None) => None,
        };
        Self {
            memory_bytes: positive(config.memory),
            cpus,
            pids: positive(config.pids_limit),
        }
    }
}

/// A port a container exposes, and where the host publishes it, if it does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    /// The container's port.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The host address it is published on.
    pub host_ip: Option<String>,
    /// The host port it is published on.
    pub host_port: Option<u16>,
}

/// One container, as the agent reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// Docker's full container id.
    pub id: String,
    /// Its name, without Docker's leading slash.
    pub name: String,
    /// The image reference it was created with.
    pub image: String,
    /// The image's id.
    pub image_id: String,
    /// The Envoy `node.id` it runs, from its [`NODE_ID_LABEL`] label.
    pub node_id: Option<String>,
    /// Its state.
    pub state: ContainerState,
    /// Its health (see [`Health::None`]).
    pub health: Health,
    /// How often Docker restarted it.
    pub restart_count: u64,
    /// The exit code of its last run, once it ended.
    pub exit_code: Option<i64>,
    /// Whether the kernel's OOM killer ended its last run.
    pub oom_killed: bool,
    /// When it was created.
    pub created_at: Option<DateTime<Utc>>,
    /// When its last run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When its last run ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Its resource limits.
    pub limits: Limits,
    /// Its exposed and published ports.
    pub ports: Vec<Port>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

impl Container {
    /// The container an inspection describes; `None` when it lacks an id.
    pub fn from_inspect(inspected: ContainerInspectResponse) -> Option<Self> {
        let id = inspected.id?;
        let config = inspected.config.unwrap_or_default();
        let state = inspected.state.unwrap_or_default();
        let host_config = inspected.host_config.unwrap_or_default();
        let labels: BTreeMap<String, String> =
            config.labels.unwrap_or_default().into_iter().collect();
        let container_state = ContainerState::from_docker(state.status);
        let health = if container_state == ContainerState::Running {
            Health::from_docker(state.health.and_then(|health| health.status))
        } else {
            Health::None
        };
        let started_at = parse_docker_time(state.started_at.as_deref());
        let ended = started_at.is_some()
            && !matches!(
                container_state,
                ContainerState::Running | ContainerState::Paused | ContainerState::Restarting
            );
        let published = inspected
            .network_settings
            .and_then(|settings| settings.ports)
            .filter(|ports| !ports.is_empty())
            // A container that does not run has no live bindings: say what it asked for.
            .or(host_config.port_bindings.clone());
        Some(Self {
            name: inspected
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            image: config.image.unwrap_or_default(),
            image_id: inspected.image.unwrap_or_default(),
            node_id: labels.get(NODE_ID_LABEL).cloned(),
            state: container_state,
            health,
            restart_count: inspected
                .restart_count
                .and_then(|count| u64::try_from(count).ok())
                .unwrap_or(0),
            exit_code: if ended { state.exit_code } else { None },
            oom_killed: state.oom_killed.unwrap_or(false),
            created_at: inspected
                .created
                .as_deref()
                .and_then(|created| parse_docker_time(Some(created))),
            started_at,
            finished_at: parse_docker_time(state.finished_at.as_deref()),
            limits: Limits::from_host_config(&host_config),
            ports: ports(config.exposed_ports.unwrap_or_default(), published),
            labels,
            id,
        })
    }
}

/// The exposed ports, with where the host publishes them.
fn ports(exposed: Vec<String>, published: Option<PortMap>) -> Vec<Port> {
    let published = published.unwrap_or_default();
    let mut keys: Vec<String> = exposed;
    keys.extend(published.keys().cloned());
    keys.sort();
    keys.dedup();
    let mut ports = Vec::new();
    for key in keys {
        let (number, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let Ok(container_port) = number.parse::<u16>() else {
            continue;
        };
        let bindings = published.get(&key).cloned().flatten().unwrap_or_default();
        if bindings.is_empty() {
            ports.push(Port {
                container_port,
                protocol: protocol.to_owned(),
                host_ip: None,
                host_port: None,
            });
        }
        for binding in bindings {
            ports.push(Port {
                container_port,
                protocol: protocol.to_owned(),
                host_ip: binding.host_ip.filter(|ip| !ip.is_empty()),
                host_port: binding.host_port.and_then(|port| port.parse().ok()),
            });
        }
    }
    ports
}

/// Every watched container of the engine, running or not, inspected.
pub async fn list(engine: &Engine, watch: &Watch) -> Result<Vec<Container>, EngineError> {
    let summaries = engine
        .docker()
        .list_containers(Some(
            ListContainersOptionsBuilder::default().all(true).build(),
        ))
        .await
        .map_err(|error| engine.api_error(error))?;
    let mut containers = Vec::new();
    for summary in summaries {
        let (Some(id), labels) = (summary.id, summary.labels.unwrap_or_default()) else {
            continue;
        };
        if !watch.matches(&labels, summary.image.as_deref().unwrap_or_default()) {
            continue;
        }
        // A container removed between the list and its inspection is simply gone.
        if let Some(container) = inspect(engine, &id).await? {
            containers.push(container);
        }
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(containers)
}

/// One container by id or name; `None` when the engine has no such container.
pub async fn inspect(engine: &Engine, id: &str) -> Result<Option<Container>, EngineError> {
    match engine.docker().inspect_container(id, None).await {
        Ok(inspected) => Ok(Container::from_inspect(inspected)),
        Err(error) if is_not_found(&error) => Ok(None),
        Err(error) => Err(engine.api_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn watch_takes_the_node_id_label_or_a_watched_image() {
        let watch = Watch {
            images: vec!["envoyproxy/envoy".into(), "registry:5000/edge:1.2".into()],
        };
        let labelled = HashMap::from([(NODE_ID_LABEL.to_owned(), "edge-1".to_owned())]);
        assert!(watch.matches(&labelled, "anything"));
        let none = HashMap::new();
        assert!(watch.matches(&none, "envoyproxy/envoy:v1.40.0"));
        assert!(watch.matches(&none, "envoyproxy/envoy"));
        assert!(watch.matches(&none, "registry:5000/edge:1.2"));
        assert!(!watch.matches(&none, "registry:5000/edge:1.3"));
        assert!(!watch.matches(&none, "envoyproxy/envoy-dev:latest"));
        assert!(!watch.matches(&none, "postgres:15"));
    }

    #[test]
    fn an_inspection_becomes_a_container_with_limits_ports_and_no_stale_health() {
        let inspected: ContainerInspectResponse = serde_json::from_value(serde_json::json!({
            "Id": "abc123",
            "Name": "/edge-1",
            "Image": "sha256:feed",
            "Created": "2026-11-30T12:00:00.5Z",
            "RestartCount": 2,
            "State": {
                "Status": "exited", "Running": false, "OOMKilled": true, "ExitCode": 137,
                "StartedAt": "2026-11-30T12:00:01Z", "FinishedAt": "2026-11-30T12:05:00Z",
                "Health": {"Status": "healthy", "FailingStreak": 0}
            },
            "HostConfig": {
                "Memory": 67_108_864, "NanoCpus": 500_000_000, "PidsLimit": 100,
                "PortBindings": {"10000/tcp": [{"HostIp": "", "HostPort": "18080"}]}
            },
            "Config": {
                "Image": "efms-test/envoy:1.40.0",
                "Labels": {"efms.node_id": "edge-1", "team": "web"},
                "ExposedPorts": {"9901/tcp": {}}
            },
            "NetworkSettings": {"Ports": {}}
        }))
        .unwrap();
        let container = Container::from_inspect(inspected).unwrap();
        assert_eq!(container.name, "edge-1");
        assert_eq!(container.node_id.as_deref(), Some("edge-1"));
        assert_eq!(container.state, ContainerState::Exited);
        assert_eq!(container.health, Health::None);
        assert_eq!(container.exit_code, Some(137));
        assert!(container.oom_killed);
        assert_eq!(container.restart_count, 2);
        assert_eq!(
            container.limits,
            Limits {
                memory_bytes: Some(64 << 20),
                cpus: Some(0.5),
                pids: Some(100)
            }
        );
        assert_eq!(container.ports.len(), 2);
        assert_eq!(container.ports[0].host_port, Some(18080));
        assert_eq!(container.ports[1].container_port, 9901);
    }

    #[test]
    fn cpu_quota_over_period_counts_as_cpus() {
        let limits = Limits::from_host_config(&HostConfig {
            cpu_quota: Some(150_000),
            cpu_period: Some(100_000),
            pids_limit: Some(-1),
            memory: Some(0),
            ..HostConfig::default()
        });
        assert_eq!(limits.cpus, Some(1.5));
        assert_eq!(limits.pids, None);
        assert_eq!(limits.memory_bytes, None);
    }
}

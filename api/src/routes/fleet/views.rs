//! What the fleet's routes answer.

use chrono::{DateTime, Utc};
use efms_domain::fleet::Container as ContainerModel;
use efms_projections::fleet::queries::{ContainerChange, ContainerRow, UtilisationBucket, VmRow};
use serde::Serialize;
use serde_json::value::{to_raw_value, RawValue};
use serde_json::Value;

/// A VM.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Vm {
    /// Its name.
    name: String,
    /// Its labels.
    #[schema(value_type = Object)]
    labels: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    /// Images whose containers its agent reports, besides those labelled `efms.node_id`.
    #[schema(value_type = Vec<String>)]
    watch_images: Box<RawValue>,
    /// `down`, `ready`, `docker_unreachable` or `removed`.
    state: String,
    /// Why it is in that state.
    #[serde(skip_serializing_if = "Option::is_none")]
    state_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_since: Option<DateTime<Utc>>,
    /// Whether its agent's stream is open now.
    #[serde(skip_serializing_if = "Option::is_none")]
    connected: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_heartbeat_at: Option<DateTime<Utc>>,
    /// Whether its Docker engine answered at the last heartbeat, and why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    engine_reachable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    engine_error: Option<String>,
    /// What its host is (hostname, addresses, OS, kernel, CPUs, memory, disks, Docker, agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    facts: Option<Box<RawValue>>,
    /// Its utilisation at the last heartbeat (CPU %, load, memory, disks, network).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    utilisation: Option<Box<RawValue>>,
    /// Its containers not gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    container_count: Option<i64>,
    /// With `GET /vms/{name}`: the containers on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    containers: Option<Vec<Container>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registered_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed_at: Option<DateTime<Utc>>,
    /// Its stream's last sequence.
    version: i64,
    /// With `?at=`: the moment it is shown as of.
    #[serde(skip_serializing_if = "Option::is_none")]
    as_of: Option<DateTime<Utc>>,
}

impl Vm {
    /// The VM as the read models have it.
    pub(crate) fn from_row(row: VmRow, containers: Option<Vec<Container>>) -> Self {
        Self {
            name: row.name,
            labels: row.labels.0,
            region: row.region,
            zone: row.zone,
            watch_images: row.watch_images.0,
            state: row.state,
            state_reason: Some(row.state_reason).filter(|reason| !reason.is_empty()),
            state_since: Some(row.state_since),
            connected: Some(row.connected.unwrap_or(false)),
            last_heartbeat_at: row.last_heartbeat_at,
            engine_reachable: row.engine_reachable,
            engine_error: row.engine_error,
            facts: row.facts.map(|facts| facts.0),
            utilisation: row.usage.map(|usage| usage.0),
            container_count: Some(row.containers),
            containers,
            registered_at: Some(row.registered_at),
            registered_by: Some(row.registered_by),
            removed_at: row.removed_at,
            version: row.version,
            as_of: None,
        }
    }

    /// The VM as its stream said at `at`.
    pub(crate) fn as_of(
        vm: &efms_domain::fleet::Vm,
        version: i64,
        at: DateTime<Utc>,
    ) -> Result<Self, serde_json::Error> {
        let placement = vm.placement();
        Ok(Self {
            name: vm.name().map(ToString::to_string).unwrap_or_default(),
            labels: to_raw_value(&placement.labels)?,
            region: placement.region.clone(),
            zone: placement.zone.clone(),
            watch_images: to_raw_value(&placement.watch_images)?,
            state: vm.state().as_str().to_owned(),
            state_reason: None,
            state_since: None,
            connected: None,
            last_heartbeat_at: None,
            engine_reachable: None,
            engine_error: None,
            facts: vm.facts().map(to_raw_value).transpose()?,
            utilisation: None,
            container_count: None,
            containers: Some(
                vm.containers()
                    .map(|container| Container::as_of(container.clone(), None))
                    .collect(),
            ),
            registered_at: None,
            registered_by: None,
            removed_at: None,
            version,
            as_of: Some(at),
        })
    }
}

/// A container, and the proxy it is.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Container {
    /// The container as its agent reported it: id, name, image, node id, state, health, restart
    /// count, exit code, OOM-killed, times, limits, ports, labels.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    reported: ContainerModel,
    /// The VM it is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    vm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_seen_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gone_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gone_reason: Option<String>,
    /// With `GET /containers/{id}`: the sync status of the proxy it is (label `efms.node_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    proxy: Option<Value>,
    /// With `?at=`: the moment it is shown as of.
    #[serde(skip_serializing_if = "Option::is_none")]
    as_of: Option<DateTime<Utc>>,
}

impl Container {
    /// The container as the read models have it.
    pub(crate) fn from_row(row: ContainerRow) -> Self {
        Self {
            reported: row.container,
            vm: Some(row.vm),
            first_seen_at: Some(row.first_seen_at),
            updated_at: Some(row.updated_at),
            gone_at: row.gone_at,
            gone_reason: row.gone_reason,
            proxy: None,
            as_of: None,
        }
    }

    /// The container as it was at `at` (`None`: as it is in its VM's state).
    pub(crate) fn as_of(container: ContainerModel, at: Option<DateTime<Utc>>) -> Self {
        Self {
            reported: container,
            vm: None,
            first_seen_at: None,
            updated_at: None,
            gone_at: None,
            gone_reason: None,
            proxy: None,
            as_of: at,
        }
    }

    /// The same, with its proxy's status.
    pub(crate) fn with_proxy(mut self, proxy: Option<Value>) -> Self {
        self.proxy = proxy;
        self
    }

    /// Its id.
    pub(crate) fn node_id(&self) -> Option<&str> {
        self.reported.node_id.as_deref()
    }

    /// With the VM it was on.
    pub(crate) fn on(mut self, vm: String) -> Self {
        self.vm = Some(vm);
        self
    }
}

/// One change of a container.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ContainerEvent {
    /// Its place in its VM's history.
    sequence: i64,
    /// `observed`, `gone`, or a lifecycle event: `create`, `start`, `restart`, `die`, `oom`,
    /// `kill`, `stop`, `destroy`, `health_status`.
    change: String,
    /// The engine's time for a lifecycle event, else when it was recorded.
    at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    health: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl From<ContainerChange> for ContainerEvent {
    fn from(change: ContainerChange) -> Self {
        Self {
            sequence: change.seq,
            change: change.change,
            at: change.at,
            recorded_at: change.recorded_at,
            exit_code: change.exit_code,
            signal: change.signal,
            health: change.health,
            reason: change.reason,
        }
    }
}

/// One event of a VM's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VmHistoryEntry {
    /// Its place in the VM's stream.
    sequence: i64,
    /// Its type (`VmRegistered`, `VmStateChanged`, `ContainerLifecycle`, ...).
    #[serde(rename = "type")]
    event_type: String,
    /// Who caused it (the VM's own name for what its agent reported).
    actor: String,
    recorded_at: DateTime<Utc>,
    /// The event.
    #[schema(value_type = Object)]
    event: Value,
}

impl From<efms_projections::fleet::queries::VmHistoryEntry> for VmHistoryEntry {
    fn from(entry: efms_projections::fleet::queries::VmHistoryEntry) -> Self {
        Self {
            sequence: entry.sequence,
            event_type: entry.event_type,
            actor: entry.actor,
            recorded_at: entry.recorded_at,
            event: entry.payload,
        }
    }
}

/// Utilisation over one step.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UtilisationStep {
    /// The step's start.
    at: DateTime<Utc>,
    /// Samples in it.
    samples: i64,
    cpu_percent_avg: f64,
    cpu_percent_max: f64,
    load_1m_avg: f64,
    memory_used_bytes_avg: f64,
    memory_used_bytes_max: i64,
    network_rx_bytes_per_second_avg: f64,
    network_tx_bytes_per_second_avg: f64,
}

impl From<UtilisationBucket> for UtilisationStep {
    fn from(bucket: UtilisationBucket) -> Self {
        Self {
            at: bucket.at,
            samples: bucket.samples,
            cpu_percent_avg: bucket.cpu_percent_avg,
            cpu_percent_max: bucket.cpu_percent_max,
            load_1m_avg: bucket.load_1m_avg,
            memory_used_bytes_avg: bucket.memory_used_bytes_avg,
            memory_used_bytes_max: bucket.memory_used_bytes_max,
            network_rx_bytes_per_second_avg: bucket.network_rx_bytes_per_second_avg,
            network_tx_bytes_per_second_avg: bucket.network_tx_bytes_per_second_avg,
        }
    }
}

//! What an agent reports beside its events (utilisation samples), and the checks every report
//! passes before anything of it is stored: a report that fails one is refused whole, naming the
//! field.

use serde::{Deserialize, Serialize};

use super::model::{Container, LifecycleEvent};

/// How busy a host is, between two samples (FR-VM-005).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostUsage {
    /// Percent of all CPUs: 0 to 100.
    pub cpu_percent: f64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    /// Memory used, in bytes.
    pub memory_used_bytes: u64,
    /// Memory in all, in bytes.
    pub memory_total_bytes: u64,
    /// Space per mounted disk.
    pub disks: Vec<DiskUsage>,
    /// Bytes received per second.
    pub network_rx_bytes_per_second: f64,
    /// Bytes sent per second.
    pub network_tx_bytes_per_second: f64,
}

/// Space on one mounted disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Where it is mounted.
    pub mount_point: String,
    /// Used, in bytes.
    pub used_bytes: u64,
    /// Available, in bytes.
    pub available_bytes: u64,
    /// In all, in bytes.
    pub size_bytes: u64,
}

/// One container's CPU and memory (FR-DC-002).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerUsage {
    /// The container's full id.
    pub container_id: String,
    /// Percent of one CPU (200: two CPUs busy).
    pub cpu_percent: f64,
    /// Memory used, in bytes.
    pub memory_used_bytes: u64,
    /// Its memory limit, in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Its processes.
    pub pids: Option<u64>,
}

/// Why a report was refused: the field (a path such as `heartbeat.usage.cpu_percent`) and what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ReportFault {
    /// The field.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

fn fault(field: impl Into<String>, problem: impl Into<String>) -> ReportFault {
    ReportFault {
        field: field.into(),
        problem: problem.into(),
    }
}

fn between(field: &str, value: f64, low: f64, high: f64) -> Result<(), ReportFault> {
    if value.is_finite() && (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(fault(
            field,
            format!("{value} is not between {low} and {high}"),
        ))
    }
}

/// Checks a container id: Docker's full id, 64 lowercase hexadecimal digits.
pub fn check_container_id(field: &str, id: &str) -> Result<(), ReportFault> {
    if id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(fault(
            field,
            "a container id is 64 lowercase hexadecimal digits (Docker's full id)",
        ))
    }
}

/// Checks a host's utilisation; `cpus` is the host's CPU count when known.
pub fn check_host_usage(field: &str, usage: &HostUsage) -> Result<(), ReportFault> {
    between(
        &format!("{field}.cpu_percent"),
        usage.cpu_percent,
        0.0,
        100.0,
    )?;
    for (i, load) in usage.load.iter().enumerate() {
        between(&format!("{field}.load[{i}]"), *load, 0.0, f64::MAX)?;
    }
    if usage.memory_used_bytes > usage.memory_total_bytes {
        return Err(fault(
            format!("{field}.memory_used_bytes"),
            "more memory used than there is",
        ));
    }
    for (i, disk) in usage.disks.iter().enumerate() {
        if disk.used_bytes > disk.size_bytes {
            return Err(fault(
                format!("{field}.disks[{i}].used_bytes"),
                "more space used than the disk has",
            ));
        }
    }
    between(
        &format!("{field}.network_rx_bytes_per_second"),
        usage.network_rx_bytes_per_second,
        0.0,
        f64::MAX,
    )?;
    between(
        &format!("{field}.network_tx_bytes_per_second"),
        usage.network_tx_bytes_per_second,
        0.0,
        f64::MAX,
    )
}

/// Checks a container's usage on a host of `cpus` CPUs (when known).
pub fn check_container_usage(
    field: &str,
    usage: &ContainerUsage,
    cpus: Option<u32>,
) -> Result<(), ReportFault> {
    check_container_id(&format!("{field}.container_id"), &usage.container_id)?;
    let ceiling = 100.0 * f64::from(cpus.unwrap_or(4096).max(1));
    between(
        &format!("{field}.cpu_percent"),
        usage.cpu_percent,
        0.0,
        ceiling,
    )
}

/// Checks a container of a snapshot.
pub fn check_container(field: &str, container: &Container) -> Result<(), ReportFault> {
    check_container_id(&format!("{field}.id"), &container.id)?;
    if container.name.is_empty() {
        return Err(fault(format!("{field}.name"), "a container has a name"));
    }
    if let Some(cpus) = container.limits.cpus {
        between(&format!("{field}.limits.cpus"), cpus, 0.0, 4096.0)?;
    }
    Ok(())
}

/// Checks a lifecycle event.
pub fn check_event(field: &str, event: &LifecycleEvent) -> Result<(), ReportFault> {
    check_container_id(&format!("{field}.container_id"), &event.container_id)?;
    if event.time_nanos <= 0 {
        return Err(fault(
            format!("{field}.time_nanos"),
            "an event has the engine's time, after the epoch",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> HostUsage {
        HostUsage {
            cpu_percent: 12.5,
            load: [0.5, 0.4, 0.3],
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
        }
    }

    #[test]
    fn a_sound_host_usage_passes() {
        assert_eq!(check_host_usage("usage", &usage()), Ok(()));
    }

    #[test]
    fn a_negative_or_impossible_figure_is_refused_naming_its_field() {
        let mut negative = usage();
        negative.cpu_percent = -1.0;
        assert_eq!(
            check_host_usage("usage", &negative).unwrap_err().field,
            "usage.cpu_percent"
        );
        let mut nan = usage();
        nan.load[2] = f64::NAN;
        assert_eq!(
            check_host_usage("usage", &nan).unwrap_err().field,
            "usage.load[2]"
        );
        let mut over = usage();
        over.memory_used_bytes = 3;
        assert_eq!(
            check_host_usage("usage", &over).unwrap_err().field,
            "usage.memory_used_bytes"
        );
        let mut disk = usage();
        disk.disks[0].used_bytes = 3;
        assert_eq!(
            check_host_usage("usage", &disk).unwrap_err().field,
            "usage.disks[0].used_bytes"
        );
    }

    #[test]
    fn a_container_may_use_up_to_every_cpu_of_its_host_and_no_more() {
        let mut usage = ContainerUsage {
            container_id: "a".repeat(64),
            cpu_percent: 200.0,
            memory_used_bytes: 1,
            memory_limit_bytes: None,
            pids: None,
        };
        assert_eq!(check_container_usage("c", &usage, Some(2)), Ok(()));
        usage.cpu_percent = 200.5;
        assert_eq!(
            check_container_usage("c", &usage, Some(2))
                .unwrap_err()
                .field,
            "c.cpu_percent"
        );
    }

    #[test]
    fn only_full_lowercase_hexadecimal_ids_are_container_ids() {
        assert!(check_container_id("id", &"0f".repeat(32)).is_ok());
        assert!(check_container_id("id", "abc123").is_err());
        assert!(check_container_id("id", &"A".repeat(64)).is_err());
        assert!(check_container_id("id", &"g".repeat(64)).is_err());
    }
}

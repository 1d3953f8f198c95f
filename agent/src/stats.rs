//! A container's CPU and memory, from one sample of Docker's stats API.

use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptionsBuilder;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::engine::{is_not_found, Engine, EngineError};

/// The cgroup version the engine reads a container's figures from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersion {
    /// cgroup v1 (memory statistics named `total_*`).
    V1,
    /// cgroup v2 (the unified hierarchy).
    V2,
}

/// A running container's use of CPU and memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerUsage {
    /// CPU used between the engine's two samples, in percent of one CPU (200 = two CPUs busy).
    pub cpu_percent: f64,
    /// Memory used, page cache that can be dropped (`inactive_file`) left out, as `docker stats`
    /// counts it.
    pub memory_used_bytes: u64,
    /// The memory the container may use (the host's memory when it has no limit).
    pub memory_limit_bytes: Option<u64>,
    /// Processes and threads in the container.
    pub pids: Option<u64>,
    /// Where the figures come from.
    pub cgroup: CgroupVersion,
}

impl ContainerUsage {
    /// The usage a stats response tells; `None` when the container does not run (the engine then
    /// answers with empty figures).
    pub fn from_stats(stats: &ContainerStatsResponse) -> Option<Self> {
        let memory = stats.memory_stats.as_ref()?;
        let usage = memory.usage?;
        let figures = memory.stats.clone().unwrap_or_default();
        // cgroup v1 reports the hierarchy's totals (`total_inactive_file`, ...); v2 has no
        // `total_` names and counts page cache as `inactive_file`.
        let (cgroup, inactive) = match figures.get("total_inactive_file") {
            Some(&inactive) => (CgroupVersion::V1, inactive),
            None => (
                CgroupVersion::V2,
                figures.get("inactive_file").copied().unwrap_or(0),
            ),
        };
        let memory_used_bytes = if inactive < usage {
            usage - inactive
        } else {
            usage
        };
        Some(Self {
            cpu_percent: cpu_percent(stats).unwrap_or(0.0),
            memory_used_bytes,
            memory_limit_bytes: memory.limit.filter(|&limit| limit > 0),
            pids: stats.pids_stats.as_ref().and_then(|pids| pids.current),
            cgroup,
        })
    }
}

/// CPU used between the sample and the one before it, in percent of one CPU.
fn cpu_percent(stats: &ContainerStatsResponse) -> Option<f64> {
    let now = stats.cpu_stats.as_ref()?;
    let before = stats.precpu_stats.as_ref()?;
    let used = now
        .cpu_usage
        .as_ref()?
        .total_usage?
        .checked_sub(before.cpu_usage.as_ref()?.total_usage?)?;
    let elapsed = now
        .system_cpu_usage?
        .checked_sub(before.system_cpu_usage?)?;
    if elapsed == 0 {
        return None;
    }
    let cpus = now.online_cpus.map(u64::from).or_else(|| {
        now.cpu_usage
            .as_ref()?
            .percpu_usage
            .as_ref()
            .map(|per_cpu| per_cpu.len() as u64)
    })?;
    // The system counter sums every CPU's time: scale by the CPUs to get percent of one CPU.
    #[allow(clippy::cast_precision_loss)]
    Some(used as f64 / elapsed as f64 * cpus as f64 * 100.0)
}

/// A container's usage now, from one stats response (the engine takes two samples a second
/// apart to give CPU time); `None` when it does not exist or does not run.
pub async fn usage(engine: &Engine, id: &str) -> Result<Option<ContainerUsage>, EngineError> {
    let options = StatsOptionsBuilder::default()
        .stream(false)
        .one_shot(false)
        .build();
    let mut responses = engine.docker().stats(id, Some(options));
    match responses.next().await {
        Some(Ok(stats)) => Ok(ContainerUsage::from_stats(&stats)),
        Some(Err(error)) if is_not_found(&error) => Ok(None),
        Some(Err(error)) => Err(engine.api_error(error)),
        None => Ok(None),
    }
}

/// The usage of each of the containers `ids`, asking the engine `parallel` at a time (each
/// answer takes the engine's second of sampling); in the order of `ids`.
pub async fn usage_of_each(
    engine: &Engine,
    ids: &[String],
    parallel: usize,
) -> Vec<Result<Option<ContainerUsage>, EngineError>> {
    // Owned ids: a closure over borrowed ones makes the future unusable in a spawned task (its
    // lifetime is higher-ranked, which the `Send` check cannot prove).
    futures::stream::iter(ids.iter().cloned())
        .map(|id| async move { usage(engine, &id).await })
        .buffered(parallel.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(memory: &serde_json::Value) -> ContainerStatsResponse {
        serde_json::from_value(serde_json::json!({
            "cpu_stats": {
                "cpu_usage": {"total_usage": 3_000_000_000_u64},
                "system_cpu_usage": 120_000_000_000_u64,
                "online_cpus": 2
            },
            "precpu_stats": {
                "cpu_usage": {"total_usage": 2_500_000_000_u64},
                "system_cpu_usage": 118_000_000_000_u64,
                "online_cpus": 2
            },
            "memory_stats": memory,
            "pids_stats": {"current": 12}
        }))
        .unwrap()
    }

    #[test]
    fn cgroup_v1_leaves_out_the_hierarchys_inactive_page_cache() {
        let usage = ContainerUsage::from_stats(&sample(&serde_json::json!({
            "usage": 50_000_000, "limit": 67_108_864,
            "stats": {"cache": 9_000_000, "total_inactive_file": 8_000_000, "inactive_file": 1}
        })))
        .unwrap();
        assert_eq!(usage.cgroup, CgroupVersion::V1);
        assert_eq!(usage.memory_used_bytes, 42_000_000);
        assert_eq!(usage.memory_limit_bytes, Some(67_108_864));
        assert_eq!(usage.pids, Some(12));
        // 0.5 s of CPU over 2 s of two CPUs' time (1 s of wall time): half of one CPU.
        assert!((usage.cpu_percent - 50.0).abs() < 1e-9);
    }

    #[test]
    fn cgroup_v2_leaves_out_inactive_file() {
        let usage = ContainerUsage::from_stats(&sample(&serde_json::json!({
            "usage": 50_000_000, "limit": 67_108_864,
            "stats": {"anon": 30_000_000, "file": 12_000_000, "inactive_file": 10_000_000}
        })))
        .unwrap();
        assert_eq!(usage.cgroup, CgroupVersion::V2);
        assert_eq!(usage.memory_used_bytes, 40_000_000);
    }

    #[test]
    fn a_stopped_container_has_no_usage() {
        let stats: ContainerStatsResponse = serde_json::from_value(serde_json::json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 0}},
            "precpu_stats": {"cpu_usage": {"total_usage": 0}},
            "memory_stats": {}
        }))
        .unwrap();
        assert_eq!(ContainerUsage::from_stats(&stats), None);
    }
}

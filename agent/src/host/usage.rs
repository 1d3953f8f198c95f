//! How busy a VM is: sampled every interval (10 s by default in the protocol's design).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{file_system_space, procfs, read, unexpected, HostError};

/// The host's utilisation over the interval since the previous sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostUsage {
    /// Busy CPU time, in percent of all CPUs (0 to 100).
    pub cpu_percent: f64,
    /// The 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    /// Memory in use (total less available), in bytes.
    pub memory_used_bytes: u64,
    /// Memory in all, in bytes.
    pub memory_total_bytes: u64,
    /// Space used on each disk.
    pub disks: Vec<DiskUsage>,
    /// Bytes received per second, all interfaces but loopback.
    pub network_rx_bytes_per_second: f64,
    /// Bytes sent per second, all interfaces but loopback.
    pub network_tx_bytes_per_second: f64,
}

/// Space used on one disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    /// Where it is mounted.
    pub mount_point: String,
    /// Bytes used.
    pub used_bytes: u64,
    /// Bytes still available to unprivileged users.
    pub available_bytes: u64,
    /// Its size, in bytes.
    pub size_bytes: u64,
}

/// Takes utilisation samples: CPU and network are rates, between this sample and the last.
#[derive(Debug)]
pub struct UsageSampler {
    cpu: procfs::CpuTimes,
    rx_bytes: u64,
    tx_bytes: u64,
    at: Instant,
}

impl UsageSampler {
    /// A sampler whose first interval starts now.
    pub fn new() -> Result<Self, HostError> {
        let (rx_bytes, tx_bytes) = network_totals()?;
        Ok(Self {
            cpu: cpu_times()?,
            rx_bytes,
            tx_bytes,
            at: Instant::now(),
        })
    }

    /// The utilisation since the last sample (or since [`UsageSampler::new`]).
    pub fn sample(&mut self) -> Result<HostUsage, HostError> {
        let cpu = cpu_times()?;
        let (rx_bytes, tx_bytes) = network_totals()?;
        let now = Instant::now();
        let seconds = now.duration_since(self.at).as_secs_f64();
        // Counters reset when an interface goes away: a drop reads as no traffic.
        #[allow(clippy::cast_precision_loss)]
        let rate = |now: u64, before: u64| {
            if seconds > 0.0 {
                now.saturating_sub(before) as f64 / seconds
            } else {
                0.0
            }
        };
        let meminfo = read("/proc/meminfo")?;
        let total = procfs::meminfo_bytes(&meminfo, "MemTotal")
            .ok_or_else(|| unexpected("/proc/meminfo"))?;
        let available = procfs::meminfo_bytes(&meminfo, "MemAvailable")
            .or_else(|| procfs::meminfo_bytes(&meminfo, "MemFree"))
            .unwrap_or(0);
        let usage = HostUsage {
            cpu_percent: procfs::cpu_percent(self.cpu, cpu),
            load: procfs::load_average(&read("/proc/loadavg")?)
                .ok_or_else(|| unexpected("/proc/loadavg"))?,
            memory_used_bytes: total.saturating_sub(available),
            memory_total_bytes: total,
            disks: disk_usage()?,
            network_rx_bytes_per_second: rate(rx_bytes, self.rx_bytes),
            network_tx_bytes_per_second: rate(tx_bytes, self.tx_bytes),
        };
        *self = Self {
            cpu,
            rx_bytes,
            tx_bytes,
            at: now,
        };
        Ok(usage)
    }
}

fn cpu_times() -> Result<procfs::CpuTimes, HostError> {
    procfs::cpu_times(&read("/proc/stat")?).ok_or_else(|| unexpected("/proc/stat"))
}

fn network_totals() -> Result<(u64, u64), HostError> {
    Ok(procfs::net_dev(&read("/proc/net/dev")?)
        .iter()
        .fold((0, 0), |(rx, tx), interface| {
            (rx + interface.rx_bytes, tx + interface.tx_bytes)
        }))
}

fn disk_usage() -> Result<Vec<DiskUsage>, HostError> {
    Ok(procfs::disk_mounts(&read("/proc/self/mounts")?)
        .into_iter()
        .filter_map(|mount| {
            let space = file_system_space(&mount.mount_point)?;
            Some(DiskUsage {
                mount_point: mount.mount_point,
                used_bytes: space.used,
                available_bytes: space.available,
                size_bytes: space.size,
            })
        })
        .collect())
}

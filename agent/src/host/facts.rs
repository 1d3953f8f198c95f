//! What a VM is: reported when the agent connects and when it changes.

use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;
use serde::{Deserialize, Serialize};

use super::{file_system_space, procfs, read, unexpected, HostError};
use crate::engine::{Engine, EngineError, EngineVersion};

/// The facts of a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    /// Its hostname.
    pub hostname: String,
    /// Its addresses, loopback left out.
    pub addresses: Vec<InterfaceAddress>,
    /// Its operating system, e.g. `Debian GNU/Linux 12 (bookworm)`.
    pub os: String,
    /// Its kernel release.
    pub kernel: String,
    /// Its CPU architecture, e.g. `x86_64`.
    pub architecture: String,
    /// Its CPUs.
    pub cpu_count: usize,
    /// Its memory, in bytes.
    pub memory_bytes: u64,
    /// Its disks.
    pub disks: Vec<Disk>,
    /// Its Docker engine, when the agent reached it.
    pub docker: Option<EngineVersion>,
    /// The agent's version.
    pub agent_version: String,
}

/// One address of one network interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InterfaceAddress {
    /// The interface, e.g. `eth0`.
    pub interface: String,
    /// The address.
    pub address: IpAddr,
    /// The length of its network prefix.
    pub prefix_len: u8,
}

/// A disk and where it is mounted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The block device, e.g. `/dev/vda1`.
    pub device: String,
    /// Where it is mounted (first place; later ones are bind mounts).
    pub mount_point: String,
    /// Its file system, e.g. `ext4`.
    pub filesystem: String,
    /// Its size, in bytes.
    pub size_bytes: u64,
}

/// The host's facts; its Docker engine's version when `engine` is given and answers (an engine
/// that does not answer leaves `docker` empty: the agent reports that state apart).
pub async fn collect(engine: Option<&Engine>) -> Result<HostFacts, HostError> {
    let docker = match engine {
        Some(engine) => engine.version().await.map_err(log_engine_error).ok(),
        None => None,
    };
    let stat = read("/proc/stat")?;
    let meminfo = read("/proc/meminfo")?;
    let os_release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let disks = procfs::disk_mounts(&read("/proc/self/mounts")?)
        .into_iter()
        .filter_map(|mount| {
            let space = file_system_space(&mount.mount_point)?;
            Some(Disk {
                device: mount.device,
                mount_point: mount.mount_point,
                filesystem: mount.filesystem,
                size_bytes: space.size,
            })
        })
        .collect();
    Ok(HostFacts {
        hostname: read("/proc/sys/kernel/hostname")?.trim().to_owned(),
        addresses: addresses(),
        os: procfs::os_name(&os_release).unwrap_or_else(|| std::env::consts::OS.to_owned()),
        kernel: read("/proc/sys/kernel/osrelease")?.trim().to_owned(),
        architecture: std::env::consts::ARCH.to_owned(),
        cpu_count: procfs::cpu_count(&stat).max(1),
        memory_bytes: procfs::meminfo_bytes(&meminfo, "MemTotal")
            .ok_or_else(|| unexpected("/proc/meminfo"))?,
        disks,
        docker,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

fn log_engine_error(error: EngineError) -> EngineError {
    tracing::warn!(%error, "the Docker engine's version is unknown");
    error
}

/// The host's addresses, loopback left out, sorted.
fn addresses() -> Vec<InterfaceAddress> {
    let Ok(interfaces) = getifaddrs() else {
        return Vec::new();
    };
    let mut addresses: Vec<InterfaceAddress> = interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            let netmask = interface.netmask;
            let (address, prefix_len) = if let Some(v4) = address.as_sockaddr_in() {
                let mask = netmask
                    .as_ref()
                    .and_then(|mask| mask.as_sockaddr_in().map(|m| m.ip().to_bits().count_ones()));
                (IpAddr::V4(v4.ip()), mask.unwrap_or(32))
            } else if let Some(v6) = address.as_sockaddr_in6() {
                let mask = netmask.as_ref().and_then(|mask| {
                    mask.as_sockaddr_in6()
                        .map(|m| m.ip().to_bits().count_ones())
                });
                (IpAddr::V6(v6.ip()), mask.unwrap_or(128))
            } else {
                return None;
            };
            (!address.is_loopback()).then(|| InterfaceAddress {
                interface: interface.interface_name,
                address,
                prefix_len: u8::try_from(prefix_len).unwrap_or(u8::MAX),
            })
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

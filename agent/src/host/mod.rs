//! The host the agent runs on: what it is ([`facts`]) and how busy it is ([`usage`]), read from
//! `/proc`, `/etc/os-release`, `statvfs` and `getifaddrs`.

pub mod facts;
mod procfs;
pub mod usage;

use nix::sys::statvfs::statvfs;

/// Why the host could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file of `/proc` could not be read or understood.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: &'static str,
        /// Why.
        reason: String,
    },
}

fn read(path: &'static str) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|error| HostError::Read {
        path,
        reason: error.to_string(),
    })
}

fn unexpected(path: &'static str) -> HostError {
    HostError::Read {
        path,
        reason: "unexpected content".to_owned(),
    }
}

/// Size and free space of the file system mounted at `mount_point`.
// statvfs's counters are 32-bit on some targets.
#[allow(clippy::useless_conversion)]
fn file_system_space(mount_point: &str) -> Option<FileSystemSpace> {
    let stats = statvfs(mount_point).ok()?;
    let unit = u64::from(stats.fragment_size());
    let size = u64::from(stats.blocks()).saturating_mul(unit);
    let free = u64::from(stats.blocks_free()).saturating_mul(unit);
    let available = u64::from(stats.blocks_available()).saturating_mul(unit);
    Some(FileSystemSpace {
        size,
        used: size.saturating_sub(free),
        available,
    })
}

/// Space on one file system in bytes, as `df` counts it (used: not free; available: to
/// unprivileged users).
struct FileSystemSpace {
    size: u64,
    used: u64,
    available: u64,
}

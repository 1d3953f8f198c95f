//! Parsers of the `/proc` files the agent reads; pure, so they are tested on fixed text.

use std::collections::HashSet;

/// The CPU time counters of `/proc/stat`'s first line, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// All time, idle included.
    pub total: u64,
    /// Idle and waiting for I/O.
    pub idle: u64,
}

/// The all-CPU line of `/proc/stat`.
pub(crate) fn cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice: guest time is already
    // counted in user and nice.
    let total = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes { total, idle })
}

/// The busy share of CPU time between two readings, in percent of all CPUs (0 to 100).
#[allow(clippy::cast_precision_loss)]
pub(crate) fn cpu_percent(before: CpuTimes, now: CpuTimes) -> f64 {
    let total = now.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let idle = now.idle.saturating_sub(before.idle).min(total);
    (total - idle) as f64 / total as f64 * 100.0
}

/// The CPUs `/proc/stat` lists (`cpu0`, `cpu1`, ...).
pub(crate) fn cpu_count(stat: &str) -> usize {
    stat.lines()
        .filter(|line| {
            line.strip_prefix("cpu")
                .and_then(|rest| rest.split(' ').next())
                .is_some_and(|number| {
                    !number.is_empty() && number.chars().all(|c| c.is_ascii_digit())
                })
        })
        .count()
}

/// One value of `/proc/meminfo`, in bytes.
pub(crate) fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name != key {
            return None;
        }
        let mut parts = value.split_whitespace();
        let number: u64 = parts.next()?.parse().ok()?;
        Some(match parts.next() {
            Some("kB") => number * 1024,
            _ => number,
        })
    })
}

/// The 1, 5 and 15 minute load averages of `/proc/loadavg`.
pub(crate) fn load_average(loadavg: &str) -> Option<[f64; 3]> {
    let mut fields = loadavg.split_whitespace().map(str::parse::<f64>);
    Some([
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ])
}

/// Bytes received and sent by one interface since boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InterfaceCounters {
    /// The interface's name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// The interfaces of `/proc/net/dev`, loopback left out.
pub(crate) fn net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let fields: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|field| field.parse().ok())
                .collect();
            Some(InterfaceCounters {
                name: name.to_owned(),
                rx_bytes: *fields.first()?,
                tx_bytes: *fields.get(8)?,
            })
        })
        .collect()
}

/// A mounted block device, from `/proc/self/mounts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountedDisk {
    /// The device, e.g. `/dev/vda1`.
    pub device: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Its file system, e.g. `ext4`.
    pub filesystem: String,
}

/// File systems on block devices that are not disks of the host.
const NOT_DISKS: [&str; 3] = ["squashfs", "iso9660", "overlay"];

/// The disks mounted: block devices only (no proc, tmpfs, cgroup, overlay of containers), each
/// device once, at the first place it is mounted (later ones are bind mounts of it).
pub(crate) fn disk_mounts(mounts: &str) -> Vec<MountedDisk> {
    let mut seen = HashSet::new();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let device = fields.next()?;
            let mount_point = unescape_mount_field(fields.next()?);
            let filesystem = fields.next()?;
            (device.starts_with("/dev/")
                && !NOT_DISKS.contains(&filesystem)
                && seen.insert(device.to_owned()))
            .then(|| MountedDisk {
                device: device.to_owned(),
                mount_point,
                filesystem: filesystem.to_owned(),
            })
        })
        .collect()
}

/// A field of `/proc/self/mounts`, where space, tab, newline and backslash are octal escapes.
fn unescape_mount_field(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        if let Some(byte) = code.and_then(|digits| u8::from_str_radix(digits, 8).ok()) {
            out.push(char::from(byte));
            rest = &rest[at + 4..];
        } else {
            out.push('\\');
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The `PRETTY_NAME` of an os-release file, else its `NAME` and `VERSION`.
pub(crate) fn os_name(os_release: &str) -> Option<String> {
    let value = |key: &str| {
        os_release.lines().find_map(|line| {
            let (name, value) = line.split_once('=')?;
            (name.trim() == key).then(|| value.trim().trim_matches('"').to_owned())
        })
    };
    value("PRETTY_NAME").or_else(|| {
        let name = value("NAME")?;
        Some(match value("VERSION") {
            Some(version) => format!("{name} {version}"),
            None => name,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 20 30 800 50 0 0 0 7 0\ncpu0 50 10 15 400 25 0 0 0 0 0\n\
                        cpu1 50 10 15 400 25 0 0 0 0 0\nintr 12345\nctxt 99\n";

    #[test]
    fn cpu_time_counts_iowait_as_idle_and_guest_once() {
        let before = cpu_times(STAT).unwrap();
        assert_eq!(
            before,
            CpuTimes {
                total: 1000,
                idle: 850
            }
        );
        let now = CpuTimes {
            total: 1200,
            idle: 900,
        };
        assert!((cpu_percent(before, now) - 75.0).abs() < 1e-9);
        assert!(cpu_percent(now, now).abs() < f64::EPSILON);
        assert_eq!(cpu_count(STAT), 2);
    }

    #[test]
    fn meminfo_and_loadavg_are_read_in_bytes_and_floats() {
        let meminfo = "MemTotal:       24683656 kB\nMemFree: 1 kB\nMemAvailable:   19348932 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemTotal"), Some(24_683_656 * 1024));
        assert_eq!(
            meminfo_bytes(meminfo, "MemAvailable"),
            Some(19_348_932 * 1024)
        );
        assert_eq!(meminfo_bytes(meminfo, "Mem"), None);
        assert_eq!(
            load_average("12.30 9.80 5.66 14/232 31458\n"),
            Some([12.3, 9.8, 5.66])
        );
    }

    #[test]
    fn net_dev_leaves_out_loopback() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n\
            lo: 6770537 2278 0 0 0 0 0 0 6770537 2278 0 0 0 0 0 0\n\
            eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n";
        assert_eq!(
            net_dev(text),
            vec![InterfaceCounters {
                name: "eth0".into(),
                rx_bytes: 1000,
                tx_bytes: 2000
            }]
        );
    }

    #[test]
    fn disks_are_block_devices_once_each() {
        let mounts = "proc /proc proc rw 0 0\n/dev/vda / ext4 rw 0 0\n\
            tmpfs /dev/shm tmpfs rw 0 0\n/dev/vda /etc/hosts ext4 rw 0 0\n\
            /dev/vdb /srv/my\\040data xfs rw 0 0\noverlay /var/lib/docker/x overlay rw 0 0\n";
        let disks = disk_mounts(mounts);
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].mount_point, "/");
        assert_eq!(disks[1].mount_point, "/srv/my data");
        assert_eq!(disks[1].filesystem, "xfs");
    }

    #[test]
    fn os_name_prefers_the_pretty_name() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\n";
        assert_eq!(
            os_name(debian).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            os_name("NAME=Alpine\nVERSION=3.20\n").as_deref(),
            Some("Alpine 3.20")
        );
    }
}

//! How long this replica's lease on its proxies' streams lasts (ADR 0006).

use std::time::Duration;

use clap::Args;

use super::invalid::ConfigError;

/// The replica's settings, as given.
#[derive(Debug, Clone, Args)]
pub struct ReplicaArgs {
    /// How long this replica's lease lasts, such as 15s (from 1s to 300s): when it dies, its
    /// proxies read DISCONNECTED within this time and a third of it.
    #[arg(long, env = "EFMS_REPLICA_LEASE", default_value = "15s")]
    pub replica_lease: String,
}

impl Default for ReplicaArgs {
    fn default() -> Self {
        Self {
            replica_lease: "15s".to_owned(),
        }
    }
}

impl ReplicaArgs {
    /// Checks the lease.
    pub fn validate(&self) -> Result<Duration, ConfigError> {
        super::fleet::duration(
            "EFMS_REPLICA_LEASE (--replica-lease)",
            &self.replica_lease,
            Duration::from_secs(1)..=Duration::from_secs(300),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_lease_is_read_in_seconds_and_bounded() {
        let lease = |text: &str| {
            ReplicaArgs {
                replica_lease: text.to_owned(),
            }
            .validate()
        };
        assert_eq!(lease("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(lease("2m").unwrap(), Duration::from_secs(120));
        let refused = lease("10m").unwrap_err().to_string();
        assert!(refused.contains("EFMS_REPLICA_LEASE"), "{refused}");
        assert!(lease("soon").is_err());
        assert!(lease("0s").is_err());
    }
}

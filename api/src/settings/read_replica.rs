//! The read replica (NFR-SC-002): where reads may go, and how long a read waits for it to catch
//! up before the primary answers it.

use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use sqlx::postgres::PgConnectOptions;

use super::invalid::{invalid, ConfigError};

/// The read replica's settings, as given.
#[derive(Debug, Clone, Default, Args)]
pub struct ReadReplicaArgs {
    /// Postgres URL of a streaming replica of DATABASE_URL: lists, histories, diffs, time travel,
    /// proxies, audit and metrics are read there once it has replayed the latest write.
    #[arg(long, env = "EFMS_DATABASE_READ_URL")]
    pub database_read_url: Option<String>,
    /// How many milliseconds a read waits for the replica to replay the latest write before the
    /// primary answers it (0 to 10000; default 1000).
    #[arg(long, env = "EFMS_DATABASE_READ_WAIT_MS")]
    pub database_read_wait_ms: Option<String>,
}

/// A checked read replica: where, and how long a read waits for it.
#[derive(Debug, Clone)]
pub struct ReadReplicaConfig {
    /// The replica's connection.
    pub options: PgConnectOptions,
    /// How long a read waits for it.
    pub wait: Duration,
}

impl ReadReplicaArgs {
    /// The replica, if one is set.
    pub fn validate(&self) -> Result<Option<ReadReplicaConfig>, ConfigError> {
        const WAIT: &str = "EFMS_DATABASE_READ_WAIT_MS (--database-read-wait-ms)";
        let wait = self
            .database_read_wait_ms
            .as_deref()
            .map(|text| {
                text.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= 10_000)
                    .map(Duration::from_millis)
                    .ok_or_else(|| {
                        invalid(
                            WAIT,
                            format!("`{text}` is not a whole number from 0 to 10000"),
                        )
                    })
            })
            .transpose()?
            .unwrap_or(Duration::from_secs(1));
        let Some(url) = &self.database_read_url else {
            if self.database_read_wait_ms.is_some() {
                return Err(invalid(WAIT, "set without EFMS_DATABASE_READ_URL"));
            }
            return Ok(None);
        };
        let options = PgConnectOptions::from_str(url).map_err(|error| {
            invalid(
                "EFMS_DATABASE_READ_URL (--database-read-url)",
                format!("not a Postgres URL: {error}"),
            )
        })?;
        Ok(Some(ReadReplicaConfig { options, wait }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_optional_and_its_wait_is_bounded_and_needs_it() {
        let args = |url: Option<&str>, wait: Option<&str>| ReadReplicaArgs {
            database_read_url: url.map(str::to_owned),
            database_read_wait_ms: wait.map(str::to_owned),
        };
        assert!(args(None, None).validate().unwrap().is_none());
        let replica = args(Some("postgres://efms@replica:5433/efms"), None)
            .validate()
            .unwrap()
            .unwrap();
        assert_eq!(replica.wait, Duration::from_secs(1));
        assert_eq!(replica.options.get_port(), 5433);
        let short = args(Some("postgres://r/efms"), Some("200")).validate();
        assert_eq!(short.unwrap().unwrap().wait, Duration::from_millis(200));
        let long = args(Some("postgres://r/efms"), Some("60000"))
            .validate()
            .unwrap_err();
        assert!(long.setting.starts_with("EFMS_DATABASE_READ_WAIT_MS"));
        let alone = args(None, Some("1000")).validate().unwrap_err();
        assert!(alone.reason.contains("EFMS_DATABASE_READ_URL"));
        let bad = args(Some("postgres://db:port/efms"), None)
            .validate()
            .unwrap_err();
        assert!(bad.setting.starts_with("EFMS_DATABASE_READ_URL"));
    }
}

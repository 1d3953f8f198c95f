//! The proxies' statistics: how they are gathered and what proxies are told to send.

use std::time::Duration;

use clap::Args;
use efms_xds::TelemetrySettings;

use super::invalid::{invalid, ConfigError};
use crate::ttl::parse_ttl;

/// The statistics' settings, as given.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// The width of the statistics' time buckets, such as 10s (it must divide a minute).
    #[arg(long, env = "EFMS_STATS_BUCKET", default_value = "10s")]
    pub stats_bucket: String,
    /// How often proxies send their statistics (their bootstraps' `stats_flush_interval`), unless
    /// a bootstrap asks otherwise.
    #[arg(long, env = "EFMS_STATS_FLUSH_INTERVAL", default_value = "10s")]
    pub stats_flush_interval: String,
    /// The largest statistics message a proxy may send, in bytes.
    #[arg(long, env = "EFMS_STATS_MAX_MESSAGE", default_value = "4194304")]
    pub stats_max_message: String,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            stats_bucket: "10s".to_owned(),
            stats_flush_interval: "10s".to_owned(),
            stats_max_message: "4194304".to_owned(),
        }
    }
}

fn seconds(setting: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let value = parse_ttl(text).map_err(|reason| invalid(setting, reason))?;
    if (Duration::from_secs(1)..=Duration::from_secs(3_600)).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(setting, format!("`{text}` is outside 1s to 3600s")))
    }
}

impl TelemetryArgs {
    /// Checks the statistics' settings.
    pub fn validate(&self) -> Result<TelemetrySettings, ConfigError> {
        let bucket = seconds("EFMS_STATS_BUCKET (--stats-bucket)", &self.stats_bucket)?;
        if 60 % bucket.as_secs() != 0 {
            return Err(invalid(
                "EFMS_STATS_BUCKET (--stats-bucket)",
                format!(
                    "`{}` does not divide a minute: buckets roll up into minutes (1, 2, 3, 4, 5, \
                     6, 10, 12, 15, 20, 30 or 60 seconds)",
                    self.stats_bucket
                ),
            ));
        }
        let flush_interval = seconds(
            "EFMS_STATS_FLUSH_INTERVAL (--stats-flush-interval)",
            &self.stats_flush_interval,
        )?;
        let max_message = self
            .stats_max_message
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|bytes| (16 * 1024..=64 * 1024 * 1024).contains(bytes))
            .ok_or_else(|| {
                invalid(
                    "EFMS_STATS_MAX_MESSAGE (--stats-max-message)",
                    format!(
                        "`{}` is not a number of bytes from 16384 to 67108864",
                        self.stats_max_message
                    ),
                )
            })?;
        Ok(TelemetrySettings {
            bucket,
            flush_interval,
            max_message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_ten_second_buckets_and_flushes_and_a_four_megabyte_cap() {
        let settings = TelemetryArgs::default().validate().unwrap();
        assert_eq!(settings, TelemetrySettings::default());
    }

    #[test]
    fn a_bucket_under_a_second_or_a_tiny_cap_is_refused_naming_the_setting() {
        let bad = TelemetryArgs {
            stats_bucket: "0s".to_owned(),
            ..TelemetryArgs::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .setting
            .starts_with("EFMS_STATS_BUCKET"));
        let bad = TelemetryArgs {
            stats_bucket: "7s".to_owned(),
            ..TelemetryArgs::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .reason
            .contains("divide a minute"));
        let bad = TelemetryArgs {
            stats_max_message: "10".to_owned(),
            ..TelemetryArgs::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .setting
            .starts_with("EFMS_STATS_MAX_MESSAGE"));
    }
}

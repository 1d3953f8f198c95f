//! The fleet's settings: agents' heartbeats and how long their samples and rollups are kept.

use std::time::Duration;

use clap::Args;
use efms_commands::fleet::upkeep::UpkeepSettings;

use super::invalid::{invalid, ConfigError};
use crate::ttl::parse_ttl;

/// The fleet's settings, as given.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// How often agents send a heartbeat, such as 10s.
    #[arg(long, env = "EFMS_FLEET_HEARTBEAT_INTERVAL", default_value = "10s")]
    pub fleet_heartbeat_interval: String,
    /// How long past the interval a VM stays up without a heartbeat before it is `down`.
    #[arg(long, env = "EFMS_FLEET_HEARTBEAT_GRACE", default_value = "20s")]
    pub fleet_heartbeat_grace: String,
    /// How many days of raw utilisation samples are kept.
    #[arg(long, env = "EFMS_FLEET_SAMPLE_RETENTION_DAYS", default_value = "7")]
    pub fleet_sample_retention_days: String,
    /// How many days of one-minute rollups of the samples are kept.
    #[arg(long, env = "EFMS_FLEET_ROLLUP_RETENTION_DAYS", default_value = "90")]
    pub fleet_rollup_retention_days: String,
    /// How many days of the proxies' raw statistics (10 s buckets) are kept.
    #[arg(long, env = "EFMS_STATS_RETENTION_DAYS", default_value = "1")]
    pub stats_retention_days: String,
    /// How many days of the one-minute rollups of the proxies' statistics are kept.
    #[arg(long, env = "EFMS_STATS_ROLLUP_RETENTION_DAYS", default_value = "30")]
    pub stats_rollup_retention_days: String,
    /// How many days of the event feed's facts (proxy status, jobs, alerts) are kept; the log's
    /// own events are kept for good.
    #[arg(long, env = "EFMS_FEED_RETENTION_DAYS", default_value = "30")]
    pub feed_retention_days: String,
    /// How many days of the proxies' history (every version each accepted or refused) are kept.
    #[arg(long, env = "EFMS_PROXY_HISTORY_RETENTION_DAYS", default_value = "90")]
    pub proxy_history_retention_days: String,
}

impl Default for FleetArgs {
    fn default() -> Self {
        Self {
            fleet_heartbeat_interval: "10s".to_owned(),
            fleet_heartbeat_grace: "20s".to_owned(),
            fleet_sample_retention_days: "7".to_owned(),
            fleet_rollup_retention_days: "90".to_owned(),
            stats_retention_days: "1".to_owned(),
            stats_rollup_retention_days: "30".to_owned(),
            feed_retention_days: "30".to_owned(),
            proxy_history_retention_days: "90".to_owned(),
        }
    }
}

/// `text` as a duration within `range`, or why not, naming `setting`.
pub(super) fn duration(
    setting: &'static str,
    text: &str,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, ConfigError> {
    let value = parse_ttl(text).map_err(|reason| invalid(setting, reason))?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            setting,
            format!(
                "`{text}` is outside {}s to {}s",
                range.start().as_secs(),
                range.end().as_secs()
            ),
        ))
    }
}

fn days(setting: &'static str, text: &str) -> Result<i32, ConfigError> {
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|days| (1..=3_660).contains(days))
        .ok_or_else(|| {
            invalid(
                setting,
                format!("`{text}` is not a number of days from 1 to 3660"),
            )
        })
}

impl FleetArgs {
    /// Checks the fleet's settings.
    pub fn validate(&self) -> Result<UpkeepSettings, ConfigError> {
        let heartbeat_interval = duration(
            "EFMS_FLEET_HEARTBEAT_INTERVAL (--fleet-heartbeat-interval)",
            &self.fleet_heartbeat_interval,
            Duration::from_secs(1)..=Duration::from_secs(3_600),
        )?;
        let heartbeat_grace = duration(
            "EFMS_FLEET_HEARTBEAT_GRACE (--fleet-heartbeat-grace)",
            &self.fleet_heartbeat_grace,
            Duration::from_secs(1)..=Duration::from_secs(86_400),
        )?;
        let sample_days = days(
            "EFMS_FLEET_SAMPLE_RETENTION_DAYS (--fleet-sample-retention-days)",
            &self.fleet_sample_retention_days,
        )?;
        let rollup_days = days(
            "EFMS_FLEET_ROLLUP_RETENTION_DAYS (--fleet-rollup-retention-days)",
            &self.fleet_rollup_retention_days,
        )?;
        if rollup_days < sample_days {
            return Err(invalid(
                "EFMS_FLEET_ROLLUP_RETENTION_DAYS (--fleet-rollup-retention-days)",
                format!(
                    "{rollup_days} days is shorter than the raw samples' {sample_days} \
                     (EFMS_FLEET_SAMPLE_RETENTION_DAYS): rollups are kept at least as long"
                ),
            ));
        }
        let stats_days = days(
            "EFMS_STATS_RETENTION_DAYS (--stats-retention-days)",
            &self.stats_retention_days,
        )?;
        let stats_rollup_days = days(
            "EFMS_STATS_ROLLUP_RETENTION_DAYS (--stats-rollup-retention-days)",
            &self.stats_rollup_retention_days,
        )?;
        Ok(UpkeepSettings {
            heartbeat_interval,
            heartbeat_grace,
            sample_days,
            rollup_days,
            stats_days,
            stats_rollup_days,
            feed_days: days(
                "EFMS_FEED_RETENTION_DAYS (--feed-retention-days)",
                &self.feed_retention_days,
            )?,
            proxy_history_days: days(
                "EFMS_PROXY_HISTORY_RETENTION_DAYS (--proxy-history-retention-days)",
                &self.proxy_history_retention_days,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_a_ten_second_heartbeat_twenty_seconds_of_grace_and_a_week_of_samples() {
        let settings = FleetArgs::default().validate().unwrap();
        assert_eq!(settings, UpkeepSettings::default());
    }

    #[test]
    fn a_zero_interval_or_an_unreadable_retention_is_refused_naming_the_setting() {
        let zero = FleetArgs {
            fleet_heartbeat_interval: "0s".into(),
            ..FleetArgs::default()
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .setting
            .starts_with("EFMS_FLEET_HEARTBEAT_INTERVAL"));
        let days = FleetArgs {
            fleet_sample_retention_days: "a week".into(),
            ..FleetArgs::default()
        };
        assert!(days
            .validate()
            .unwrap_err()
            .setting
            .starts_with("EFMS_FLEET_SAMPLE_RETENTION_DAYS"));
        let shorter = FleetArgs {
            fleet_rollup_retention_days: "3".into(),
            ..FleetArgs::default()
        };
        assert!(shorter
            .validate()
            .unwrap_err()
            .setting
            .starts_with("EFMS_FLEET_ROLLUP_RETENTION_DAYS"));
    }
}

//! How often alert rules are evaluated (ADR 0016).

use std::time::Duration;

use clap::Args;
use efms_notify::AlertSettings;

use super::invalid::ConfigError;

/// The alerts' settings, as given.
#[derive(Debug, Clone, Args)]
pub struct AlertArgs {
    /// How often every alert rule is evaluated, such as 10s (1s to 5m).
    #[arg(long, env = "EFMS_ALERT_INTERVAL", default_value = "10s")]
    pub alert_interval: String,
}

impl Default for AlertArgs {
    fn default() -> Self {
        Self {
            alert_interval: "10s".to_owned(),
        }
    }
}

impl AlertArgs {
    /// Checks the interval.
    pub fn validate(&self) -> Result<AlertSettings, ConfigError> {
        let interval = super::fleet::duration(
            "EFMS_ALERT_INTERVAL (--alert-interval)",
            &self.alert_interval,
            Duration::from_secs(1)..=Duration::from_secs(300),
        )?;
        Ok(AlertSettings { interval })
    }
}

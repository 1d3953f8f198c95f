//! How webhooks are delivered (ADR 0015): the retry schedule, when a failing endpoint is
//! disabled, how long an attempt may take, and which private targets are allowed.

use std::time::Duration;

use clap::Args;
use efms_domain::webhooks::{parse_schedule, Network, TargetPolicy, DEFAULT_RETRY_SCHEDULE};
use efms_notify::WebhookSettings;

use super::invalid::{invalid, ConfigError};

/// The webhooks' settings, as given.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// The gaps between a delivery's attempts, such as 5s,5m,30m,2h (1 to 20 gaps; after the
    /// last, the delivery has failed and may be redelivered by hand).
    #[arg(long, env = "EFMS_WEBHOOK_RETRY_SCHEDULE", default_value = DEFAULT_RETRY_SCHEDULE)]
    pub webhook_retry_schedule: String,
    /// An endpoint whose every attempt has failed for this long is disabled, such as 5d.
    #[arg(long, env = "EFMS_WEBHOOK_DISABLE_AFTER", default_value = "5d")]
    pub webhook_disable_after: String,
    /// How long one attempt may take, such as 10s (1s to 60s).
    #[arg(long, env = "EFMS_WEBHOOK_TIMEOUT", default_value = "10s")]
    pub webhook_timeout: String,
    /// How long a rotated secret keeps signing beside the new one, such as 24h.
    #[arg(long, env = "EFMS_WEBHOOK_SECRET_OVERLAP", default_value = "24h")]
    pub webhook_secret_overlap: String,
    /// How long finished deliveries and their attempts are kept, such as 14d.
    #[arg(long, env = "EFMS_WEBHOOK_RETENTION", default_value = "14d")]
    pub webhook_retention: String,
    /// Allow targets on private, loopback and link-local addresses (`true` or `false`): for
    /// installations whose receivers live on a private network.
    #[arg(long, env = "EFMS_WEBHOOK_ALLOW_PRIVATE", default_value = "false")]
    pub webhook_allow_private: String,
    /// Private networks webhooks may reach although private targets are refused, comma-separated
    /// CIDRs such as 10.20.0.0/16,fd00::/8 (an internal receiver's).
    #[arg(long, env = "EFMS_WEBHOOK_ALLOWED_NETWORKS", default_value = "")]
    pub webhook_allowed_networks: String,
    /// How many delivery attempts are made at once, across every endpoint (1 to 4096).
    #[arg(long, env = "EFMS_WEBHOOK_CONCURRENCY", default_value = "64")]
    pub webhook_concurrency: String,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        Self {
            webhook_retry_schedule: DEFAULT_RETRY_SCHEDULE.to_owned(),
            webhook_disable_after: "5d".to_owned(),
            webhook_timeout: "10s".to_owned(),
            webhook_secret_overlap: "24h".to_owned(),
            webhook_retention: "14d".to_owned(),
            webhook_allow_private: "false".to_owned(),
            webhook_allowed_networks: String::new(),
            webhook_concurrency: "64".to_owned(),
        }
    }
}

impl WebhookArgs {
    /// Checks every setting, naming the one at fault.
    pub fn validate(&self) -> Result<WebhookSettings, ConfigError> {
        const DAY: u64 = 86_400;
        let schedule = parse_schedule(&self.webhook_retry_schedule).map_err(|reason| {
            invalid(
                "EFMS_WEBHOOK_RETRY_SCHEDULE (--webhook-retry-schedule)",
                reason,
            )
        })?;
        let allow_private = match self.webhook_allow_private.trim() {
            "true" => true,
            "false" => false,
            other => {
                return Err(invalid(
                    "EFMS_WEBHOOK_ALLOW_PRIVATE (--webhook-allow-private)",
                    format!("`{other}` is neither `true` nor `false`"),
                ))
            }
        };
        let allowed_networks = self
            .webhook_allowed_networks
            .split(',')
            .filter(|network| !network.trim().is_empty())
            .map(str::parse::<Network>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| {
                invalid(
                    "EFMS_WEBHOOK_ALLOWED_NETWORKS (--webhook-allowed-networks)",
                    reason,
                )
            })?;
        let concurrency = self
            .webhook_concurrency
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=4096).contains(n))
            .ok_or_else(|| {
                invalid(
                    "EFMS_WEBHOOK_CONCURRENCY (--webhook-concurrency)",
                    format!(
                        "`{}` is not a whole number from 1 to 4096",
                        self.webhook_concurrency
                    ),
                )
            })?;
        let timeout = super::fleet::duration(
            "EFMS_WEBHOOK_TIMEOUT (--webhook-timeout)",
            &self.webhook_timeout,
            Duration::from_secs(1)..=Duration::from_secs(60),
        )?;
        Ok(WebhookSettings {
            targets: TargetPolicy {
                allow_private,
                allowed_networks,
            },
            schedule,
            disable_after: super::fleet::duration(
                "EFMS_WEBHOOK_DISABLE_AFTER (--webhook-disable-after)",
                &self.webhook_disable_after,
                Duration::from_secs(60)..=Duration::from_secs(90 * DAY),
            )?,
            timeout,
            secret_overlap: super::fleet::duration(
                "EFMS_WEBHOOK_SECRET_OVERLAP (--webhook-secret-overlap)",
                &self.webhook_secret_overlap,
                Duration::from_secs(1)..=Duration::from_secs(30 * DAY),
            )?,
            retention: super::fleet::duration(
                "EFMS_WEBHOOK_RETENTION (--webhook-retention)",
                &self.webhook_retention,
                Duration::from_secs(3_600)..=Duration::from_secs(365 * DAY),
            )?,
            // An attempt never outlasts a third of the lease, so the lease is renewed in time.
            lease: (timeout * 3).max(Duration::from_secs(3)),
            concurrency,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_read_and_a_bad_value_names_its_setting() {
        let settings = WebhookArgs::default().validate().unwrap();
        assert_eq!(settings.schedule.len(), 8);
        assert_eq!(settings.targets, TargetPolicy::default());
        let internal = WebhookArgs {
            webhook_allowed_networks: "10.20.0.0/16, fd00::/8".to_owned(),
            ..WebhookArgs::default()
        };
        assert_eq!(
            internal.validate().unwrap().targets.allowed_networks.len(),
            2
        );
        assert_eq!(settings.concurrency, 64);
        let busy = WebhookArgs {
            webhook_concurrency: "0".to_owned(),
            ..WebhookArgs::default()
        };
        assert!(busy
            .validate()
            .unwrap_err()
            .setting
            .starts_with("EFMS_WEBHOOK_CONCURRENCY"));
        let wrong = WebhookArgs {
            webhook_allowed_networks: "10.20.0.0/40".to_owned(),
            ..WebhookArgs::default()
        };
        assert!(wrong
            .validate()
            .unwrap_err()
            .setting
            .starts_with("EFMS_WEBHOOK_ALLOWED_NETWORKS"));
        let bad = WebhookArgs {
            webhook_retry_schedule: "5s,often".to_owned(),
            ..WebhookArgs::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .setting
            .starts_with("EFMS_WEBHOOK_RETRY_SCHEDULE"));
        let slow = WebhookArgs {
            webhook_timeout: "5m".to_owned(),
            ..WebhookArgs::default()
        };
        assert!(slow
            .validate()
            .unwrap_err()
            .setting
            .starts_with("EFMS_WEBHOOK_TIMEOUT"));
    }
}

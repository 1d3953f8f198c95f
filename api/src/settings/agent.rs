//! `efms agent`: the settings of the fleet agent a VM runs, which reads its Docker engine and host
//! and reports to the control plane over one gRPC stream.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use efms_agent::link::LinkSettings;

use super::{invalid, ConfigError, LogFormat};

/// `efms agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The control plane's gRPC address: HOST:PORT (TLS when --ca-file is given), or
    /// http://HOST:PORT, https://HOST:PORT.
    #[arg(long, env = "EFMS_AGENT_SERVER")]
    pub server: String,
    /// The file holding the VM's join token; read again at every connection attempt, so a new
    /// token takes effect without a restart.
    #[arg(long, env = "EFMS_AGENT_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// The CA certificate (PEM) that signed the control plane's certificate: the stream uses TLS.
    #[arg(long, env = "EFMS_AGENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The Docker engine (unix:///path or tcp://host:port); default DOCKER_HOST, else
    /// unix:///var/run/docker.sock.
    #[arg(long)]
    pub docker: Option<String>,
    /// The VM's region (the value set through the API wins).
    #[arg(long, default_value = "")]
    pub region: String,
    /// The VM's zone (the value set through the API wins).
    #[arg(long, default_value = "")]
    pub zone: String,
    /// A label of the VM, KEY=VALUE; repeat for more (the values set through the API win).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Where the agent keeps the bootstraps of the Envoy containers it launches (readable by
    /// root alone).
    #[arg(long, env = "EFMS_AGENT_STATE_DIR", default_value = efms_agent::link::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// How often the launched proxies' admin `config_dump`s are read and compared with what
    /// they ACKed, such as 60s (from 1s to 3600s).
    #[arg(long, env = "EFMS_AGENT_CONFIG_CHECK_INTERVAL", default_value = "60s")]
    pub config_check_interval: String,
    /// Log format: `json` (default) or `text`.
    #[arg(long, env = "EFMS_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
}

/// Checked settings of `efms agent`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The link to the control plane.
    pub link: LinkSettings,
    /// Log format.
    pub log_format: LogFormat,
}

impl AgentArgs {
    /// Checks the settings.
    pub fn validate(&self) -> Result<AgentConfig, ConfigError> {
        if self.server.trim().is_empty() {
            return Err(invalid(
                "EFMS_AGENT_SERVER (--server)",
                "the control plane's address is empty",
            ));
        }
        let labels = efms_agent::link::parse_labels(self.labels.iter().map(String::as_str))
            .map_err(|reason| invalid("--label", reason))?;
        let log_format = match self.log_format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(invalid(
                    "EFMS_LOG_FORMAT (--log-format)",
                    format!("`{other}` is neither json nor text"),
                ))
            }
        };
        let config_check_interval = super::fleet::duration(
            "EFMS_AGENT_CONFIG_CHECK_INTERVAL (--config-check-interval)",
            &self.config_check_interval,
            Duration::from_secs(1)..=Duration::from_secs(3_600),
        )?;
        Ok(AgentConfig {
            link: LinkSettings {
                config_check_interval,
                ca_file: self.ca_file.clone(),
                docker_host: self.docker.clone().filter(|docker| !docker.is_empty()),
                region: self.region.clone(),
                zone: self.zone.clone(),
                labels,
                state_dir: self.state_dir.clone(),
                ..LinkSettings::new(self.server.trim(), self.token_file.clone())
            },
            log_format,
        })
    }
}

//! The settings of the maintenance commands: `efms replay` and `efms rotate-master-key`.

use clap::Args;

use super::invalid::{invalid, ConfigError};
use super::{DatabaseArgs, DatabaseConfig};

/// `efms replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Rebuild only this tenant's rows (its slug); without it, every tenant's.
    #[arg(long)]
    pub tenant: Option<String>,
}

impl ReplayArgs {
    /// The database and the rows to rebuild, checked.
    pub fn validate(&self) -> Result<(DatabaseConfig, efms_projections::Rebuild), ConfigError> {
        let database = self.database.validate()?;
        let rebuild = match &self.tenant {
            None => efms_projections::Rebuild::All,
            Some(slug) => efms_projections::Rebuild::Tenant(
                efms_domain::TenantSlug::parse(slug)
                    .map_err(|error| invalid("--tenant", error.to_string()))?
                    .tenant_id(),
            ),
        };
        Ok((database, rebuild))
    }
}

/// `efms rotate-master-key`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The master key the data keys are wrapped by now (base64 of 32 bytes).
    #[arg(long, env = "EFMS_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// The master key to wrap them by from now on (base64 of 32 bytes).
    #[arg(long, env = "EFMS_NEW_MASTER_KEY", hide_env_values = true)]
    pub new_master_key: Option<String>,
}

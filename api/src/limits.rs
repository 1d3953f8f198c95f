//! Limits on what requests write and run (settings of `efms serve`): the size of a stored
//! document, the operations of a JSON Patch, the size of a resource rendered from a template, and
//! the bulk jobs a tenant may run at once, and how many configuration repositories are kept in
//! memory between commits.

use clap::Args;
use efms_domain::config::limits::Limits;

use crate::settings::invalid::ConfigError;

/// The setting of the document size limit, as problems name it.
pub const MAX_DOCUMENT_BYTES: &str = "EFMS_MAX_DOCUMENT_BYTES";
/// The setting of the patch operation limit, as problems name it.
pub const MAX_PATCH_OPERATIONS: &str = "EFMS_MAX_PATCH_OPERATIONS";
/// The setting of the rendered size limit, as problems name it.
pub const MAX_RENDERED_BYTES: &str = "EFMS_MAX_RENDERED_BYTES";
/// The setting of the running jobs limit, as problems name it.
pub const MAX_JOBS_PER_TENANT: &str = "EFMS_MAX_JOBS_PER_TENANT";
/// The setting of the number of configuration repositories kept in memory, as problems name it.
pub const WARM_REPOSITORIES: &str = "EFMS_WARM_REPOSITORIES";

/// The limit settings of `efms serve`.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// The largest document (compact JSON bytes) a write may store, patched or not.
    #[arg(long, env = MAX_DOCUMENT_BYTES, default_value = "1048576")]
    pub max_document_bytes: String,
    /// The most operations one JSON Patch (a PATCH, or one bulk operation) may carry.
    #[arg(long, env = MAX_PATCH_OPERATIONS, default_value = "1000")]
    pub max_patch_operations: String,
    /// The largest resource (compact JSON bytes) a template may render.
    #[arg(long, env = MAX_RENDERED_BYTES, default_value = "1048576")]
    pub max_rendered_bytes: String,
    /// The most bulk jobs one tenant may have running at once.
    #[arg(long, env = MAX_JOBS_PER_TENANT, default_value = "2")]
    pub max_jobs_per_tenant: String,
    /// How many configuration repositories (tenant and branch) keep their state in memory between
    /// commits; past it, the one used least recently is dropped and loaded again when next used.
    #[arg(long, env = WARM_REPOSITORIES, default_value = "1000")]
    pub warm_repositories: String,
}

impl Default for LimitArgs {
    fn default() -> Self {
        let limits = WriteLimits::default();
        Self {
            max_document_bytes: limits.commit.max_document_bytes.to_string(),
            max_patch_operations: limits.commit.max_patch_operations.to_string(),
            max_rendered_bytes: limits.commit.max_rendered_bytes.to_string(),
            max_jobs_per_tenant: limits.max_jobs_per_tenant.to_string(),
            warm_repositories: limits.warm_repositories.to_string(),
        }
    }
}

/// The limits requests are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// The limits a commit's documents are held to.
    pub commit: Limits,
    /// The most bulk jobs one tenant may have running at once.
    pub max_jobs_per_tenant: u32,
    /// How many configuration repositories keep their state in memory between commits.
    pub warm_repositories: usize,
}

impl Default for WriteLimits {
    fn default() -> Self {
        Self {
            commit: Limits::default(),
            max_jobs_per_tenant: 2,
            warm_repositories: efms_commands::warm::DEFAULT_WARM_STREAMS,
        }
    }
}

impl LimitArgs {
    /// Checks the limit settings.
    pub fn validate(&self) -> Result<WriteLimits, ConfigError> {
        let number = |setting: &'static str, value: &str, (low, high): (u64, u64)| {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| (low..=high).contains(n))
                .ok_or_else(|| ConfigError {
                    setting,
                    reason: format!("`{value}` is not a whole number from {low} to {high}"),
                })
        };
        // Up to 64 MiB a document: beyond it, one write would pass the bulk body limit.
        let bytes = (1_024, 64 * 1024 * 1024);
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(WriteLimits {
            commit: Limits {
                max_document_bytes: size(number(
                    "EFMS_MAX_DOCUMENT_BYTES (--max-document-bytes)",
                    &self.max_document_bytes,
                    bytes,
                )?),
                max_patch_operations: size(number(
                    "EFMS_MAX_PATCH_OPERATIONS (--max-patch-operations)",
                    &self.max_patch_operations,
                    (1, 100_000),
                )?),
                max_rendered_bytes: size(number(
                    "EFMS_MAX_RENDERED_BYTES (--max-rendered-bytes)",
                    &self.max_rendered_bytes,
                    bytes,
                )?),
            },
            max_jobs_per_tenant: u32::try_from(number(
                "EFMS_MAX_JOBS_PER_TENANT (--max-jobs-per-tenant)",
                &self.max_jobs_per_tenant,
                (1, 1_000),
            )?)
            .unwrap_or(u32::MAX),
            warm_repositories: size(number(
                "EFMS_WARM_REPOSITORIES (--warm-repositories)",
                &self.warm_repositories,
                (0, 1_000_000),
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_one_mebibyte_a_thousand_operations_and_two_jobs() {
        let limits = LimitArgs::default().validate().unwrap();
        assert_eq!(limits, WriteLimits::default());
        assert_eq!(limits.commit.max_document_bytes, 1024 * 1024);
        assert_eq!(limits.commit.max_patch_operations, 1_000);
        assert_eq!(limits.max_jobs_per_tenant, 2);
    }

    #[test]
    fn a_limit_out_of_range_names_its_setting() {
        let mut args = LimitArgs {
            max_jobs_per_tenant: "0".to_owned(),
            ..LimitArgs::default()
        };
        assert_eq!(
            args.validate().unwrap_err().setting,
            "EFMS_MAX_JOBS_PER_TENANT (--max-jobs-per-tenant)"
        );
        args.max_jobs_per_tenant = "2".to_owned();
        args.max_document_bytes = "lots".to_owned();
        assert_eq!(
            args.validate().unwrap_err().setting,
            "EFMS_MAX_DOCUMENT_BYTES (--max-document-bytes)"
        );
    }
}

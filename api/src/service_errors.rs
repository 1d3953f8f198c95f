//! How the write side's refusals are answered: one mapping from the configuration service's
//! errors (and the aggregate's) to problems.

use efms_commands::configuration::ConfigServiceError;
use efms_domain::config::ConfigError;

use crate::error::{ApiError, FieldError};
use crate::routes::resources::TEMPLATE_KEY;

impl From<ConfigServiceError> for ApiError {
    fn from(error: ConfigServiceError) -> Self {
        match error {
            ConfigServiceError::Rejected(error) => config_error(error),
            ConfigServiceError::Conflict => ApiError::Conflict(
                "a concurrent change to the same resource won; nothing was written, retry"
                    .to_owned(),
            ),
            ConfigServiceError::Unavailable => {
                ApiError::Unavailable("the database is unavailable; nothing was written".to_owned())
            }
            ConfigServiceError::Database(error) => ApiError::from(error),
            ConfigServiceError::Internal(error) => ApiError::internal(error),
            ConfigServiceError::RateLimited {
                detail,
                retry_after_seconds,
            } => ApiError::TooManyRequests {
                detail,
                retry_after_seconds,
            },
            ConfigServiceError::QuotaExceeded(detail) => ApiError::Forbidden(detail),
            ConfigServiceError::Pin(detail) => {
                ApiError::Validation(vec![FieldError::at("/branch", detail)])
            }
            ConfigServiceError::Shared(detail) => ApiError::Conflict(detail),
            error @ ConfigServiceError::RevocationPending => {
                ApiError::Unavailable(error.to_string())
            }
            ConfigServiceError::Fault(fault) => ApiError::Validation(
                fault
                    .violations
                    .into_iter()
                    .map(|violation| {
                        FieldError::at(
                            violation.pointer,
                            format!("{} `{}`: {}", fault.kind, fault.name, violation.message),
                        )
                    })
                    .collect(),
            ),
            error @ ConfigServiceError::MergeConflicts(_) => ApiError::Conflict(error.to_string()),
        }
    }
}

/// How a refused commit is answered.
pub fn config_error(error: ConfigError) -> ApiError {
    let detail = error.to_string();
    match error {
        ConfigError::AlreadyExists { .. }
        | ConfigError::StillReferenced { .. }
        | ConfigError::BranchExists
        | ConfigError::NotDeletable => ApiError::Conflict(detail),
        ConfigError::NotFound { .. } | ConfigError::BranchDeleted => ApiError::NotFound(detail),
        ConfigError::QuotaExceeded { .. } => ApiError::Forbidden(detail),
        ConfigError::VersionMismatch { .. } => ApiError::PreconditionFailed(detail),
        ConfigError::ChangedTwice { .. } => ApiError::Validation(vec![FieldError::at("", detail)]),
        ConfigError::Render {
            kind,
            name,
            template,
            violations,
        } => ApiError::Validation(
            violations
                .into_iter()
                .map(|violation| {
                    let declaration = violation.pointer.starts_with("/parameters")
                        || violation.pointer.starts_with("/template");
                    let pointer = if declaration {
                        format!("/{TEMPLATE_KEY}{}", violation.pointer)
                    } else {
                        violation.pointer
                    };
                    FieldError::at(
                        pointer,
                        format!(
                            "{kind} `{name}` from template `{template}`: {}",
                            violation.message
                        ),
                    )
                })
                .collect(),
        ),
        ConfigError::SecretMaterial {
            kind,
            name,
            violations,
        } => ApiError::Validation(
            violations
                .into_iter()
                .map(|violation| {
                    FieldError::at(
                        violation.pointer,
                        format!("{kind} `{name}`: {}", violation.message),
                    )
                })
                .collect(),
        ),
        ConfigError::GroupCycle(_) => ApiError::Validation(vec![FieldError::at("/parent", detail)]),
        ConfigError::DanglingReferences(dangling) => ApiError::Validation(
            dangling
                .into_iter()
                .map(|(from, to)| {
                    FieldError::at("", efms_domain::config::dangling_message(&from, &to))
                })
                .collect(),
        ),
    }
}

//! A patch of one resource (`PATCH`, RFC 6902 or RFC 7396): applied to the resource as the read
//! models hold it, within the limits, and committed expecting the version it was applied to.

use efms_domain::config::limits::PatchRefusal;
use efms_domain::config::writes::Patch;
use efms_domain::config::{Change, ConfigError, Expect, Operation};
use efms_domain::envoy::{ResourceKind, Violation};

use super::{CommitRequest, ConfigService, ConfigServiceError};
use crate::log::Position;

/// Why a patch did not land. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// There is no such resource.
    #[error("there is no such resource")]
    Missing,
    /// The resource is declared from `template`: its declaration is what changes.
    #[error("the resource is declared from template `{template}`")]
    Declared {
        /// The template.
        template: String,
    },
    /// The patch does not apply, or passes a limit.
    #[error(transparent)]
    Refused(PatchRefusal),
    /// The patched document is not a valid resource.
    #[error("the patched document is invalid")]
    Invalid(Vec<Violation>),
    /// The patched document names another resource.
    #[error("the patched document names `{0}`")]
    Renamed(String),
    /// The commit was refused, or reading failed.
    #[error(transparent)]
    Service(#[from] ConfigServiceError),
}

impl ConfigService {
    /// Applies `patch` to `kind` `name` on the request's branch and commits the result, expecting
    /// `if_match` when given, else the version patched. A read model that lagged behind a
    /// concurrent commit fails the version check; without `if_match` the patch is then applied
    /// once more to a fresh read, so no edit is lost and none is applied to a stale document.
    pub async fn patch(
        &self,
        request: &CommitRequest,
        (kind, name): (ResourceKind, &str),
        patch: &Patch,
        if_match: Option<Expect>,
    ) -> Result<Option<Position>, PatchError> {
        let (tenant_id, branch) = (request.tenant_id, request.branch.as_str());
        let mut attempts = 0;
        loop {
            attempts += 1;
            let stored = self.services.stored_resource(tenant_id, branch, kind, name);
            let stored = stored.await?.ok_or(PatchError::Missing)?;
            if let Some(template) = stored.template {
                return Err(PatchError::Declared { template });
            }
            let mut document = stored.document;
            patch
                .apply(&mut document, &self.limits)
                .map_err(PatchError::Refused)?;
            let expect = if_match.unwrap_or(Expect::Version(stored.version));
            let change = Change::put(kind, &document, expect).map_err(PatchError::Invalid)?;
            if change.key().1 != name {
                return Err(PatchError::Renamed(change.key().1.to_owned()));
            }
            match self.commit(request, Operation::Patch, vec![change]).await {
                Err(ConfigServiceError::Rejected(ConfigError::VersionMismatch { .. }))
                    if if_match.is_none() && attempts < 2 => {}
                outcome => return Ok(outcome?),
            }
        }
    }
}

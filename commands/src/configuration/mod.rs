//! The configuration service: everything that happens when a tenant writes configuration.
//!
//! One pipeline for every write path (single writes, bulk, jobs, rollbacks, branches, merges):
//!
//! 1. what is asked becomes changes: a bulk request's operations expanded, patches applied to
//!    what the read models hold ([`bulk`]); a rollback or merge planned from whole states
//!    ([`plans`]);
//! 2. a pin of a group on `main` must name a live branch that has the group ([`pins`]);
//! 3. the tenant's quotas: writes per minute, and the quota of resources per kind handed to the
//!    aggregate ([`quotas`]);
//! 4. an owner's change to what it shares with other tenants is refused while shared, and what
//!    others share with the tenant is read under a lock that orders it against revocations
//!    ([`sharing`]);
//! 5. secret material is sealed with the tenant's data key ([`sealing`]);
//! 6. the command runs on the `(tenant, branch)` aggregate through the [`CommandBus`];
//! 7. the service waits for the read models to show the commit (read-your-writes).
//!
//! It takes domain types only: a [`CommitRequest`] names the tenant, the branch and what the
//! commit records ([`CommitMetadata`]: actor, message, request id). What it needs from outside the
//! write side (the read models it reads and waits for, where outcomes are counted) comes through
//! [`ConfigServices`]. Its errors are its own ([`ConfigServiceError`]); the HTTP layer maps them to
//! problems in one place.

pub mod bulk;
pub mod patches;
pub mod pins;
pub mod plans;
pub mod quotas;
pub mod sealing;
pub mod sharing;

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::Aggregate as _;
use efms_domain::config::bulk::Stored;
use efms_domain::config::inheritance::Inherited;
use efms_domain::config::limits::{CommitContext, Limits};
use efms_domain::config::shared::Shared;
use efms_domain::config::{Change, ConfigCommand, ConfigError, ConfigRepo, Operation};
use efms_domain::envoy::ResourceKind;
use futures::future::BoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use crate::bus::{CommandBus, CommandError, CommitMetadata};
use crate::keys::Keyring;
use crate::log::Position;

/// How long a write waits for the read models to show its commit before answering anyway.
pub const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a commit goes and what it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRequest {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The branch (`main` or another).
    pub branch: String,
    /// Who asked, why, and the request that carried it.
    pub metadata: CommitMetadata,
}

/// What the service needs from outside the write side: the read models (what a patch starts from,
/// what a group gets, the head revision, and waiting for them to show a commit) and where outcomes
/// are counted.
pub trait ConfigServices: Send + Sync + 'static {
    /// `kind` `name` on the branch as the read model holds it now (`None`: there is none).
    fn stored_resource<'a>(
        &'a self,
        tenant_id: Uuid,
        branch: &'a str,
        kind: ResourceKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, ConfigServiceError>>;
    /// What `group` gets on the branch now: its own attachments and its ancestors'.
    fn group_resources<'a>(
        &'a self,
        tenant_id: Uuid,
        branch: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Inherited, ConfigServiceError>>;
    /// The branch's latest revision as the read model holds it (0: none yet).
    fn head_revision<'a>(
        &'a self,
        tenant_id: Uuid,
        branch: &'a str,
    ) -> BoxFuture<'a, Result<i64, ConfigServiceError>>;
    /// Waits until the configuration read model shows the log up to `position`, at most
    /// `timeout`; whether it got there.
    fn wait_for_read_models(&self, position: Position, timeout: Duration) -> BoxFuture<'_, bool>;
    /// Counts the outcome of a configuration command (`committed`, `unchanged`, `rejected`,
    /// `conflict`, `failed`).
    fn record_outcome(&self, outcome: &'static str);
}

/// Why a write did not commit. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum ConfigServiceError {
    /// The aggregate refused the change.
    #[error(transparent)]
    Rejected(ConfigError),
    /// Another commit reached the same branch first, every time it was tried.
    #[error("a concurrent change to the same resource won; nothing was written, retry")]
    Conflict,
    /// The database could not be reached.
    #[error("the database is unavailable; nothing was written")]
    Unavailable,
    /// A database error while checking the write.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Anything else (a stored event that does not decode, a bug).
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
    /// The tenant's `writes_per_minute` quota is reached.
    #[error("{detail}")]
    RateLimited {
        /// What is reached.
        detail: String,
        /// When to try again.
        retry_after_seconds: u32,
    },
    /// The change would pass a quota on what the tenant holds.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A group's pin (its `branch` field) names no live branch that has the group.
    #[error("{0}")]
    Pin(String),
    /// The change deletes a shared resource, or makes a shared cluster use a secret.
    #[error("{0}")]
    Shared(String),
    /// A revocation of one of the tenant's grants is being decided.
    #[error("a grant of this tenant is being revoked; retry shortly")]
    RevocationPending,
    /// A stored resource a rollback or merge would restore no longer passes the checks; nothing
    /// was written.
    #[error("{} `{}` cannot be restored as stored", .0.kind, .0.name)]
    Fault(efms_domain::config::plans::PlanFault),
    /// Both sides of a merge changed the same values differently; nothing was merged.
    #[error("{} value(s) changed on both sides; nothing was merged", .0.len())]
    MergeConflicts(Vec<efms_domain::config::plans::MergeConflict>),
}

/// The configuration service (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct ConfigService {
    pool: PgPool,
    bus: CommandBus,
    keyring: Keyring,
    limits: Limits,
    services: Arc<dyn ConfigServices>,
}

impl std::fmt::Debug for ConfigService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigService")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ConfigService {
    /// The service over `pool`, running commands through `bus`, sealing with `keyring`, holding
    /// commits to `limits`.
    pub fn new(
        pool: PgPool,
        bus: CommandBus,
        keyring: Keyring,
        limits: Limits,
        services: Arc<dyn ConfigServices>,
    ) -> Self {
        Self {
            pool,
            bus,
            keyring,
            limits,
            services,
        }
    }

    /// The same service holding commits to `limits`.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The same service keeping the states of at most `repositories` configuration repositories
    /// (tenant and branch) in memory between commits (see [`crate::warm`]).
    #[must_use]
    pub fn with_warm_repositories(mut self, repositories: usize) -> Self {
        self.bus = self.bus.with_warm_streams(repositories);
        self
    }

    /// Commits `changes` as one revision of `operation` on the request's branch; the position of
    /// the commit in the log, or `None` when nothing changed.
    pub async fn commit(
        &self,
        request: &CommitRequest,
        operation: Operation,
        changes: Vec<Change>,
    ) -> Result<Option<Position>, ConfigServiceError> {
        pins::check(&self.pool, request.tenant_id, &request.branch, &changes).await?;
        let command = ConfigCommand::Commit {
            message: request.metadata.message.clone(),
            operation,
            changes,
        };
        self.execute(request, command).await
    }

    /// Runs `command` on the request's branch through the whole pipeline; the position of its
    /// commit, or `None` when nothing changed.
    pub async fn execute(
        &self,
        request: &CommitRequest,
        command: ConfigCommand,
    ) -> Result<Option<Position>, ConfigServiceError> {
        let (tenant_id, branch) = (request.tenant_id, request.branch.as_str());
        let resources_per_kind = quotas::check(&self.pool, tenant_id, &command).await?;
        sharing::check_owner_changes(&self.pool, tenant_id, branch, &command).await?;
        let (shared, guard) = match command {
            ConfigCommand::DeleteBranch => (Shared::default(), sharing::SharedGuard::default()),
            _ => sharing::shared_with(&self.pool, tenant_id).await?,
        };
        let mut command = command;
        sealing::seal_secrets(&self.keyring, tenant_id, &mut command).await?;
        let context = CommitContext {
            shared,
            limits: self.limits,
            resources_per_kind,
        };
        let result = self
            .bus
            .execute::<ConfigRepo>(
                tenant_id,
                branch,
                command,
                context,
                request.metadata.clone(),
            )
            .await;
        self.services.record_outcome(match &result {
            Ok(Some(_)) => "committed",
            Ok(None) => "unchanged",
            Err(CommandError::Rejected(_)) => "rejected",
            Err(CommandError::Conflict) => "conflict",
            Err(_) => "failed",
        });
        let position = result.map_err(|error| match error {
            CommandError::Rejected(ConfigError::QuotaExceeded { kind, limit, after }) => {
                ConfigServiceError::QuotaExceeded(format!(
                    "quota `resources_per_kind` ({limit}): this would make {after} {kind} resources on `{branch}`"
                ))
            }
            CommandError::Rejected(error) => ConfigServiceError::Rejected(error),
            CommandError::Conflict => ConfigServiceError::Conflict,
            CommandError::Unavailable(_) => ConfigServiceError::Unavailable,
            CommandError::Internal(error) => ConfigServiceError::Internal(error),
        })?;
        // A change that changed nothing was decided on the stream as it stands, which may hold
        // a commit this replica's read models have not shown yet (the same write made through
        // another replica, whose answer was lost): the answer waits for it too.
        let shown = match position {
            Some(position) => Some(position),
            None => crate::log::stream_end(&self.pool, tenant_id, ConfigRepo::TYPE, branch).await?,
        };
        if let Some(shown) = shown {
            if !self
                .services
                .wait_for_read_models(shown, READ_YOUR_WRITES_TIMEOUT)
                .await
            {
                tracing::warn!(position = ?shown, "configuration read model lags behind a commit");
            }
        }
        guard.release().await;
        Ok(position)
    }
}

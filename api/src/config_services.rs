//! What the configuration service needs from the serving process: the read models it reads and
//! waits for around a commit, and the metrics it counts outcomes in.

use std::sync::Arc;
use std::time::Duration;

use efms_commands::configuration::{ConfigServiceError, ConfigServices};
use efms_commands::Position;
use efms_domain::config::bulk::Stored;
use efms_domain::config::inheritance::Inherited;
use efms_domain::envoy::ResourceKind;
use efms_projections::config::{self as read, AsOf};
use efms_projections::{ProjectionError, ProjectorHandle};
use futures::future::BoxFuture;
use sqlx::PgPool;
use uuid::Uuid;

use crate::metrics::Metrics;

/// The configuration read models (through the cache's handle, so writers read their own writes
/// from it) and the process's metrics.
pub struct ReadModelsAndMetrics {
    /// The database the read models are in.
    pub pool: PgPool,
    /// The configuration projector's handle, as the resource cache follows it.
    pub config: ProjectorHandle,
    /// Where command outcomes are counted.
    pub metrics: Arc<Metrics>,
}

impl ConfigServices for ReadModelsAndMetrics {
    fn stored_resource<'a>(
        &'a self,
        tenant_id: Uuid,
        branch: &'a str,
        kind: ResourceKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Stored>, ConfigServiceError>> {
        Box::pin(stored_resource(&self.pool, tenant_id, branch, (kind, name)))
    }

    fn group_resources<'a>(
        &'a self,
        tenant_id: Uuid,
        branch: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Inherited, ConfigServiceError>> {
        Box::pin(async move {
            read::group_resources(&self.pool, tenant_id, branch, group, AsOf::Now)
                .await
                .map_err(projection_error)
        })
    }

    fn head_revision<'a>(
        &'a self,
        tenant_id: Uuid,
        branch: &'a str,
    ) -> BoxFuture<'a, Result<i64, ConfigServiceError>> {
        Box::pin(async move { Ok(read::head_revision(&self.pool, tenant_id, branch).await?) })
    }

    fn wait_for_read_models(&self, position: Position, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.config.wait_for(position, timeout))
    }

    fn record_outcome(&self, outcome: &'static str) {
        self.metrics.command("config", outcome);
    }
}

/// `kind` `name` on `branch` as the configuration read model holds it now, with the template it
/// is declared from, if any.
pub async fn stored_resource(
    pool: &PgPool,
    tenant_id: Uuid,
    branch: &str,
    (kind, name): (ResourceKind, &str),
) -> Result<Option<Stored>, ConfigServiceError> {
    let Some(row) = read::get_resource(pool, tenant_id, branch, kind, name, AsOf::Now).await?
    else {
        return Ok(None);
    };
    let declared = read::derivation_of(pool, tenant_id, branch, kind, name).await?;
    Ok(Some(Stored {
        document: row.document,
        version: u64::try_from(row.version)
            .map_err(|error| ConfigServiceError::Internal(Box::new(error)))?,
        template: declared.map(|declaration| {
            declaration["template"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }),
    }))
}

/// A read model's failure as the service's.
fn projection_error(error: ProjectionError) -> ConfigServiceError {
    match error {
        ProjectionError::Database(error) => error.into(),
        other => ConfigServiceError::Internal(Box::new(other)),
    }
}

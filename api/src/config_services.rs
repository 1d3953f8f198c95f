//! What the configuration service needs from the serving process: the read models it waits for
//! after a commit, and the metrics it counts outcomes in.

use std::sync::Arc;
use std::time::Duration;

use efms_commands::configuration::ConfigServices;
use efms_commands::Position;
use efms_projections::ProjectorHandle;
use futures::future::BoxFuture;

use crate::metrics::Metrics;

/// The configuration read models (through the cache's handle, so writers read their own writes
/// from it) and the process's metrics.
pub struct ReadModelsAndMetrics {
    /// The configuration projector's handle, as the resource cache follows it.
    pub config: ProjectorHandle,
    /// Where command outcomes are counted.
    pub metrics: Arc<Metrics>,
}

impl ConfigServices for ReadModelsAndMetrics {
    fn wait_for_read_models(&self, position: Position, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.config.wait_for(position, timeout))
    }

    fn record_outcome(&self, outcome: &'static str) {
        self.metrics.command("config", outcome);
    }
}

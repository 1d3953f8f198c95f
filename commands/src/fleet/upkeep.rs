//! The fleet's upkeep, done by one replica at a time under the lease `fleet-upkeep`: VMs whose
//! heartbeat is overdue are taken down, samples and the proxies' statistics are rolled up by the
//! minute, and their tables (and the event feed's facts and the proxies' history) get
//! tomorrow's partitions and lose the expired ones.

use std::future::Future;
use std::time::{Duration, Instant};

use efms_domain::fleet::{DEFAULT_HEARTBEAT_GRACE, DEFAULT_HEARTBEAT_INTERVAL};
use tokio::sync::watch;

use super::{presence, rollups, Fleet};
use crate::lease::{next_turn, Lease, Turn};
use crate::telemetry;

/// How often the sample tables' partitions are looked after.
const SAMPLE_UPKEEP_EVERY: Duration = Duration::from_secs(3_600);
/// How often samples are rolled up.
const ROLLUP_EVERY: Duration = Duration::from_secs(60);

/// How the upkeep runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpkeepSettings {
    /// How often agents send a heartbeat.
    pub heartbeat_interval: Duration,
    /// How long past the interval a VM stays up without one.
    pub heartbeat_grace: Duration,
    /// How many days of raw samples are kept.
    pub sample_days: i32,
    /// How many days of one-minute rollups are kept.
    pub rollup_days: i32,
    /// How many days of the proxies' raw statistics (10 s buckets) are kept.
    pub stats_days: i32,
    /// How many days of the one-minute rollups of the proxies' statistics are kept.
    pub stats_rollup_days: i32,
    /// How many days of the event feed's facts are kept.
    pub feed_days: i32,
    /// How many days of the proxies' history (`proxy_transitions`) are kept.
    pub proxy_history_days: i32,
}

impl Default for UpkeepSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_grace: DEFAULT_HEARTBEAT_GRACE,
            sample_days: 7,
            rollup_days: 90,
            stats_days: 1,
            stats_rollup_days: 30,
            feed_days: 30,
            proxy_history_days: 90,
        }
    }
}

impl UpkeepSettings {
    /// How often the sweep runs: a quarter of the grace, between 100 ms and 5 s.
    fn sweep_every(&self) -> Duration {
        (self.heartbeat_grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// Runs the upkeep until `shutdown` resolves; `settings` may change meanwhile.
pub fn spawn(
    fleet: Fleet,
    mut settings: watch::Receiver<UpkeepSettings>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        let mut samples_done: Option<Instant> = None;
        let mut rolled_up: Option<Instant> = None;
        // One holder for the life of the task, so that each round renews its own lease.
        let mut lease = Lease::new(
            fleet.pool().clone(),
            "fleet-upkeep",
            Duration::from_secs(15),
        );
        loop {
            let current = *settings.borrow_and_update();
            let every = current.sweep_every();
            lease.set_ttl(every * 3);
            match next_turn(&mut lease, every, &mut settings, shutdown.as_mut()).await {
                Turn::Stop => return,
                Turn::Again => continue,
                Turn::Work => {}
            }
            let silence = current.heartbeat_interval + current.heartbeat_grace;
            match fleet.sweep(silence).await {
                Ok(0) => {}
                Ok(changed) => tracing::info!(changed, "VMs without a heartbeat taken down"),
                Err(error) => tracing::warn!(%error, "the fleet's sweep failed"),
            }
            if samples_done.is_none_or(|done| done.elapsed() >= SAMPLE_UPKEEP_EVERY) {
                let pool = fleet.pool();
                let kept = presence::maintain_samples(pool, current.sample_days).await;
                let rollups = rollups::maintain_rollups(pool, current.rollup_days).await;
                let stats =
                    telemetry::maintain(pool, current.stats_days, current.stats_rollup_days).await;
                let feed = rollups::maintain_feed_facts(pool, current.feed_days).await;
                let history =
                    rollups::maintain_proxy_history(pool, current.proxy_history_days).await;
                match kept.and_then(|samples| Ok(samples + rollups? + stats? + feed? + history?)) {
                    Ok(changed) => {
                        samples_done = Some(Instant::now());
                        if changed > 0 {
                            tracing::info!(changed, "sample partitions created or dropped");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "the sample partitions' upkeep failed"),
                }
            }
            if rolled_up.is_none_or(|done| done.elapsed() >= ROLLUP_EVERY) {
                let stats = telemetry::roll_up(fleet.pool()).await;
                match rollups::roll_up(fleet.pool())
                    .await
                    .and_then(|written| Ok(written + stats?))
                {
                    Ok(written) => {
                        rolled_up = Some(Instant::now());
                        tracing::debug!(written, "samples rolled up");
                    }
                    Err(error) => tracing::warn!(%error, "the samples' rollup failed"),
                }
            }
        }
    })
}

//! The proxies' own statistics (`envoy.service.metrics.v3.MetricsService/StreamMetrics`, served
//! on the xDS listener): each proxy's Envoy streams its statistics there through its metrics
//! service sink, authenticated like its ADS stream. What they report is gathered in memory per
//! series and time bucket ([`Accumulator`]) and written once each bucket has ended, one row per
//! series and bucket for the whole replica, whatever the number of proxies.

mod absorb;
mod service;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use efms_domain::telemetry::{Accumulator, StatRow};
use sqlx::PgPool;
use tokio::sync::watch;

pub(crate) use service::MetricsSink;

use crate::metrics::TelemetryMetrics;

/// How the statistics are gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetrySettings {
    /// The width of a time bucket (10 s by default).
    pub bucket: Duration,
    /// How often proxies send their statistics (the bootstraps' `stats_flush_interval`; 10 s
    /// by default).
    pub flush_interval: Duration,
    /// The largest message a proxy may send; a larger one ends its stream with
    /// `RESOURCE_EXHAUSTED`, and nothing of it is kept. Read when the listener starts.
    pub max_message: usize,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            bucket: Duration::from_secs(10),
            flush_interval: Duration::from_secs(10),
            max_message: 4 * 1024 * 1024,
        }
    }
}

/// Rows kept for a later write when the database fails, at most (older ones are dropped first).
const MOST_PENDING: usize = 200_000;

/// The statistics streams of this process and what they gathered.
#[derive(Clone)]
pub struct TelemetryServer {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    settings: watch::Sender<TelemetrySettings>,
    open: Mutex<Accumulator>,
    metrics: TelemetryMetrics,
    stopping: watch::Sender<bool>,
    /// The writer's task, done once it wrote what was left after a stop.
    written: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for TelemetryServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryServer")
            .field("settings", &*self.inner.settings.borrow())
            .finish_non_exhaustive()
    }
}

fn whole_seconds(bucket: Duration) -> u32 {
    u32::try_from(bucket.as_secs().max(1)).unwrap_or(u32::MAX)
}

impl TelemetryServer {
    /// Gathers statistics with `settings` and writes them through `pool`; starts the writer.
    pub fn new(pool: PgPool, settings: TelemetrySettings, metrics: TelemetryMetrics) -> Self {
        let inner = Arc::new(Inner {
            pool,
            open: Mutex::new(Accumulator::new(whole_seconds(settings.bucket))),
            settings: watch::Sender::new(settings),
            metrics,
            stopping: watch::Sender::new(false),
            written: Mutex::new(None),
        });
        let writer = tokio::spawn(write_ended(inner.clone()));
        *inner.written.lock().expect("writer lock") = Some(writer);
        Self { inner }
    }

    /// The settings.
    pub fn settings(&self) -> TelemetrySettings {
        *self.inner.settings.borrow()
    }

    /// Changes the settings (the bucket width applies to the buckets opened from now on).
    pub fn update(&self, settings: TelemetrySettings) {
        self.inner.settings.send_replace(settings);
        self.inner
            .open
            .lock()
            .expect("accumulator lock")
            .set_width(whole_seconds(settings.bucket));
    }

    /// Ends the streams and writes every bucket gathered so far (ended or not).
    pub fn stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Waits until the writer wrote what was left after [`Self::stop`].
    pub async fn stopped(&self) {
        let writer = self.inner.written.lock().expect("writer lock").take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }

    pub(crate) fn metrics(&self) -> &TelemetryMetrics {
        &self.inner.metrics
    }

    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stopping.subscribe()
    }

    pub(crate) fn gather(&self, add: impl FnOnce(&mut Accumulator)) {
        let mut open = self.inner.open.lock().expect("accumulator lock");
        add(&mut open);
        self.inner
            .metrics
            .open_series
            .set(i64::try_from(open.len()).unwrap_or(i64::MAX));
    }
}

/// Writes the buckets as they end, and everything gathered once the server stops.
async fn write_ended(inner: Arc<Inner>) {
    let mut stopping = inner.stopping.subscribe();
    let mut pending: Vec<StatRow> = Vec::new();
    loop {
        let bucket = inner.settings.borrow().bucket;
        let tick = (bucket / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let stop = tokio::select! {
            () = tokio::time::sleep(tick) => false,
            _ = stopping.wait_for(|stop| *stop) => true,
        };
        let ended = {
            let mut open = inner.open.lock().expect("accumulator lock");
            if stop {
                open.take_all()
            } else {
                open.take_ended(chrono::Utc::now())
            }
        };
        // Oldest first, so that they are the first dropped.
        let mut rows = std::mem::take(&mut pending);
        rows.extend(ended);
        if !rows.is_empty() {
            match efms_commands::telemetry::write_rows(&inner.pool, &rows).await {
                Ok(written) => {
                    inner.metrics.rows_written.inc_by(written);
                }
                Err(error @ sqlx::Error::Database(_)) => {
                    // The database refused the rows themselves: retrying cannot help.
                    tracing::error!(%error, rows = rows.len(), "the proxies' statistics were refused; dropped");
                    inner.metrics.rows_dropped.inc_by(rows.len() as u64);
                }
                Err(error) => {
                    tracing::warn!(%error, rows = rows.len(), "the proxies' statistics cannot be written; retrying");
                    if rows.len() > MOST_PENDING {
                        let dropped = rows.len() - MOST_PENDING;
                        rows.drain(..dropped);
                        inner.metrics.rows_dropped.inc_by(dropped as u64);
                    }
                    pending = rows;
                }
            }
        }
        if stop {
            return;
        }
    }
}

//! xDS metrics (NFR-OB-001): connected proxies, pushes, refusals and how long a proxy takes to
//! accept a change.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a per-type xDS metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TypeLabels {
    /// The resource type (`cluster`, `listener`, ...).
    pub kind: String,
    /// `sotw` or `delta`.
    pub protocol: String,
}

/// The xDS server's metrics; clones share the same series.
#[derive(Debug, Clone)]
pub struct XdsMetrics {
    /// Open xDS streams.
    pub streams: Gauge,
    /// Responses sent, per type and protocol.
    pub pushes: Family<TypeLabels, Counter>,
    /// Responses refused by proxies (NACKs), per type and protocol.
    pub nacks: Family<TypeLabels, Counter>,
    /// Seconds from a new snapshot reaching a stream to the proxy acknowledging the push.
    pub push_latency: Histogram,
    /// Streams refused (bad or missing token, unknown tenant, bad node).
    pub refused: Counter,
    /// The agents' streams.
    pub fleet: FleetMetrics,
    /// The proxies' statistics streams.
    pub telemetry: TelemetryMetrics,
}

/// Labels of a refused statistics stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Why: `token`, `identity` (another node's or tenant's), `oversize`, `invalid`,
    /// `unavailable`.
    pub reason: String,
}

/// The proxies' statistics streams' metrics (never per proxy); clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct TelemetryMetrics {
    /// Open statistics streams.
    pub streams: Gauge,
    /// Statistics messages received.
    pub messages: Counter,
    /// Statistics streams refused, by reason.
    pub refused: Family<RefusalLabels, Counter>,
    /// Rows of statistics written.
    pub rows_written: Counter,
    /// Rows of statistics dropped after the database failed for too long.
    pub rows_dropped: Counter,
    /// Series with a time bucket open in memory.
    pub open_series: Gauge,
}

impl TelemetryMetrics {
    /// Counts a stream refused for `reason`.
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&RefusalLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// The agents' streams' metrics; clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct FleetMetrics {
    /// Open agent streams.
    pub agent_streams: Gauge,
    /// Agent streams refused at their start (unknown or revoked join token).
    pub refused: Counter,
    /// Reports refused (malformed, impossible, or naming another VM's container).
    pub reports_refused: Counter,
}

impl XdsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "xds_streams",
            "Open xDS streams (connected proxies; one per proxy with ADS)",
            metrics.streams.clone(),
        );
        registry.register("xds_pushes", "xDS responses sent", metrics.pushes.clone());
        registry.register(
            "xds_nacks",
            "xDS responses refused by proxies",
            metrics.nacks.clone(),
        );
        registry.register(
            "xds_push_latency_seconds",
            "Time from a new snapshot reaching a stream to the proxy acknowledging it",
            metrics.push_latency.clone(),
        );
        registry.register(
            "xds_refused_streams",
            "xDS streams refused at their start",
            metrics.refused.clone(),
        );
        registry.register(
            "fleet_agent_streams",
            "Open streams of fleet agents (one per connected VM)",
            metrics.fleet.agent_streams.clone(),
        );
        registry.register(
            "fleet_refused_streams",
            "Agent streams refused at their start (unknown or revoked join token)",
            metrics.fleet.refused.clone(),
        );
        registry.register(
            "fleet_refused_reports",
            "Agent reports refused (malformed, impossible, or naming another VM's container)",
            metrics.fleet.reports_refused.clone(),
        );
        let telemetry = &metrics.telemetry;
        registry.register(
            "telemetry_streams",
            "Open statistics streams of proxies",
            telemetry.streams.clone(),
        );
        registry.register(
            "telemetry_messages",
            "Statistics messages received from proxies",
            telemetry.messages.clone(),
        );
        registry.register(
            "telemetry_refused_streams",
            "Statistics streams refused (bad token, another node or tenant, oversize message)",
            telemetry.refused.clone(),
        );
        registry.register(
            "telemetry_rows_written",
            "Rows of proxy statistics written (one per series and time bucket)",
            telemetry.rows_written.clone(),
        );
        registry.register(
            "telemetry_rows_dropped",
            "Rows of proxy statistics dropped after the database failed for too long",
            telemetry.rows_dropped.clone(),
        );
        registry.register(
            "telemetry_open_series",
            "Series of proxy statistics with a time bucket open in memory",
            telemetry.open_series.clone(),
        );
        metrics
    }
}

impl Default for XdsMetrics {
    fn default() -> Self {
        Self {
            streams: Gauge::default(),
            pushes: Family::default(),
            nacks: Family::default(),
            push_latency: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            refused: Counter::default(),
            fleet: FleetMetrics::default(),
            telemetry: TelemetryMetrics::default(),
        }
    }
}

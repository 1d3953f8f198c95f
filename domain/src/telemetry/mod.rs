//! What the proxies' own statistics become (FR-RT-005, FR-LN-005, FR-CL-005): per tenant, group
//! and resource, in time buckets, the counts, gauges and latency histograms that Envoy reports
//! through its metrics service sink.
//!
//! Envoy reports counters as deltas since its last flush and histograms as the samples of that
//! interval, so adding what arrives never counts a request twice and a restarted proxy (which
//! starts from zero) never makes a rate negative. Gauges (active connections, healthy endpoints)
//! are the latest value each proxy reported in a bucket, summed over the proxies.

mod accumulator;
mod latency;

pub use accumulator::{Accumulator, Reading};
pub use latency::{Latency, LATENCY_BOUNDS_MS, LATENCY_SLOTS};

/// What a series is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatScope {
    /// An upstream cluster, by name.
    Cluster,
    /// A listener, by the name Envoy gives its statistics: its `stat_prefix`, else its address
    /// (`127.0.0.1_8080`).
    Listener,
    /// An HTTP connection manager, by its `stat_prefix`.
    Http,
    /// A virtual host, by name (the sum of its virtual clusters, `other` included).
    VirtualHost,
    /// A route, by virtual host (name) and its `stat_prefix` (detail).
    Route,
}

impl StatScope {
    /// The scope as stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            StatScope::Cluster => "cluster",
            StatScope::Listener => "listener",
            StatScope::Http => "http",
            StatScope::VirtualHost => "vhost",
            StatScope::Route => "route",
        }
    }
}

/// One series' subject: scope, name and, for a route, its `stat_prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatKey {
    /// What kind of thing.
    pub scope: StatScope,
    /// Its name as Envoy tags it.
    pub name: String,
    /// The route's `stat_prefix` for [`StatScope::Route`], else empty.
    pub detail: String,
}

/// A counter that adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterField {
    /// Requests (upstream for clusters and routes, downstream for connection managers).
    Requests,
    /// Responses of class 2xx, 3xx, 4xx, 5xx (index 0 to 3).
    Responses(u8),
    /// Retries.
    Retries,
    /// New connections.
    ConnectionsNew,
    /// Bytes received.
    BytesIn,
    /// Bytes sent.
    BytesOut,
}

/// A gauge: the latest value of each proxy, summed over proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaugeField {
    /// Open connections.
    ConnectionsActive,
    /// Circuit breakers open (of the default priority's four).
    CircuitBreakersOpen,
    /// Healthy endpoints.
    EndpointsHealthy,
    /// Endpoints.
    EndpointsTotal,
}

/// What a series holds in one time bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatValues {
    /// Requests.
    pub requests: i64,
    /// Responses by class: 2xx, 3xx, 4xx, 5xx.
    pub responses: [i64; 4],
    /// Retries.
    pub retries: i64,
    /// New connections.
    pub connections_new: i64,
    /// Bytes received.
    pub bytes_in: i64,
    /// Bytes sent.
    pub bytes_out: i64,
    /// Open connections (summed over proxies), if reported.
    pub connections_active: Option<i64>,
    /// Circuit breakers open (summed over proxies), if reported.
    pub circuit_breakers_open: Option<i64>,
    /// Healthy endpoints (summed over proxies), if reported.
    pub endpoints_healthy: Option<i64>,
    /// Endpoints (summed over proxies), if reported.
    pub endpoints_total: Option<i64>,
    /// Request latency.
    pub latency: Latency,
}

/// Adds without overflowing (a sum that would is held at the most an `i64` holds).
fn add(into: &mut i64, value: i64) {
    *into = into.saturating_add(value);
}

fn add_gauge(into: &mut Option<i64>, value: Option<i64>) {
    if let Some(value) = value {
        *into = Some(into.unwrap_or(0).saturating_add(value));
    }
}

impl StatValues {
    /// Adds `value` to a counter.
    pub fn count(&mut self, field: CounterField, value: i64) {
        match field {
            CounterField::Requests => add(&mut self.requests, value),
            CounterField::Responses(class) => {
                if let Some(slot) = self.responses.get_mut(usize::from(class)) {
                    add(slot, value);
                }
            }
            CounterField::Retries => add(&mut self.retries, value),
            CounterField::ConnectionsNew => add(&mut self.connections_new, value),
            CounterField::BytesIn => add(&mut self.bytes_in, value),
            CounterField::BytesOut => add(&mut self.bytes_out, value),
        }
    }

    /// Adds `value` to a gauge (one proxy's, or one part of one proxy's).
    pub fn gauge(&mut self, field: GaugeField, value: i64) {
        let slot = match field {
            GaugeField::ConnectionsActive => &mut self.connections_active,
            GaugeField::CircuitBreakersOpen => &mut self.circuit_breakers_open,
            GaugeField::EndpointsHealthy => &mut self.endpoints_healthy,
            GaugeField::EndpointsTotal => &mut self.endpoints_total,
        };
        add_gauge(slot, Some(value));
    }

    /// Adds what `other` counted, gauges included (as of other proxies or replicas).
    pub fn merge(&mut self, other: &StatValues) {
        add(&mut self.requests, other.requests);
        for (mine, theirs) in self.responses.iter_mut().zip(other.responses) {
            add(mine, theirs);
        }
        add(&mut self.retries, other.retries);
        add(&mut self.connections_new, other.connections_new);
        add(&mut self.bytes_in, other.bytes_in);
        add(&mut self.bytes_out, other.bytes_out);
        add_gauge(&mut self.connections_active, other.connections_active);
        add_gauge(&mut self.circuit_breakers_open, other.circuit_breakers_open);
        add_gauge(&mut self.endpoints_healthy, other.endpoints_healthy);
        add_gauge(&mut self.endpoints_total, other.endpoints_total);
        self.latency.merge(&other.latency);
    }
}

impl StatValues {
    /// The values of a span made of consecutive buckets: counters and histograms add up, a gauge
    /// is its mean over the buckets that have it.
    #[must_use]
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    pub fn over_time<'a>(buckets: impl IntoIterator<Item = &'a StatValues>) -> StatValues {
        let mut total = StatValues::default();
        let mut seen = [0_i64; 4];
        for bucket in buckets {
            let gauges = [
                bucket.connections_active,
                bucket.circuit_breakers_open,
                bucket.endpoints_healthy,
                bucket.endpoints_total,
            ];
            for (count, gauge) in seen.iter_mut().zip(gauges) {
                *count += i64::from(gauge.is_some());
            }
            total.merge(bucket);
        }
        let mean = |sum: Option<i64>, count: i64| {
            sum.map(|sum| {
                if count > 1 {
                    (sum as f64 / count as f64).round() as i64
                } else {
                    sum
                }
            })
        };
        total.connections_active = mean(total.connections_active, seen[0]);
        total.circuit_breakers_open = mean(total.circuit_breakers_open, seen[1]);
        total.endpoints_healthy = mean(total.endpoints_healthy, seen[2]);
        total.endpoints_total = mean(total.endpoints_total, seen[3]);
        total
    }
}

/// One series' values in one time bucket, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StatRow {
    /// The tenant.
    pub tenant_id: uuid::Uuid,
    /// The proxies' group.
    pub group: String,
    /// The subject.
    pub key: StatKey,
    /// The bucket's start.
    pub bucket: chrono::DateTime<chrono::Utc>,
    /// The bucket's width in seconds.
    pub seconds: i32,
    /// How many proxies reported to this replica in the bucket.
    pub proxies: i32,
    /// The values.
    pub values: StatValues,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_time_adds_counters_and_averages_gauges() {
        let mut one = StatValues::default();
        one.count(CounterField::Requests, 10);
        one.gauge(GaugeField::EndpointsHealthy, 4);
        let mut two = StatValues::default();
        two.count(CounterField::Requests, 5);
        two.gauge(GaugeField::EndpointsHealthy, 2);
        let span = StatValues::over_time([&one, &two]);
        assert_eq!(span.requests, 15);
        assert_eq!(span.endpoints_healthy, Some(3));
        assert_eq!(span.endpoints_total, None);
    }
}

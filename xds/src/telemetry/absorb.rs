//! Envoy's metric families, as its metrics service sink sends them with `emit_tags_as_labels`
//! (names with their tags taken out, tags as labels), read into the series efms keeps. Anything
//! else in a message (Envoy's other statistics, the admin interface's, the control plane's own
//! cluster's) is ignored.

use efms_domain::telemetry::{CounterField, GaugeField, Reading, StatKey, StatScope};
use envoy_types::pb::io::prometheus::client::{Metric, MetricFamily};

/// The cluster through which proxies reach the control plane: not the tenant's.
pub(crate) const CONTROL_PLANE_CLUSTER: &str = "efms_xds";
/// The connection manager of Envoy's admin interface: not the tenant's.
const ADMIN_PREFIX: &str = "admin";

/// What a family becomes.
#[derive(Debug, Clone, Copy)]
enum Meaning {
    Counter(CounterField),
    /// A counter per response class, from the `envoy.response_code_class` label.
    Classes,
    Gauge(GaugeField, u8),
    Latency,
}

/// The subject and meaning of family `name`, if efms keeps it.
fn meaning(name: &str) -> Option<(StatScope, Meaning)> {
    use CounterField as C;
    use GaugeField as G;
    use Meaning::{Classes, Counter, Gauge, Latency};
    let found = match name {
        "cluster.upstream_rq_total" => (StatScope::Cluster, Counter(C::Requests)),
        "cluster.upstream_rq_xx" => (StatScope::Cluster, Classes),
        "cluster.upstream_rq_time" => (StatScope::Cluster, Latency),
        "cluster.upstream_rq_retry" => (StatScope::Cluster, Counter(C::Retries)),
        "cluster.upstream_cx_total" => (StatScope::Cluster, Counter(C::ConnectionsNew)),
        "cluster.upstream_cx_rx_bytes_total" => (StatScope::Cluster, Counter(C::BytesIn)),
        "cluster.upstream_cx_tx_bytes_total" => (StatScope::Cluster, Counter(C::BytesOut)),
        "cluster.upstream_cx_active" => (StatScope::Cluster, Gauge(G::ConnectionsActive, 0)),
        "cluster.circuit_breakers.default.cx_open" => {
            (StatScope::Cluster, Gauge(G::CircuitBreakersOpen, 0))
        }
        "cluster.circuit_breakers.default.rq_open" => {
            (StatScope::Cluster, Gauge(G::CircuitBreakersOpen, 1))
        }
        "cluster.circuit_breakers.default.rq_pending_open" => {
            (StatScope::Cluster, Gauge(G::CircuitBreakersOpen, 2))
        }
        "cluster.circuit_breakers.default.rq_retry_open" => {
            (StatScope::Cluster, Gauge(G::CircuitBreakersOpen, 3))
        }
        "cluster.membership_healthy" => (StatScope::Cluster, Gauge(G::EndpointsHealthy, 0)),
        "cluster.membership_total" => (StatScope::Cluster, Gauge(G::EndpointsTotal, 0)),
        "http.downstream_rq_total" => (StatScope::Http, Counter(C::Requests)),
        "http.downstream_rq_xx" => (StatScope::Http, Classes),
        "http.downstream_rq_time" => (StatScope::Http, Latency),
        "http.downstream_cx_total" => (StatScope::Http, Counter(C::ConnectionsNew)),
        "http.downstream_cx_rx_bytes_total" => (StatScope::Http, Counter(C::BytesIn)),
        "http.downstream_cx_tx_bytes_total" => (StatScope::Http, Counter(C::BytesOut)),
        "http.downstream_cx_active" => (StatScope::Http, Gauge(G::ConnectionsActive, 0)),
        "listener.downstream_cx_total" => (StatScope::Listener, Counter(C::ConnectionsNew)),
        "listener.downstream_cx_active" => (StatScope::Listener, Gauge(G::ConnectionsActive, 0)),
        "vhost.vcluster.upstream_rq_total" => (StatScope::VirtualHost, Counter(C::Requests)),
        "vhost.vcluster.upstream_rq_xx" => (StatScope::VirtualHost, Classes),
        "vhost.vcluster.upstream_rq_time" => (StatScope::VirtualHost, Latency),
        "vhost.vcluster.upstream_rq_retry" => (StatScope::VirtualHost, Counter(C::Retries)),
        "vhost.route.upstream_rq_total" => (StatScope::Route, Counter(C::Requests)),
        "vhost.route.upstream_rq_xx" => (StatScope::Route, Classes),
        "vhost.route.upstream_rq_time" => (StatScope::Route, Latency),
        "vhost.route.upstream_rq_retry" => (StatScope::Route, Counter(C::Retries)),
        _ => return listener_with_prefix(name),
    };
    Some(found)
}

/// A listener with its own `stat_prefix` has no address tag: `listener.<prefix>.downstream_cx_…`.
fn listener_with_prefix(name: &str) -> Option<(StatScope, Meaning)> {
    let rest = name.strip_prefix("listener.")?;
    if rest.ends_with(".downstream_cx_total") || rest.ends_with(".downstream_cx_active") {
        let (_, stat) = rest.rsplit_once('.')?;
        return meaning(&format!("listener.{stat}"));
    }
    None
}

fn label<'a>(metric: &'a Metric, name: &str) -> Option<&'a str> {
    metric
        .label
        .iter()
        .find(|pair| pair.name.as_deref() == Some(name))
        .and_then(|pair| pair.value.as_deref())
}

/// The series a metric of `scope` belongs to, from its labels (`family` for a listener whose
/// name is in the family's name); `None` for what is not the tenant's.
fn key_of(scope: StatScope, family: &str, metric: &Metric) -> Option<StatKey> {
    let (name, detail) = match scope {
        StatScope::Cluster => (label(metric, "envoy.cluster_name")?, ""),
        StatScope::Http => (label(metric, "envoy.http_conn_manager_prefix")?, ""),
        StatScope::Listener => {
            if let Some(address) = label(metric, "envoy.listener_address") {
                (address, "")
            } else {
                let rest = family.strip_prefix("listener.")?;
                (rest.rsplit_once('.')?.0, "")
            }
        }
        StatScope::VirtualHost => (label(metric, "envoy.virtual_host")?, ""),
        StatScope::Route => (
            label(metric, "envoy.virtual_host")?,
            label(metric, "envoy.route")?,
        ),
    };
    let foreign = match scope {
        StatScope::Cluster => name == CONTROL_PLANE_CLUSTER,
        StatScope::Http | StatScope::Listener => name == ADMIN_PREFIX,
        StatScope::VirtualHost | StatScope::Route => false,
    };
    (!foreign && storable(name) && storable(detail)).then(|| StatKey {
        scope,
        name: name.to_owned(),
        detail: detail.to_owned(),
    })
}

/// The largest value one reading may bring (a counter's growth in one flush interval): far above
/// any real one, and low enough that sums over proxies, replicas and a month stay in an `i64`.
const MOST_PER_READING: f64 = 1.0e12;

/// Whether a name can be stored as the subject of a series: 1 to 253 characters (as resource
/// names), none of them a control character.
fn storable(name: &str) -> bool {
    name.len() <= 253 && !name.chars().any(char::is_control)
}

#[allow(clippy::cast_possible_truncation)]
fn whole(value: Option<f64>) -> i64 {
    value
        .filter(|v| v.is_finite() && *v > 0.0)
        .map_or(0, |v| v.round().min(MOST_PER_READING) as i64)
}

/// The readings of `families`; metrics that count nothing new are left out.
pub(crate) fn absorb(families: &[MetricFamily]) -> Vec<(StatKey, Reading)> {
    let mut readings = Vec::new();
    for family in families {
        let Some(name) = family.name.as_deref() else {
            continue;
        };
        let Some((scope, meaning)) = meaning(name) else {
            continue;
        };
        for metric in &family.metric {
            let Some(key) = key_of(scope, name, metric) else {
                continue;
            };
            let reading = match meaning {
                Meaning::Counter(field) => {
                    let value = whole(metric.counter.as_ref().and_then(|c| c.value));
                    (value > 0).then_some(Reading::Counter(field, value))
                }
                Meaning::Classes => {
                    let class = label(metric, "envoy.response_code_class")
                        .and_then(|class| class.parse::<u8>().ok())
                        .filter(|class| (2..=5).contains(class));
                    let value = whole(metric.counter.as_ref().and_then(|c| c.value));
                    class
                        .filter(|_| value > 0)
                        .map(|class| Reading::Counter(CounterField::Responses(class - 2), value))
                }
                Meaning::Gauge(field, part) => metric.gauge.as_ref().map(|gauge| Reading::Gauge {
                    field,
                    part,
                    value: whole(gauge.value),
                }),
                Meaning::Latency => metric.histogram.as_ref().and_then(|histogram| {
                    let count = histogram.sample_count.unwrap_or(0).min(1_000_000_000_000);
                    (count > 0).then(|| Reading::Latency {
                        buckets: histogram
                            .bucket
                            .iter()
                            .filter_map(|b| Some((b.upper_bound?, b.cumulative_count?.min(count))))
                            .collect(),
                        count,
                        sum_ms: histogram.sample_sum.unwrap_or(0.0).min(MOST_PER_READING),
                    })
                }),
            };
            if let Some(reading) = reading {
                readings.push((key, reading));
            }
        }
    }
    readings
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::io::prometheus::client::{Bucket, Counter, Gauge, Histogram, LabelPair};

    use super::*;

    fn metric(labels: &[(&str, &str)]) -> Metric {
        Metric {
            label: labels
                .iter()
                .map(|(name, value)| LabelPair {
                    name: Some((*name).to_owned()),
                    value: Some((*value).to_owned()),
                })
                .collect(),
            ..Metric::default()
        }
    }

    fn counter(name: &str, labels: &[(&str, &str)], value: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.to_owned()),
            metric: vec![Metric {
                counter: Some(Counter {
                    value: Some(value),
                    ..Counter::default()
                }),
                ..metric(labels)
            }],
            ..MetricFamily::default()
        }
    }

    #[test]
    fn response_classes_of_a_route_are_read_from_their_labels() {
        let family = counter(
            "vhost.route.upstream_rq_xx",
            &[
                ("envoy.response_code_class", "5"),
                ("envoy.virtual_host", "main"),
                ("envoy.route", "api"),
            ],
            100.0,
        );
        let readings = absorb(&[family]);
        assert_eq!(
            readings,
            vec![(
                StatKey {
                    scope: StatScope::Route,
                    name: "main".to_owned(),
                    detail: "api".to_owned()
                },
                Reading::Counter(CounterField::Responses(3), 100)
            )]
        );
    }

    #[test]
    fn the_control_planes_cluster_the_admin_interface_and_idle_counters_are_left_out() {
        let families = [
            counter(
                "cluster.upstream_rq_total",
                &[("envoy.cluster_name", CONTROL_PLANE_CLUSTER)],
                4.0,
            ),
            counter(
                "http.downstream_rq_total",
                &[("envoy.http_conn_manager_prefix", "admin")],
                4.0,
            ),
            counter(
                "cluster.upstream_rq_total",
                &[("envoy.cluster_name", "backend")],
                0.0,
            ),
            counter("server.uptime", &[], 4.0),
        ];
        assert!(absorb(&families).is_empty());
    }

    #[test]
    fn a_name_that_cannot_be_stored_and_an_absurd_count_are_not_taken() {
        let families = [
            counter(
                "cluster.upstream_rq_total",
                &[("envoy.cluster_name", "bad\u{0}name")],
                1.0,
            ),
            counter(
                "cluster.upstream_rq_total",
                &[("envoy.cluster_name", &"x".repeat(300))],
                1.0,
            ),
            counter(
                "cluster.upstream_rq_total",
                &[("envoy.cluster_name", "backend")],
                1.0e300,
            ),
        ];
        let readings = absorb(&families);
        assert_eq!(readings.len(), 1);
        assert_eq!(
            readings[0].1,
            Reading::Counter(CounterField::Requests, 1_000_000_000_000)
        );
    }

    #[test]
    fn a_listener_is_named_by_its_address_or_its_own_prefix() {
        let families = [
            counter(
                "listener.downstream_cx_total",
                &[("envoy.listener_address", "127.0.0.1_8080")],
                2.0,
            ),
            counter("listener.public.downstream_cx_total", &[], 3.0),
            counter("listener.worker_downstream_cx_total", &[], 3.0),
        ];
        let names: Vec<String> = absorb(&families)
            .into_iter()
            .map(|(key, _)| key.name)
            .collect();
        assert_eq!(names, ["127.0.0.1_8080", "public"]);
    }

    #[test]
    fn histograms_and_gauges_are_kept_with_their_values() {
        let histogram = MetricFamily {
            name: Some("cluster.upstream_rq_time".to_owned()),
            metric: vec![Metric {
                histogram: Some(Histogram {
                    sample_count: Some(3),
                    sample_sum: Some(12.0),
                    bucket: vec![Bucket {
                        cumulative_count: Some(3),
                        upper_bound: Some(5.0),
                        ..Bucket::default()
                    }],
                    ..Histogram::default()
                }),
                ..metric(&[("envoy.cluster_name", "backend")])
            }],
            ..MetricFamily::default()
        };
        let gauge = MetricFamily {
            name: Some("cluster.membership_healthy".to_owned()),
            metric: vec![Metric {
                gauge: Some(Gauge { value: Some(2.0) }),
                ..metric(&[("envoy.cluster_name", "backend")])
            }],
            ..MetricFamily::default()
        };
        let readings = absorb(&[histogram, gauge]);
        assert!(matches!(readings[0].1, Reading::Latency { count: 3, .. }));
        assert!(matches!(
            readings[1].1,
            Reading::Gauge {
                field: GaugeField::EndpointsHealthy,
                value: 2,
                ..
            }
        ));
    }
}

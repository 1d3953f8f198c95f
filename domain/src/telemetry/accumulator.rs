//! One replica's statistics of the current time buckets, gathered in memory from every proxy's
//! stream and handed out once each bucket has ended, to be written as one row per series.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use super::{CounterField, GaugeField, StatKey, StatRow, StatValues};

/// One statistic of one report, already named by its series.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// A counter's increase since the proxy's last report.
    Counter(CounterField, i64),
    /// A gauge's current value; `part` tells apart gauges that add up into one field (the four
    /// circuit breakers).
    Gauge {
        /// The field.
        field: GaugeField,
        /// Which of the field's parts.
        part: u8,
        /// The value.
        value: i64,
    },
    /// The latency samples since the proxy's last report: (upper bound in ms, cumulative count)
    /// per bucket, with their count and sum.
    Latency {
        /// The buckets.
        buckets: Vec<(f64, u64)>,
        /// How many samples.
        count: u64,
        /// Their sum in milliseconds.
        sum_ms: f64,
    },
}

/// Where a series' bucket is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    tenant_id: Uuid,
    group: Arc<str>,
    key: StatKey,
    start: i64,
}

#[derive(Debug, Default)]
struct Open {
    seconds: i64,
    values: StatValues,
    /// Each proxy's latest value of each gauge part.
    gauges: HashMap<(Arc<str>, GaugeFieldKey, u8), i64>,
    proxies: HashSet<Arc<str>>,
}

/// [`GaugeField`] as a map key.
type GaugeFieldKey = u8;

fn gauge_key(field: GaugeField) -> GaugeFieldKey {
    match field {
        GaugeField::ConnectionsActive => 0,
        GaugeField::CircuitBreakersOpen => 1,
        GaugeField::EndpointsHealthy => 2,
        GaugeField::EndpointsTotal => 3,
    }
}

fn gauge_field(key: GaugeFieldKey) -> GaugeField {
    match key {
        0 => GaugeField::ConnectionsActive,
        1 => GaugeField::CircuitBreakersOpen,
        2 => GaugeField::EndpointsHealthy,
        _ => GaugeField::EndpointsTotal,
    }
}

/// The statistics of the buckets not yet ended.
#[derive(Debug)]
pub struct Accumulator {
    seconds: i64,
    open: HashMap<Slot, Open>,
}

impl Accumulator {
    /// Gathers into buckets of `seconds` (at least 1).
    #[must_use]
    pub fn new(seconds: u32) -> Self {
        Self {
            seconds: i64::from(seconds.max(1)),
            open: HashMap::new(),
        }
    }

    /// Buckets from now on are `seconds` wide (those open keep their width).
    pub fn set_width(&mut self, seconds: u32) {
        self.seconds = i64::from(seconds.max(1));
    }

    /// How many series' buckets are open.
    #[must_use]
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether nothing is open.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Adds what proxy `proxy` of `group` reported at `at`.
    pub fn add(
        &mut self,
        tenant_id: Uuid,
        group: &Arc<str>,
        proxy: &Arc<str>,
        at: DateTime<Utc>,
        readings: impl IntoIterator<Item = (StatKey, Reading)>,
    ) {
        let start = at.timestamp().div_euclid(self.seconds) * self.seconds;
        for (key, reading) in readings {
            let slot = Slot {
                tenant_id,
                group: group.clone(),
                key,
                start,
            };
            let open = self.open.entry(slot).or_insert_with(|| Open {
                seconds: self.seconds,
                ..Open::default()
            });
            if !open.proxies.contains(proxy) {
                open.proxies.insert(proxy.clone());
            }
            match reading {
                Reading::Counter(field, value) => open.values.count(field, value.max(0)),
                Reading::Gauge { field, part, value } => {
                    open.gauges
                        .insert((proxy.clone(), gauge_key(field), part), value.max(0));
                }
                Reading::Latency {
                    buckets,
                    count,
                    sum_ms,
                } => open.values.latency.add_cumulative(&buckets, count, sum_ms),
            }
        }
    }

    /// The buckets that ended by `now`, taken out.
    pub fn take_ended(&mut self, now: DateTime<Utc>) -> Vec<StatRow> {
        let now = now.timestamp();
        let ended: Vec<Slot> = self
            .open
            .iter()
            .filter(|(slot, open)| slot.start + open.seconds <= now)
            .map(|(slot, _)| slot.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|slot| {
                let open = self.open.remove(&slot)?;
                Some(row(slot, open))
            })
            .collect()
    }

    /// Every bucket, ended or not, taken out (when the replica stops).
    pub fn take_all(&mut self) -> Vec<StatRow> {
        self.open
            .drain()
            .map(|(slot, open)| row(slot, open))
            .collect()
    }
}

fn row(slot: Slot, mut open: Open) -> StatRow {
    for ((_, field, _), value) in &open.gauges {
        open.values.gauge(gauge_field(*field), *value);
    }
    StatRow {
        tenant_id: slot.tenant_id,
        group: slot.group.to_string(),
        key: slot.key,
        bucket: Utc
            .timestamp_opt(slot.start, 0)
            .single()
            .unwrap_or_default(),
        seconds: i32::try_from(open.seconds).unwrap_or(i32::MAX),
        proxies: i32::try_from(open.proxies.len()).unwrap_or(i32::MAX),
        values: open.values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::StatScope;

    fn key(name: &str) -> StatKey {
        StatKey {
            scope: StatScope::Cluster,
            name: name.to_owned(),
            detail: String::new(),
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn counters_of_every_report_in_a_bucket_add_up_and_the_bucket_is_handed_out_once_ended() {
        let mut acc = Accumulator::new(10);
        let (tenant, group) = (Uuid::nil(), Arc::from("edge"));
        for (proxy, second) in [("a", 0), ("a", 2), ("b", 5)] {
            acc.add(
                tenant,
                &group,
                &Arc::from(proxy),
                at(second),
                [(key("api"), Reading::Counter(CounterField::Responses(3), 5))],
            );
        }
        assert!(acc.take_ended(at(9)).is_empty());
        let rows = acc.take_ended(at(10));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].values.responses, [0, 0, 0, 15]);
        assert_eq!(rows[0].proxies, 2);
        assert_eq!(rows[0].bucket, at(0));
        assert!(acc.is_empty());
    }

    #[test]
    fn a_gauge_is_each_proxys_latest_value_summed_over_proxies() {
        let mut acc = Accumulator::new(10);
        let (tenant, group) = (Uuid::nil(), Arc::from("edge"));
        let healthy = |value| {
            [(
                key("api"),
                Reading::Gauge {
                    field: GaugeField::EndpointsHealthy,
                    part: 0,
                    value,
                },
            )]
        };
        acc.add(tenant, &group, &Arc::from("a"), at(1), healthy(3));
        acc.add(tenant, &group, &Arc::from("a"), at(2), healthy(2));
        acc.add(tenant, &group, &Arc::from("b"), at(3), healthy(4));
        let rows = acc.take_all();
        assert_eq!(rows[0].values.endpoints_healthy, Some(6));
        assert_eq!(rows[0].values.endpoints_total, None);
    }

    #[test]
    fn a_negative_counter_never_lowers_a_count() {
        let mut acc = Accumulator::new(10);
        acc.add(
            Uuid::nil(),
            &Arc::from("edge"),
            &Arc::from("a"),
            at(0),
            [(key("api"), Reading::Counter(CounterField::Requests, -7))],
        );
        assert_eq!(acc.take_all()[0].values.requests, 0);
    }
}

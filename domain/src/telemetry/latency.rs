//! Request latency as a histogram of fixed buckets (Envoy's default bounds, in milliseconds), so
//! that histograms of proxies, replicas and buckets add up, and quantiles are read from the sum.

/// The upper bounds (ms) of the buckets: Envoy's default histogram buckets. A last bucket holds
/// what is above the highest bound.
pub const LATENCY_BOUNDS_MS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// How many buckets a histogram has: one per bound and one above them.
pub const LATENCY_SLOTS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Latency samples counted per bucket (not cumulative), with their count and sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    /// Samples per bucket: `slots[i]` holds those in `(bound[i-1], bound[i]]`, the last those
    /// above every bound.
    pub slots: [i64; LATENCY_SLOTS],
    /// How many samples.
    pub count: i64,
    /// Their sum, in milliseconds.
    pub sum_ms: f64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            slots: [0; LATENCY_SLOTS],
            count: 0,
            sum_ms: 0.0,
        }
    }
}

/// The bucket a sample at most `upper_ms` falls in: the first whose bound holds it.
fn slot_of(upper_ms: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|bound| upper_ms <= *bound * (1.0 + 1e-9))
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
impl Latency {
    /// Adds a histogram as Envoy sends it: `buckets` as (upper bound in ms, cumulative count), in
    /// increasing order, with the interval's sample `count` and `sum_ms`. Buckets of other bounds
    /// than the default land in the first default bucket that holds them.
    pub fn add_cumulative(&mut self, buckets: &[(f64, u64)], count: u64, sum_ms: f64) {
        let mut below = 0_u64;
        for &(upper, cumulative) in buckets {
            let here = cumulative.saturating_sub(below);
            below = below.max(cumulative);
            if here > 0 {
                let slot = &mut self.slots[slot_of(upper)];
                *slot = slot.saturating_add(i64::try_from(here).unwrap_or(i64::MAX));
            }
        }
        let above = count.saturating_sub(below);
        let last = &mut self.slots[LATENCY_SLOTS - 1];
        *last = last.saturating_add(i64::try_from(above).unwrap_or(i64::MAX));
        self.count = self
            .count
            .saturating_add(i64::try_from(count.max(below)).unwrap_or(i64::MAX));
        if sum_ms.is_finite() && sum_ms >= 0.0 {
            self.sum_ms += sum_ms;
        }
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        for (mine, theirs) in self.slots.iter_mut().zip(other.slots) {
            *mine = mine.saturating_add(theirs);
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_ms += other.sum_ms;
    }

    /// The `q` quantile (0 to 1) in milliseconds, interpolated within the bucket that holds it
    /// (so it always lies in that bucket); the highest bound when it lies above them; `None`
    /// without samples.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self
            .slots
            .iter()
            .fold(0_i64, |sum, n| sum.saturating_add(*n));
        if total <= 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0_i64;
        for (index, count) in self.slots.iter().enumerate() {
            if *count > 0 && (below + count) as f64 >= rank {
                let Some(upper) = LATENCY_BOUNDS_MS.get(index) else {
                    return LATENCY_BOUNDS_MS.last().copied();
                };
                let lower = if index == 0 {
                    0.0
                } else {
                    LATENCY_BOUNDS_MS[index - 1]
                };
                let within = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += count;
        }
        LATENCY_BOUNDS_MS.last().copied()
    }

    /// The mean in milliseconds, `None` without samples.
    #[must_use]
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms / self.count as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envoy(counts: &[(f64, u64)]) -> Vec<(f64, u64)> {
        // Envoy sends every bound with its cumulative count.
        let mut cumulative = 0;
        LATENCY_BOUNDS_MS
            .iter()
            .map(|bound| {
                cumulative += counts
                    .iter()
                    .filter(|(at, _)| (*at - bound).abs() < f64::EPSILON)
                    .map(|(_, n)| n)
                    .sum::<u64>();
                (*bound, cumulative)
            })
            .collect()
    }

    #[test]
    fn cumulative_buckets_become_counts_per_bucket() {
        let mut latency = Latency::default();
        latency.add_cumulative(&envoy(&[(5.0, 90), (250.0, 10)]), 100, 1_500.0);
        assert_eq!(latency.count, 100);
        assert_eq!(latency.slots[2], 90);
        assert_eq!(latency.slots[7], 10);
        assert_eq!(latency.slots.iter().sum::<i64>(), 100);
    }

    #[test]
    fn samples_above_every_bound_are_kept_in_the_last_bucket() {
        let mut latency = Latency::default();
        latency.add_cumulative(&envoy(&[(1.0, 3)]), 5, 1.0);
        assert_eq!(latency.slots[LATENCY_SLOTS - 1], 2);
        assert_eq!(latency.quantile(1.0), Some(3_600_000.0));
    }

    #[test]
    fn a_quantile_lies_in_the_bucket_that_holds_it() {
        let mut latency = Latency::default();
        latency.add_cumulative(&envoy(&[(5.0, 95), (250.0, 5)]), 100, 0.0);
        let p50 = latency.quantile(0.5).unwrap();
        assert!(p50 > 1.0 && p50 <= 5.0, "{p50}");
        let p99 = latency.quantile(0.99).unwrap();
        assert!(p99 > 100.0 && p99 <= 250.0, "{p99}");
        assert_eq!(Latency::default().quantile(0.99), None);
    }

    #[test]
    fn merged_histograms_add_their_samples() {
        let mut one = Latency::default();
        one.add_cumulative(&envoy(&[(5.0, 10)]), 10, 20.0);
        let mut two = Latency::default();
        two.add_cumulative(&envoy(&[(50.0, 10)]), 10, 300.0);
        one.merge(&two);
        assert_eq!(one.count, 20);
        assert_eq!(one.mean(), Some(16.0));
        assert!(one.quantile(0.9).unwrap() > 25.0);
    }

    #[test]
    fn odd_bounds_land_in_the_default_bucket_that_holds_them() {
        let mut latency = Latency::default();
        latency.add_cumulative(&[(3.0, 4), (7.0, 6)], 6, 20.0);
        assert_eq!(latency.slots[2], 4);
        assert_eq!(latency.slots[3], 2);
    }
}

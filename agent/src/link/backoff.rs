//! The waits between connection attempts.

use std::time::Duration;

/// Exponential backoff with jitter: each wait is between half and all of the current step.
pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(super) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            step: initial,
        }
    }

    pub(super) fn next(&mut self) -> Duration {
        let wait = jittered(self.step);
        self.step = (self.step * 2).min(self.max);
        wait
    }

    pub(super) fn longest(&mut self) -> Duration {
        self.step = self.max;
        jittered(self.max)
    }

    pub(super) fn reset(&mut self) {
        self.step = self.initial;
    }
}

fn jittered(step: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() & u128::from(u32::MAX);
    let fraction = f64::from(u32::try_from(random).unwrap_or(0)) / f64::from(u32::MAX);
    step.mul_f64(0.5 + fraction / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_maximum_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..4).map(|_| backoff.next()).collect();
        for (wait, step) in waits.iter().zip([100, 200, 400, 400]) {
            assert!(
                *wait >= Duration::from_millis(step / 2) && *wait <= Duration::from_millis(step),
                "{waits:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(100));
        assert!(backoff.longest() >= Duration::from_millis(200));
    }
}

//! Capped exponential backoff with jitter for reconnect attempts (sans-IO).

use std::time::Duration;

/// Delay before the next connection attempt.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// Failed attempts since the last success.
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// After a successful handshake: the next failure waits about `min` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failed attempts since the last success.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay after one more failure. `jitter` in `[0, 1]` picks a point in the upper half
    /// of the window ("equal jitter"), so instances that lost the server together spread out
    /// without ever retrying faster than half the nominal delay, nor sooner than `min`.
    pub(crate) fn next_delay(&mut self, jitter: f64) -> Duration {
        let nominal = self
            .min
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = nominal / 2;
        (half + half.mul_f64(jitter.clamp(0.0, 1.0))).max(self.min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(500 * MS, 30_000 * MS);
        let delays: Vec<_> = (0..9).map(|_| b.next_delay(1.0).as_millis()).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.failures(), 9);
    }

    #[test]
    fn jitter_stays_in_the_upper_half_and_above_min() {
        let mut b = Backoff::new(500 * MS, 30_000 * MS);
        assert_eq!(b.next_delay(0.0), 500 * MS, "never below min");
        assert_eq!(b.next_delay(0.0), 500 * MS);
        assert_eq!(b.next_delay(0.5), 1500 * MS);
        for _ in 0..10 {
            b.next_delay(1.0);
        }
        for jitter in [0.0, 0.3, 1.0] {
            let d = b.next_delay(jitter);
            assert!(d >= 15_000 * MS && d <= 30_000 * MS);
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(500 * MS, 30_000 * MS);
        for _ in 0..5 {
            b.next_delay(1.0);
        }
        b.reset();
        assert_eq!(b.next_delay(1.0), 500 * MS);
    }
}

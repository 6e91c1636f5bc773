//! Reconnect pacing, shared by the native and the browser driver:
//! exponential backoff with jitter, so a fleet of peers that lost the same
//! relay does not come back in lockstep. Sans-IO: the caller supplies the
//! randomness and does the waiting.

use std::time::Duration;

/// Exponential backoff: `first`, doubling per failed attempt, capped at
/// `max`, each delay spread by ±20 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// A backoff that starts at `first` and never waits longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            failures: 0,
        }
    }

    /// Counts a failed attempt and returns how long to wait before the next.
    /// `jitter` is a random number in `[0, 1)`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let doublings = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let base = self.first.saturating_mul(1 << doublings).min(self.max);
        let spread = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        base.mul_f64(spread).min(self.max)
    }

    /// Failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts again from `first` (after a successful connection).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_success() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (0..6)
            .map(|_| backoff.next_delay(0.5).as_millis())
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.failures(), 6);
        backoff.reset();
        assert_eq!(backoff.next_delay(0.5), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_each_delay_by_a_fifth_either_way_but_never_past_the_cap() {
        let mut low = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut high = low.clone();
        assert_eq!(low.next_delay(0.0), Duration::from_millis(80));
        assert_eq!(high.next_delay(1.0), Duration::from_millis(120));
        let mut capped = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(capped.next_delay(1.0), Duration::from_secs(1));
    }

    #[test]
    fn a_long_outage_does_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..1000 {
            assert!(backoff.next_delay(0.99) <= Duration::from_secs(5));
        }
    }
}

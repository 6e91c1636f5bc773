//! Reconnect pacing, shared by the native and the browser driver: one
//! [`ReconnectPolicy`] says when a silent relay counts as gone and how
//! quickly to come back, and its [`Backoff`] spreads the attempts with
//! jitter, so a fleet of peers that lost the same relay does not come back
//! in lockstep. Sans-IO: the caller supplies the randomness and does the
//! waiting.

use std::time::Duration;

/// How a peer notices a dead relay and reconnects, the same for the native
/// and the browser peer. A crashed relay sends nothing, not even a close,
/// so silence is the only sign: the defaults notice it within 2 s and come
/// back after 250 ms, waiting at most 5 s between failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The first wait before reconnecting after a drop or a failed attempt;
    /// it doubles (with jitter) on each further failed attempt.
    pub first_retry: Duration,
    /// The longest wait between attempts (never shorter than `first_retry`).
    pub max_retry: Duration,
    /// A ping goes out after this long without hearing from the relay.
    pub keepalive: Duration,
    /// The relay counts as gone (and the peer reconnects, elsewhere if need
    /// be) after this long without hearing from it, pings unanswered.
    pub silence_timeout: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            first_retry: Duration::from_millis(250),
            max_retry: Duration::from_secs(5),
            keepalive: Duration::from_millis(500),
            silence_timeout: Duration::from_secs(2),
        }
    }
}

impl ReconnectPolicy {
    /// A fresh backoff pacing attempts by this policy.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.first_retry, self.max_retry.max(self.first_retry))
    }
}

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
    fn a_policy_backs_off_from_its_first_retry_to_its_max() {
        let policy = ReconnectPolicy::default();
        let mut backoff = policy.backoff();
        assert_eq!(backoff.next_delay(0.5), Duration::from_millis(250));
        for _ in 0..10 {
            backoff.next_delay(0.5);
        }
        assert_eq!(backoff.next_delay(0.5), Duration::from_secs(5));
        let slow = ReconnectPolicy {
            first_retry: Duration::from_secs(8),
            ..policy
        };
        assert_eq!(slow.backoff().next_delay(0.5), Duration::from_secs(8));
    }

    #[test]
    fn a_long_outage_does_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..1000 {
            assert!(backoff.next_delay(0.99) <= Duration::from_secs(5));
        }
    }
}

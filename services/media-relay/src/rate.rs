//! A token bucket with the time passed in (sans-IO): `rate` tokens a second
//! up to `burst`, full at the start. The relay keeps one per peer for deltas,
//! bytes and commands.

use std::time::Instant;

/// A rate: so many a second, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained amount per second; 0 means unlimited.
    pub per_second: u64,
    /// The most that may be taken at once (at least `per_second` makes
    /// sense; 0 means the same as `per_second`).
    pub burst: u64,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate {
        per_second: 0,
        burst: 0,
    };
}

/// One bucket.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate`, or `None` when the rate is unlimited.
    pub(crate) fn new(rate: Rate, now: Instant) -> Option<Self> {
        if rate.per_second == 0 {
            return None;
        }
        let burst = if rate.burst == 0 {
            rate.per_second
        } else {
            rate.burst
        } as f64;
        Some(TokenBucket {
            per_second: rate.per_second as f64,
            burst,
            tokens: burst,
            last: now,
        })
    }

    /// Takes `amount` if the bucket holds it; false (and nothing taken) if not.
    pub(crate) fn take(&mut self, amount: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        let amount = amount as f64;
        if amount > self.tokens {
            return false;
        }
        self.tokens -= amount;
        true
    }
}

/// Takes `amount` from `bucket`, or passes when there is no bucket.
pub(crate) fn take(bucket: &mut Option<TokenBucket>, amount: u64, now: Instant) -> bool {
    bucket.as_mut().is_none_or(|b| b.take(amount, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_full_burst_passes_and_one_more_does_not() {
        let start = Instant::now();
        let rate = Rate {
            per_second: 10,
            burst: 25,
        };
        let mut bucket = TokenBucket::new(rate, start).unwrap();
        for _ in 0..25 {
            assert!(bucket.take(1, start));
        }
        assert!(!bucket.take(1, start));
        // 100 ms later one token has come back, and only one.
        let later = start + Duration::from_millis(100);
        assert!(bucket.take(1, later));
        assert!(!bucket.take(1, later));
    }

    #[test]
    fn it_refills_to_the_burst_and_no_further() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(
            Rate {
                per_second: 1000,
                burst: 0,
            },
            start,
        )
        .unwrap();
        assert!(bucket.take(1000, start));
        assert!(!bucket.take(1, start));
        let much_later = start + Duration::from_secs(3600);
        assert!(bucket.take(1000, much_later));
        assert!(!bucket.take(1, much_later));
    }

    #[test]
    fn an_amount_over_the_burst_never_passes_and_takes_nothing() {
        let start = Instant::now();
        let rate = Rate {
            per_second: 100,
            burst: 100,
        };
        let mut bucket = TokenBucket::new(rate, start).unwrap();
        assert!(!bucket.take(101, start));
        assert!(bucket.take(100, start));
    }

    #[test]
    fn an_unlimited_rate_has_no_bucket() {
        let mut none = TokenBucket::new(Rate::UNLIMITED, Instant::now());
        assert!(none.is_none());
        assert!(take(&mut none, u64::MAX, Instant::now()));
    }
}

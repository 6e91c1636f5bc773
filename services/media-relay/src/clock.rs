//! Wall-clock time without reading a clock: the shard core is handed the
//! monotonic `now` with every input, and a [`WallClock`] anchored once (a
//! monotonic instant and the Unix time at that instant) turns it into the
//! Unix time deltas are stamped with. A test anchors it wherever it likes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A monotonic instant paired with the wall-clock time at that instant.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    unix: Duration,
}

impl WallClock {
    /// Anchors `at` to the wall-clock time `time`.
    pub fn new(at: Instant, time: SystemTime) -> Self {
        WallClock {
            at,
            unix: time.duration_since(UNIX_EPOCH).unwrap_or_default(),
        }
    }

    /// The wall-clock time at `now`.
    pub fn time(&self, now: Instant) -> SystemTime {
        UNIX_EPOCH + self.since_epoch(now)
    }

    /// Microseconds since the Unix epoch at `now`.
    pub fn unix_micros(&self, now: Instant) -> u64 {
        u64::try_from(self.since_epoch(now).as_micros()).unwrap_or(u64::MAX)
    }

    fn since_epoch(&self, now: Instant) -> Duration {
        match now.checked_duration_since(self.at) {
            Some(later) => self.unix + later,
            None => self.unix.saturating_sub(self.at.duration_since(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_monotonic_clock_from_its_anchor() {
        let at = Instant::now();
        let clock = WallClock::new(at, UNIX_EPOCH + Duration::from_secs(1_000));
        assert_eq!(clock.unix_micros(at), 1_000_000_000);
        assert_eq!(
            clock.unix_micros(at + Duration::from_millis(1)),
            1_000_001_000
        );
        assert_eq!(
            clock.time(at + Duration::from_secs(2)),
            UNIX_EPOCH + Duration::from_secs(1_002)
        );
    }
}

//! Wall-clock time as the wire and tokens carry it: whole seconds,
//! milliseconds or microseconds since the Unix epoch. The one clock every
//! native crate reads; a browser has no `SystemTime`, so the web worker
//! reads `Date.now()` instead and must not call these.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now (JWT `exp` and `iat`).
pub fn unix_secs() -> u64 {
    since_epoch(SystemTime::now()).as_secs()
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis() -> u64 {
    millis_since_epoch(SystemTime::now())
}

/// Microseconds since the Unix epoch, now (delta timestamps).
pub fn unix_micros() -> u64 {
    u64::try_from(since_epoch(SystemTime::now()).as_micros()).unwrap_or(u64::MAX)
}

/// `time` in milliseconds since the Unix epoch: 0 before it, saturating
/// far after it.
pub fn millis_since_epoch(time: SystemTime) -> u64 {
    u64::try_from(since_epoch(time).as_millis()).unwrap_or(u64::MAX)
}

/// The time `millis` milliseconds after the Unix epoch; `None` past what
/// `SystemTime` holds.
pub fn from_unix_millis(millis: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

/// How long after the epoch `time` is; zero for a time before it.
fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_agree_and_round_trip() {
        let (secs, millis, micros) = (unix_secs(), unix_millis(), unix_micros());
        assert!(secs > 1_600_000_000);
        assert!(millis / 1000 >= secs && millis / 1000 - secs <= 1);
        assert!(micros / 1000 >= millis && micros / 1000 - millis <= 1000);
        let time = from_unix_millis(1_700_000_000_123).unwrap();
        assert_eq!(millis_since_epoch(time), 1_700_000_000_123);
    }

    #[test]
    fn times_before_the_epoch_are_zero() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(millis_since_epoch(before), 0);
    }
}

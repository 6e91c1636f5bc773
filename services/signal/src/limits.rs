//! Request rate limits on the `/v1` API, per client address and per token
//! (GCRA through `governor`). A request over a limit is a 429 whose
//! `Retry-After` says when the next one would pass.
//!
//! IPv6 clients are counted per /64, the block one subscriber usually has.
//! The tables forget a key once its bucket is full again; they are swept
//! when they pass [`SWEEP_AT`] keys, and then only again once they have
//! doubled, so a table holds about as many keys as were active within one
//! burst period and a sweep costs O(1) per request however many are.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Key count above which a table first drops the keys it no longer needs.
pub(crate) const SWEEP_AT: usize = 65_536;

/// One rate: requests per second, and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second; 0 turns the limit off.
    pub per_second: u32,
    /// Requests allowed in one burst (at least 1 when the limit is on).
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const OFF: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };

    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

/// One keyed limiter.
struct Table<K: Clone + std::hash::Hash + Eq> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
    /// Key count at which the next sweep runs.
    sweep_at: AtomicUsize,
}

impl<K: Clone + std::hash::Hash + Eq> Table<K> {
    fn new(limit: RateLimit) -> Option<Self> {
        Some(Table {
            limiter: DefaultKeyedRateLimiter::hashmap(limit.quota()?),
            clock: DefaultClock::default(),
            sweep_at: AtomicUsize::new(SWEEP_AT),
        })
    }

    /// `Err(wait)` when `key` is over its rate.
    fn check(&self, key: &K) -> Result<(), Duration> {
        if self.limiter.len() > self.sweep_at.load(Ordering::Relaxed) {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            let next = (self.limiter.len() * 2).max(SWEEP_AT);
            self.sweep_at.store(next, Ordering::Relaxed);
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// The per-address and per-token limits of one signal instance.
pub(crate) struct RateLimits {
    per_address: Option<Table<u128>>,
    per_token: Option<Table<u64>>,
    hasher: RandomState,
}

impl RateLimits {
    /// Limits at these rates ([`RateLimit::OFF`] for none).
    pub(crate) fn new(per_address: RateLimit, per_token: RateLimit) -> Self {
        RateLimits {
            per_address: Table::new(per_address),
            per_token: Table::new(per_token),
            hasher: RandomState::new(),
        }
    }

    /// Counts a request from `address`; `Err(wait)` when over the limit.
    pub(crate) fn check_address(&self, address: IpAddr) -> Result<(), Duration> {
        match &self.per_address {
            Some(table) => table.check(&address_key(address)),
            None => Ok(()),
        }
    }

    /// Counts a request made with `token`; `Err(wait)` when over the limit.
    pub(crate) fn check_token(&self, token: &str) -> Result<(), Duration> {
        match &self.per_token {
            // Hashed with a per-process key: the table holds no tokens.
            Some(table) => table.check(&self.hasher.hash_one(token)),
            None => Ok(()),
        }
    }
}

/// IPv4 addresses as themselves (mapped into IPv6), IPv6 by their /64.
fn address_key(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6) & !((1u128 << 64) - 1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn a_burst_passes_exactly_and_the_next_request_waits() {
        let limits = RateLimits::new(
            RateLimit {
                per_second: 1,
                burst: 3,
            },
            RateLimit::OFF,
        );
        let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        for _ in 0..3 {
            assert_eq!(limits.check_address(client), Ok(()));
        }
        let wait = limits.check_address(client).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(limits.check_address(other), Ok(()));
        assert_eq!(limits.check_token("anything"), Ok(()));
    }

    #[test]
    fn tokens_are_limited_each_on_their_own() {
        let limits = RateLimits::new(
            RateLimit::OFF,
            RateLimit {
                per_second: 1,
                burst: 1,
            },
        );
        assert_eq!(limits.check_token("a"), Ok(()));
        assert!(limits.check_token("a").is_err());
        assert_eq!(limits.check_token("b"), Ok(()));
    }

    #[test]
    fn a_table_of_active_keys_is_swept_again_only_once_it_has_doubled() {
        let table = Table::<u128>::new(RateLimit {
            per_second: 1,
            burst: 1,
        })
        .unwrap();
        for key in 0..=SWEEP_AT as u128 {
            assert_eq!(table.check(&key), Ok(()));
        }
        // The sweep on the next request keeps every (recently used) key.
        assert_eq!(table.check(&u128::MAX), Ok(()));
        let next = table.sweep_at.load(Ordering::Relaxed);
        assert!(next >= 2 * SWEEP_AT, "next sweep at {next}");
        // Each key is still limited: nothing was forgotten too early.
        assert!(table.check(&0).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a.into()), address_key(b.into()));
        assert_ne!(address_key(a.into()), address_key(c.into()));
        let v4 = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(
            address_key(v4.into()),
            address_key(v4.to_ipv6_mapped().into())
        );
        assert_ne!(
            address_key(v4.into()),
            address_key(Ipv4Addr::new(10, 0, 0, 2).into())
        );
    }
}

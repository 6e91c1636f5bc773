//! A min-heap of peer deadlines, so a shard wakes only the peers whose str0m
//! timeout is due instead of feeding every `Rtc` a timeout each loop.
//!
//! Entries are never removed early: the owner remembers each peer's current
//! deadline and ignores popped entries that no longer match it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Deadlines keyed by peer.
pub(crate) struct Timers<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord + Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> Timers<K> {
    /// Schedules `key` at `at`.
    pub(crate) fn schedule(&mut self, key: K, at: Instant) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Pops one entry due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(K, Instant)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse((at, k))| (k, at)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let now = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(2u64, now + Duration::from_millis(20));
        timers.schedule(1u64, now + Duration::from_millis(10));
        assert_eq!(timers.pop_due(now), None);
        assert_eq!(
            timers.next_deadline(),
            Some(now + Duration::from_millis(10))
        );
        let later = now + Duration::from_millis(30);
        assert_eq!(timers.pop_due(later).map(|(k, _)| k), Some(1));
        assert_eq!(timers.pop_due(later).map(|(k, _)| k), Some(2));
        assert_eq!(timers.pop_due(later), None);
    }
}

//! The delta path out: delivery from the peer's cursor into the session
//! log, within the send window; slow consumers warned, then dropped.

use std::time::{Duration, Instant};

use deltamesh_proto::command;
use deltamesh_proto::frame::FRAME_HEADER_LEN;
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::security::SECURITY_HEADER_LEN;

use super::{Peer, Write, write};
use crate::log::LogError;
use crate::shared::Shared;
use crate::store::StoredDelta;

/// Deltas read from the log per batch when catching a peer up.
const READ_BATCH: usize = 64;
/// How often a peer's queue depth is sampled at most.
const QUEUE_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The smallest relayed message: security header plus frame header.
const MIN_RELAYED_LEN: usize = SECURITY_HEADER_LEN + FRAME_HEADER_LEN;

impl Peer {
    pub(super) fn deliver(&mut self, shared: &Shared, now: Instant) {
        let head = shared.log.head(&self.session);
        if !self.grants.subscribe {
            // Nothing to deliver: the peer is never behind.
            self.cursor = head + 1;
            return;
        }
        let lag = head.saturating_sub(self.cursor.saturating_sub(1));
        if now >= self.next_depth_sample {
            // At most every QUEUE_SAMPLE_EVERY per peer: the histogram is
            // shared by every shard.
            self.next_depth_sample = now + QUEUE_SAMPLE_EVERY;
            shared.metrics.peer_queue_depth.observe(lag as f64);
        }
        self.best_lag = self.best_lag.min(lag);
        // How far the peer has fallen behind its best since it joined.
        let fallen = lag - self.best_lag;
        if fallen > shared.config.slow_consumer_limit {
            self.commands
                .push_back(command::encode(Body::Error(pb::Error {
                    code: pb::ErrorCode::SlowConsumer.into(),
                    detail: format!("{lag} deltas behind; disconnecting"),
                })));
            let _ = write(&mut self.rtc, self.channels[0], &self.commands[0]);
            return self.close("slow consumer");
        }
        if fallen > shared.config.slow_consumer_warn && !self.slow_warned {
            self.slow_warned = true;
            let queued = u32::try_from(lag).unwrap_or(u32::MAX);
            let limit = u32::try_from(shared.config.slow_consumer_limit).unwrap_or(u32::MAX);
            self.commands
                .push_back(command::encode(Body::SlowConsumer(pb::SlowConsumer {
                    queued,
                    limit,
                })));
        } else if fallen <= shared.config.slow_consumer_warn / 2 {
            self.slow_warned = false;
        }
        let window = shared.config.send_window;
        // Measured once: every delta written below is counted in locally.
        let mut in_flight = self.in_flight();
        let mut batch: Vec<StoredDelta> = Vec::new();
        let mut relayed = Vec::new();
        while self.cursor <= head {
            if in_flight >= window {
                self.blocked = true;
                return;
            }
            // Read no more than the window can take (at least one).
            let room = (window - in_flight) / MIN_RELAYED_LEN + 1;
            batch.clear();
            if let Err(error) =
                shared
                    .log
                    .read(&self.session, self.cursor, room.min(READ_BATCH), &mut batch)
            {
                let code = match error {
                    LogError::Evicted { .. } => pb::ErrorCode::HistoryLost,
                    _ => pb::ErrorCode::Internal,
                };
                return self.fail(code, format!("cannot deliver seq {}: {error}", self.cursor));
            }
            if batch.is_empty() {
                return;
            }
            for delta in &batch {
                let view = delta.view();
                if view.origin() == self.origin && !self.echo {
                    self.cursor += 1;
                    continue;
                }
                relayed.clear();
                view.write_relayed(&mut relayed);
                if in_flight > 0 && in_flight + relayed.len() > window {
                    self.blocked = true;
                    return;
                }
                match write(&mut self.rtc, self.channels[2], &relayed) {
                    Write::Done => {
                        self.cursor += 1;
                        in_flight += relayed.len();
                        self.last_progress = now;
                        shared.metrics.deltas_out.inc();
                        shared.metrics.bytes_out.inc_by(relayed.len() as u64);
                    }
                    Write::Full => {
                        self.blocked = true;
                        return;
                    }
                    Write::Closed => return,
                }
            }
        }
    }

    /// Disconnects the peer if it has had deltas waiting and taken none for
    /// the stall timeout.
    pub(crate) fn check_progress(&mut self, now: Instant, shared: &Shared) {
        if !self.welcomed || self.closing.is_some() || !self.grants.subscribe {
            return;
        }
        if self.cursor > shared.log.head(&self.session) {
            self.last_progress = now;
        } else if now.duration_since(self.last_progress) > shared.config.stall_timeout {
            let stalled = now.duration_since(self.last_progress);
            self.drop_slow_consumer(format!("took no delta for {stalled:?}"));
        }
    }

    /// Tells the peer why (best effort: it may not be reading) and closes it.
    fn drop_slow_consumer(&mut self, why: String) {
        self.fail(pb::ErrorCode::SlowConsumer, format!("slow consumer: {why}"));
    }
}

//! The delta path out: delivery from the peer's cursor into the session
//! log, within the send window; a relayed frame too long for one message
//! as fragments (PROTOCOL §6), several short ones per message with `batch`
//! in force (§7); slow consumers warned, then dropped.

use std::time::{Duration, Instant};

use deltamesh_proto::command;
use deltamesh_proto::fragment::{FRAGMENT_BODY, FRAGMENT_HEADER_LEN, FragmentHeader};
use deltamesh_proto::frame::FRAME_HEADER_LEN;
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::security::SECURITY_HEADER_LEN;

use deltamesh_proto::channel::Channel;

use super::Peer;
use super::link::Write;
use crate::log::LogError;
use crate::shared::Shared;
use crate::store::StoredDelta;

/// Deltas read from the log per batch when catching a peer up.
const READ_BATCH: usize = 64;
/// How often a peer's queue depth is sampled at most.
const QUEUE_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The smallest relayed message: security header plus frame header.
const MIN_RELAYED_LEN: usize = SECURITY_HEADER_LEN + FRAME_HEADER_LEN;

/// A relayed frame going out as fragments, one window at a time.
pub(crate) struct Outgoing {
    /// Its session seq.
    seq: u64,
    /// Its flags byte, read once so every fragment agrees.
    flags: u8,
    /// The relayed frame's length: security header and delta frame.
    len: usize,
    /// How much of it is written.
    offset: usize,
    /// The stored delta (its chunk stays alive while it goes out).
    delta: StoredDelta,
}

/// Relayed frames read from the log and not written yet.
struct Pending {
    /// The message they make (one frame, or several with `batch`).
    message: Vec<u8>,
    /// How many deltas it holds.
    deltas: u64,
    /// The seq after the last one it covers (skipped own deltas included).
    covered: u64,
}

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
            let _ = self.link.write(Channel::Command, &self.commands[0]);
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
        let max = shared.config.max_frame_size;
        // Measured once: every message written below is counted in locally.
        let mut in_flight = self.in_flight();
        let mut read: Vec<StoredDelta> = Vec::new();
        // Relayed frames not written yet, covering seqs [cursor, covered).
        let mut pending = Pending {
            message: Vec::new(),
            deltas: 0,
            covered: self.cursor,
        };
        loop {
            if self.outgoing.is_some() {
                if !self.write_fragments(&mut in_flight, shared, now) {
                    return;
                }
                pending.covered = self.cursor;
            }
            if pending.covered > head {
                break;
            }
            if in_flight + pending.message.len() >= window {
                self.blocked = true;
                break;
            }
            // Read no more than the window can take (at least one).
            let room = (window - in_flight - pending.message.len()) / MIN_RELAYED_LEN + 1;
            read.clear();
            if let Err(error) = shared.log.read(
                &self.session,
                pending.covered,
                room.min(READ_BATCH),
                &mut read,
            ) {
                let code = match error {
                    LogError::Evicted { .. } => pb::ErrorCode::HistoryLost,
                    _ => pb::ErrorCode::Internal,
                };
                let seq = pending.covered;
                return self.fail(code, format!("cannot deliver seq {seq}: {error}"));
            }
            if read.is_empty() {
                break;
            }
            for delta in read.drain(..) {
                let view = delta.view();
                if view.origin() == self.origin && !self.echo {
                    pending.covered += 1;
                    if pending.message.is_empty() {
                        self.cursor = pending.covered;
                    }
                    continue;
                }
                if view.frame_bytes().len() > max {
                    // Too long for one message: it goes as fragments
                    // (PROTOCOL §6), after what is already batched.
                    if !self.write_pending(&mut pending, &mut in_flight, shared, now) {
                        return;
                    }
                    let flags = view.flags().0;
                    let len = view.relayed_len();
                    self.outgoing = Some(Outgoing {
                        seq: pending.covered,
                        flags,
                        len,
                        offset: 0,
                        delta,
                    });
                    break;
                }
                let len = view.relayed_len();
                // With `batch`, several whole relayed frames share one
                // message of at most `max_frame_size` (PROTOCOL §7).
                let joins = self.batch && pending.message.len() + len <= max;
                if !pending.message.is_empty()
                    && !joins
                    && !self.write_pending(&mut pending, &mut in_flight, shared, now)
                {
                    return;
                }
                if in_flight + pending.message.len() > 0
                    && in_flight + pending.message.len() + len > window
                {
                    self.blocked = true;
                    self.write_pending(&mut pending, &mut in_flight, shared, now);
                    return;
                }
                view.write_relayed(&mut pending.message);
                pending.deltas += 1;
                pending.covered += 1;
                if !self.batch && !self.write_pending(&mut pending, &mut in_flight, shared, now) {
                    return;
                }
            }
        }
        self.write_pending(&mut pending, &mut in_flight, shared, now);
    }

    /// Writes the relayed frames gathered in `pending` as one message;
    /// false when the channel took nothing (they are read again later).
    fn write_pending(
        &mut self,
        pending: &mut Pending,
        in_flight: &mut usize,
        shared: &Shared,
        now: Instant,
    ) -> bool {
        if pending.message.is_empty() {
            self.cursor = pending.covered;
            return true;
        }
        let written = match self.link.write(Channel::Receive, &pending.message) {
            Write::Done => {
                self.cursor = pending.covered;
                *in_flight += pending.message.len();
                self.last_progress = now;
                shared.metrics.deltas_out.inc_by(pending.deltas);
                shared
                    .metrics
                    .bytes_out
                    .inc_by(pending.message.len() as u64);
                true
            }
            Write::Full => {
                self.blocked = true;
                false
            }
            Write::Closed => false,
        };
        pending.message.clear();
        pending.deltas = 0;
        pending.covered = self.cursor;
        written
    }

    /// Writes the fragments of the relayed frame part-way out while the
    /// window has room, each about [`FRAGMENT_BODY`] bytes so commands and
    /// other channels pass between them; true once the last one is written.
    fn write_fragments(&mut self, in_flight: &mut usize, shared: &Shared, now: Instant) -> bool {
        let window = shared.config.send_window;
        let body = shared
            .config
            .max_frame_size
            .saturating_sub(FRAGMENT_HEADER_LEN)
            .min(FRAGMENT_BODY);
        // The first fragment carries the whole relayed header.
        let first_body = body.max(MIN_RELAYED_LEN);
        let Some(out) = self.outgoing.as_mut() else {
            return true;
        };
        let mut message = Vec::with_capacity(FRAGMENT_HEADER_LEN + first_body);
        while out.offset < out.len {
            if *in_flight >= window {
                self.blocked = true;
                return false;
            }
            let take = if out.offset == 0 { first_body } else { body };
            let end = (out.offset + take).min(out.len);
            message.clear();
            FragmentHeader {
                total_len: u32::try_from(out.len).unwrap_or(u32::MAX),
                offset: u32::try_from(out.offset).unwrap_or(u32::MAX),
            }
            .encode_into(&mut message);
            out.delta
                .view()
                .write_relayed_range(out.flags, out.offset..end, &mut message);
            match self.link.write(Channel::Receive, &message) {
                Write::Done => {
                    out.offset = end;
                    *in_flight += message.len();
                    self.last_progress = now;
                    shared.metrics.bytes_out.inc_by(message.len() as u64);
                }
                Write::Full => {
                    self.blocked = true;
                    return false;
                }
                Write::Closed => return false,
            }
        }
        let seq = out.seq;
        self.outgoing = None;
        shared.metrics.deltas_out.inc();
        // A resume may have moved the cursor meanwhile; it stands then.
        if self.cursor == seq {
            self.cursor = seq + 1;
        }
        true
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

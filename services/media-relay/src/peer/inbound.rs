//! The delta path in: reassembly of fragments (PROTOCOL §6) and
//! delimiting of batches (§7), then for each frame rate limits, grants,
//! validation, sequencing checks, the log, and the verdict back to the
//! sender. A reassembled frame, and each frame of a batch, is judged
//! exactly as a frame in its own message.

use std::time::Instant;

use deltamesh_proto::batch::{Batch, BatchError};
use deltamesh_proto::fragment::{FRAGMENT_HEADER_LEN, FragmentHeader};
use deltamesh_proto::frame::FRAME_HEADER_LEN;
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::{DeltaFrame, FrameError};

use super::Peer;
use crate::log::{Acceptance, Appended, LogError};
use crate::rate;
use crate::reassembly::{Broken, Position, peek_fragment};
use crate::shared::Shared;
use crate::wake::LogAck;

impl Peer {
    /// One message on `send`: a fragment, a batch (with `batch` in force)
    /// or one frame.
    pub(super) fn on_send(&mut self, message: &[u8], shared: &Shared, now: Instant) {
        shared.metrics.bytes_in.inc_by(message.len() as u64);
        match self.reassembly.position(message) {
            Position::Skipped => return,
            Position::Continues => {
                self.continue_frame(message, shared, now);
                return self.flush_acks(shared);
            }
            Position::Interrupts => {
                if let Some(client_seq) = self.reassembly.abandon() {
                    self.reject(
                        client_seq,
                        pb::RejectReason::Fragment,
                        "another message came before the frame's last fragment".into(),
                        shared,
                    );
                }
            }
            Position::Fresh => {}
        }
        if FragmentHeader::is_fragment(message) {
            self.first_fragment(message, shared, now);
        } else if self.batch && message.len() <= shared.config.max_frame_size {
            for item in Batch::deltas(message) {
                match item {
                    Ok(frame) => self.on_frame(frame, shared, now),
                    Err(error) => self.undelimited(error, shared, now),
                }
            }
        } else {
            self.on_frame(message, shared, now);
        }
        self.flush_acks(shared);
    }

    /// One whole frame, as if in its own message.
    fn on_frame(&mut self, bytes: &[u8], shared: &Shared, now: Instant) {
        let peeked = DeltaFrame::peek_client_seq(bytes);
        let client_seq = peeked.unwrap_or(0);
        // Every message counts against the rates, garbage included; the
        // rates are checked first so a flood costs no parsing.
        if !self.charge(bytes.len() as u64, peeked, shared, now)
            || !self.may_publish(peeked, shared)
        {
            return;
        }
        if bytes.len() > shared.config.max_frame_size {
            return self.too_large(bytes.len(), shared.config.max_frame_size, peeked, shared);
        }
        let frame = match DeltaFrame::parse(bytes) {
            Ok(frame) => frame,
            Err(error) => return self.refuse(peeked, &error, shared),
        };
        if !self.in_sequence(client_seq, shared) {
            return;
        }
        self.advance_client_seq(peeked);
        self.store(frame, shared, now);
    }

    /// The rest of a batch that cannot be delimited (PROTOCOL §7).
    fn undelimited(&mut self, error: BatchError, shared: &Shared, now: Instant) {
        let (peeked, left, reason) = match error {
            BatchError::Truncated { left } => (None, left, pb::RejectReason::Truncated),
            BatchError::PastEnd {
                client_seq, left, ..
            } => (Some(client_seq), left, pb::RejectReason::LengthMismatch),
        };
        if !self.charge(left as u64, peeked, shared, now) {
            return;
        }
        self.advance_client_seq(peeked);
        self.reject(peeked.unwrap_or(0), reason, error.to_string(), shared);
    }

    /// A fragment that starts something new: the first fragment of a frame,
    /// whose header is judged now (PROTOCOL §6), or a stray one.
    fn first_fragment(&mut self, message: &[u8], shared: &Shared, now: Instant) {
        let config = &shared.config;
        let fields = peek_fragment(message);
        let first = fields.filter(|f| f.offset == 0);
        // The client_seq is named only when the whole header arrived.
        let peeked = first
            .and_then(|_| message.get(FRAGMENT_HEADER_LEN..))
            .filter(|body| body.len() >= FRAME_HEADER_LEN)
            .and_then(DeltaFrame::peek_client_seq);
        let seen = message.len().saturating_sub(FRAGMENT_HEADER_LEN) as u64;
        let skip_rest = |peer: &mut Peer| {
            if let Some(f) = fields {
                peer.reassembly
                    .skip(f.total_len, u64::from(f.offset) + seen);
            }
        };
        // A frame's bytes count once, on its first fragment.
        let charged = match first {
            Some(f) if f.total_len as usize <= config.max_delta_size => u64::from(f.total_len),
            _ => message.len() as u64,
        };
        if !self.charge(charged, peeked, shared, now) {
            return skip_rest(self);
        }
        if message.len() > config.max_frame_size {
            skip_rest(self);
            return self.too_large(message.len(), config.max_frame_size, peeked, shared);
        }
        let (header, body) = match FragmentHeader::parse(message) {
            Ok(parsed) => parsed,
            Err(error) => {
                skip_rest(self);
                self.advance_client_seq(peeked);
                return self.reject(
                    peeked.unwrap_or(0),
                    pb::RejectReason::Fragment,
                    error.to_string(),
                    shared,
                );
            }
        };
        skip_rest(self);
        if header.offset != 0 {
            return self.reject(
                0,
                pb::RejectReason::Fragment,
                format!("a fragment at offset {} and no frame begun", header.offset),
                shared,
            );
        }
        if !self.may_publish(peeked, shared) {
            return;
        }
        if header.total_len as usize > config.max_delta_size {
            shared.metrics.limit_hit("delta_size");
            self.advance_client_seq(peeked);
            return self.reject(
                peeked.unwrap_or(0),
                pb::RejectReason::TooLarge,
                format!(
                    "frame is {} bytes; this relay takes at most {} in fragments",
                    header.total_len, config.max_delta_size
                ),
                shared,
            );
        }
        if body.len() < FRAME_HEADER_LEN {
            return self.reject(
                0,
                pb::RejectReason::Fragment,
                format!(
                    "the first fragment holds {} bytes, fewer than the {FRAME_HEADER_LEN}-byte frame header",
                    body.len()
                ),
                shared,
            );
        }
        let frame = match DeltaFrame::check_header(body) {
            Ok(frame) => frame,
            Err(error) => return self.refuse(peeked, &error, shared),
        };
        let client_seq = frame.client_seq();
        let length = FRAME_HEADER_LEN as u64 + u64::from(frame.payload_len());
        if u64::from(header.total_len) != length {
            self.advance_client_seq(peeked);
            return self.reject(
                client_seq,
                pb::RejectReason::LengthMismatch,
                format!(
                    "total_len {} but the header says a {length}-byte frame",
                    header.total_len
                ),
                shared,
            );
        }
        if !self.in_sequence(client_seq, shared) {
            return;
        }
        self.advance_client_seq(peeked);
        match self
            .reassembly
            .begin(header.total_len, client_seq, body, now)
        {
            Ok(Some(frame)) => self.reassembled(&frame, client_seq, shared, now),
            Ok(None) => {}
            Err(detail) => {
                shared.metrics.limit_hit("reassembly_memory");
                self.reject(client_seq, pb::RejectReason::Unavailable, detail, shared)
            }
        }
    }

    /// A fragment continuing the frame being reassembled.
    fn continue_frame(&mut self, message: &[u8], shared: &Shared, now: Instant) {
        match self
            .reassembly
            .push(message, shared.config.max_frame_size, now)
        {
            Ok(None) => {}
            Ok(Some(frame)) => {
                let client_seq = DeltaFrame::peek_client_seq(&frame).unwrap_or(0);
                self.reassembled(&frame, client_seq, shared, now);
            }
            Err(Broken {
                client_seq,
                reason,
                detail,
            }) => {
                if reason == pb::RejectReason::Unavailable {
                    shared.metrics.limit_hit("reassembly_memory");
                }
                self.reject(client_seq, reason, detail, shared)
            }
        }
    }

    /// A whole frame out of fragments: its header, client_seq, rates and
    /// grants were judged on the first; the rest is judged now.
    fn reassembled(&mut self, bytes: &[u8], client_seq: u64, shared: &Shared, now: Instant) {
        match DeltaFrame::parse(bytes) {
            Ok(frame) => self.store(frame, shared, now),
            Err(error) => self.reject(client_seq, (&error).into(), error.to_string(), shared),
        }
    }

    /// Drops a frame that is incomplete after the fragment timeout.
    pub(crate) fn check_fragments(&mut self, now: Instant, shared: &Shared) {
        if let Some(client_seq) = self.reassembly.stalled(now, shared.config.fragment_timeout) {
            self.reject(
                client_seq,
                pb::RejectReason::Fragment,
                "incomplete".into(),
                shared,
            );
        }
    }

    /// Takes one delta and `bytes` from the rate buckets; when over, the
    /// frame is rejected (using up its client_seq) and false.
    fn charge(&mut self, bytes: u64, peeked: Option<u64>, shared: &Shared, now: Instant) -> bool {
        let over = if !rate::take(&mut self.delta_budget, 1, now) {
            Some(("delta_rate", "deltas per second"))
        } else if !rate::take(&mut self.byte_budget, bytes, now) {
            Some(("byte_rate", "bytes per second"))
        } else {
            None
        };
        let Some((limit, what)) = over else {
            return true;
        };
        shared.metrics.limit_hit(limit);
        self.advance_client_seq(peeked);
        self.reject(
            peeked.unwrap_or(0),
            pb::RejectReason::Rate,
            format!("over this connection's limit of {what}; resend it later"),
            shared,
        );
        self.violated_rate(shared, now);
        false
    }

    /// Whether this connection may publish; rejects the frame if not.
    fn may_publish(&mut self, peeked: Option<u64>, shared: &Shared) -> bool {
        if self.grants.publish {
            return true;
        }
        self.advance_client_seq(peeked);
        self.reject(
            peeked.unwrap_or(0),
            pb::RejectReason::NotPermitted,
            "this connection's token does not grant publish".into(),
            shared,
        );
        false
    }

    fn too_large(&mut self, len: usize, max: usize, peeked: Option<u64>, shared: &Shared) {
        shared.metrics.limit_hit("frame_size");
        self.advance_client_seq(peeked);
        self.reject(
            peeked.unwrap_or(0),
            pb::RejectReason::TooLarge,
            format!("message is {len} bytes; this relay accepts at most {max}"),
            shared,
        );
    }

    /// Rejects a frame that breaks a rule of PROTOCOL §3.
    fn refuse(&mut self, peeked: Option<u64>, error: &FrameError, shared: &Shared) {
        self.advance_client_seq(peeked);
        self.reject(peeked.unwrap_or(0), error.into(), error.to_string(), shared);
    }

    /// Whether `client_seq` is not ahead of the next expected one; rejects
    /// the frame if it is (a gap uses nothing up).
    fn in_sequence(&mut self, client_seq: u64, shared: &Shared) -> bool {
        if client_seq <= self.next_client_seq {
            return true;
        }
        self.reject(
            client_seq,
            pb::RejectReason::SequenceGap,
            format!("expected client_seq {}", self.next_client_seq),
            shared,
        );
        false
    }

    /// Appends a validated frame to the log and answers with its verdict.
    fn store(&mut self, frame: DeltaFrame<'_>, shared: &Shared, now: Instant) {
        let client_seq = frame.client_seq();
        self.timeline.first_delta(client_seq);
        let by = Acceptance {
            origin: self.origin,
            validator: shared.config.relay_id,
            validated_at_us: shared.clock.unix_micros(now),
            signer: shared.config.signer.as_deref(),
        };
        match shared.log.append(&self.session, by, frame, &self.ack_to) {
            Ok(Appended::Stored(seq) | Appended::Duplicate(seq)) => {
                shared.metrics.deltas_in.inc();
                self.pending_acks.push(pb::Ack { client_seq, seq });
            }
            Ok(Appended::Pending) => {}
            Err(LogError::StaleResend { .. }) => self.reject(
                client_seq,
                pb::RejectReason::SequenceGap,
                "behind the frames already stored and not a known resend; send it with a new client_seq".into(),
                shared,
            ),
            Err(error) => self.reject(
                client_seq,
                pb::RejectReason::Unavailable,
                error.to_string(),
                shared,
            ),
        }
    }

    /// Sends the acks that are ready: one `Acks` with `batch` in force and
    /// more than one ready (PROTOCOL §7), else single `Ack`s.
    pub(crate) fn flush_acks(&mut self, shared: &Shared) {
        if self.pending_acks.is_empty() {
            return;
        }
        let mut acks = std::mem::take(&mut self.pending_acks);
        if self.batch && acks.len() > 1 {
            acks.sort_unstable_by_key(|ack| ack.client_seq);
            self.send_command(Body::Acks(pb::Acks { acks }), shared);
        } else {
            for ack in acks {
                self.send_command(Body::Ack(ack), shared);
            }
        }
    }

    /// Takes the log's late verdict on one of this connection's deltas; an
    /// ack goes with the others ready by the next [`flush_acks`](Self::flush_acks).
    pub(crate) fn on_log_ack(&mut self, ack: LogAck, shared: &Shared) {
        match ack.outcome {
            Ok(seq) => {
                shared.metrics.deltas_in.inc();
                self.pending_acks.push(pb::Ack {
                    client_seq: ack.client_seq,
                    seq,
                });
            }
            Err(detail) => self.reject(
                ack.client_seq,
                pb::RejectReason::Unavailable,
                detail,
                shared,
            ),
        }
    }

    fn advance_client_seq(&mut self, peeked: Option<u64>) {
        if let Some(seq) = peeked
            && seq == self.next_client_seq
        {
            self.next_client_seq = seq + 1;
        }
    }

    fn reject(
        &mut self,
        client_seq: u64,
        reason: pb::RejectReason,
        detail: String,
        shared: &Shared,
    ) {
        // Answers go in the order the frames came.
        self.flush_acks(shared);
        shared.metrics.deltas_rejected.inc();
        tracing::debug!(peer = %self.id, client_seq, ?reason, %detail, "delta rejected");
        self.send_command(
            Body::Reject(pb::Reject {
                client_seq,
                reason: reason.into(),
                detail,
            }),
            shared,
        );
    }
}

//! The delta path in: rate limits, grants, validation, sequencing checks,
//! then the log, and the verdict back to the sender.

use std::time::Instant;

use deltamesh_proto::DeltaFrame;
use deltamesh_proto::pb::{self, command::Body};

use super::Peer;
use crate::log::{Acceptance, Appended, LogError};
use crate::rate;
use crate::shared::Shared;
use crate::wake::LogAck;

impl Peer {
    pub(super) fn on_delta(&mut self, bytes: &[u8], shared: &Shared, now: Instant) {
        let peeked = DeltaFrame::peek_client_seq(bytes);
        let client_seq = peeked.unwrap_or(0);
        // Every message counts against the rates, garbage included; the
        // rates are checked first so a flood costs no parsing.
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        shared.metrics.bytes_in.inc_by(size);
        let over = if !rate::take(&mut self.delta_budget, 1, now) {
            Some(("delta_rate", "deltas per second"))
        } else if !rate::take(&mut self.byte_budget, size, now) {
            Some(("byte_rate", "bytes per second"))
        } else {
            None
        };
        if let Some((limit, what)) = over {
            shared.metrics.limit_hit(limit);
            self.advance_client_seq(peeked);
            self.reject(
                client_seq,
                pb::RejectReason::Rate,
                format!("over this connection's limit of {what}; resend it later"),
                shared,
            );
            return self.violated_rate(shared, now);
        }
        if !self.grants.publish {
            self.advance_client_seq(peeked);
            return self.reject(
                client_seq,
                pb::RejectReason::NotPermitted,
                "this connection's token does not grant publish".into(),
                shared,
            );
        }
        if bytes.len() > shared.config.max_frame_size {
            shared.metrics.limit_hit("frame_size");
            self.advance_client_seq(peeked);
            return self.reject(
                client_seq,
                pb::RejectReason::TooLarge,
                format!(
                    "frame is {} bytes; this relay accepts at most {}",
                    bytes.len(),
                    shared.config.max_frame_size
                ),
                shared,
            );
        }
        let frame = match DeltaFrame::parse(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                self.advance_client_seq(peeked);
                return self.reject(client_seq, (&error).into(), error.to_string(), shared);
            }
        };
        if client_seq > self.next_client_seq {
            return self.reject(
                client_seq,
                pb::RejectReason::SequenceGap,
                format!("expected client_seq {}", self.next_client_seq),
                shared,
            );
        }
        self.advance_client_seq(peeked);
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
                self.send_command(Body::Ack(pb::Ack { client_seq, seq }), shared)
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

    /// Sends the log's late verdict on one of this connection's deltas.
    pub(crate) fn on_log_ack(&mut self, ack: LogAck, shared: &Shared) {
        match ack.outcome {
            Ok(seq) => {
                shared.metrics.deltas_in.inc();
                self.send_command(
                    Body::Ack(pb::Ack {
                        client_seq: ack.client_seq,
                        seq,
                    }),
                    shared,
                )
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

//! A peer connection's life as operators see it: one span on the relay from
//! the accepted offer to the close, with an event at each milestone (ICE
//! connected, DTLS connected, channels open, welcomed, first delta, resume,
//! closed with its reason), the time each connect phase took, and the
//! connection's state in the `relay_connections` gauge.
//!
//! With tracing off the span is a no-op: each milestone costs a branch.

use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, Status};

use deltamesh_proto::trace;

use crate::metrics::RelayMetrics;

/// A step of setting a connection up, timed from the accepted offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// ICE found a working candidate pair.
    Ice,
    /// The DTLS handshake finished.
    Dtls,
    /// All three data channels are open.
    Channels,
}

impl Phase {
    /// The phase's `phase` label and span event name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Ice => "ice connected",
            Phase::Dtls => "dtls connected",
            Phase::Channels => "channels open",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Phase::Ice => "ice",
            Phase::Dtls => "dtls",
            Phase::Channels => "channels",
        }
    }
}

/// One connection's span and milestones.
pub(crate) struct Timeline {
    span: BoxedSpan,
    started: Instant,
    reached: [bool; 3],
    first_delta: bool,
}

impl Timeline {
    /// Starts the timeline of a connection whose offer was accepted at
    /// `now`; it counts as connecting.
    pub(crate) fn new(span: BoxedSpan, now: Instant, metrics: &RelayMetrics) -> Self {
        metrics.connection_state("connecting").inc();
        Timeline {
            span,
            started: now,
            reached: [false; 3],
            first_delta: false,
        }
    }

    /// When the offer was accepted.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The trace id of the connection's span, for logs; empty when there is none.
    pub(crate) fn trace_id(&self) -> String {
        trace::span_trace_id(self.span.span_context())
    }

    /// Records that `phase` is done (the first time only).
    pub(crate) fn reached(&mut self, phase: Phase, now: Instant, metrics: &RelayMetrics) {
        let done = &mut self.reached[phase as usize];
        if *done {
            return;
        }
        *done = true;
        let took = now.duration_since(self.started);
        metrics
            .connect_time(phase.label())
            .observe(took.as_secs_f64());
        self.span.add_event(
            phase.name(),
            vec![KeyValue::new("elapsed_ms", took.as_secs_f64() * 1e3)],
        );
    }

    /// Records the `Welcome` (sent once): the connection is connected from
    /// now on.
    pub(crate) fn welcomed(&mut self, last_seq: u64, metrics: &RelayMetrics) {
        metrics.connection_state("connecting").dec();
        metrics.connection_state("connected").inc();
        let last_seq = i64::try_from(last_seq).unwrap_or(i64::MAX);
        self.span
            .add_event("welcomed", vec![KeyValue::new("last_seq", last_seq)]);
    }

    /// Records the first delta the peer sent (once).
    pub(crate) fn first_delta(&mut self, client_seq: u64) {
        if std::mem::replace(&mut self.first_delta, true) {
            return;
        }
        let client_seq = i64::try_from(client_seq).unwrap_or(i64::MAX);
        self.span
            .add_event("first delta", vec![KeyValue::new("client_seq", client_seq)]);
    }

    /// Records a `Resume`: delivery restarts at `from_seq`, and `continued`
    /// says whether the peer took over an earlier connection's origin.
    pub(crate) fn resumed(&mut self, from_seq: u64, continued: bool) {
        let from_seq = i64::try_from(from_seq).unwrap_or(i64::MAX);
        self.span.add_event(
            "resume",
            vec![
                KeyValue::new("from_seq", from_seq),
                KeyValue::new("continued", continued),
            ],
        );
    }

    /// Ends the connection's span with why it closed, and takes it out of
    /// the state gauge (`welcomed`: whether it got its `Welcome`).
    pub(crate) fn closed(mut self, reason: &str, welcomed: bool, metrics: &RelayMetrics) {
        let state = if welcomed { "connected" } else { "connecting" };
        metrics.connection_state(state).dec();
        self.span
            .add_event("closed", vec![KeyValue::new("reason", reason.to_owned())]);
        self.span.end();
    }
}

/// Ends the span of a connection whose offer was refused, with the reason.
pub(crate) fn refused(mut span: BoxedSpan, error: &impl std::fmt::Display) {
    span.set_status(Status::error(error.to_string()));
    span.end();
}

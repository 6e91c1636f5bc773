//! W3C trace context (`traceparent`, `tracestate`) as it travels with a
//! connection: a peer starts a trace with its offer, and each service
//! continues it in the headers of the next hop (HTTP, gRPC metadata, NATS
//! headers). Peers only need [`random_traceparent`]; the services, with the
//! `trace` feature, turn headers into OpenTelemetry contexts and back.

use crate::Id;

/// The header that carries a trace and the span to continue from.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries vendor trace state alongside [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// Span attribute keys every service uses.
pub mod attribute {
    /// The session a connection belongs to.
    pub const SESSION: &str = "deltamesh.session";
    /// The peer connection's id.
    pub const PEER_ID: &str = "deltamesh.peer_id";
    /// The relay that terminates the connection.
    pub const RELAY_ID: &str = "deltamesh.relay_id";
}

/// A sampled `traceparent` (version `00`) naming a new trace and the
/// caller's span in it: `00-<trace id>-<span id>-01`, lowercase hex.
pub fn new_traceparent(trace_id: [u8; 16], span_id: [u8; 8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(55);
    text.push_str("00-");
    for byte in trace_id {
        let _ = write!(text, "{byte:02x}");
    }
    text.push('-');
    for byte in span_id {
        let _ = write!(text, "{byte:02x}");
    }
    text.push_str("-01");
    text
}

/// A [`new_traceparent`] for a new random trace and span, as a peer sends
/// with its offer.
pub fn random_traceparent() -> String {
    let span = Id::random().0;
    let mut span_id = [0; 8];
    span_id.copy_from_slice(&span[8..]);
    new_traceparent(Id::random().0, span_id)
}

#[cfg(feature = "trace")]
pub use otel::{extract, inject, span_trace_id, trace_id};

#[cfg(feature = "trace")]
mod otel {
    use std::collections::HashMap;

    use opentelemetry::Context;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::{SpanContext, TraceContextExt};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::{TRACEPARENT, TRACESTATE};

    /// The context a request's trace headers continue (`header` looks one
    /// up by its lowercase name); the empty context when they are missing
    /// or malformed.
    pub fn extract<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Context {
        let carrier: HashMap<String, String> = [TRACEPARENT, TRACESTATE]
            .into_iter()
            .filter_map(|name| Some((name.to_owned(), header(name)?.to_owned())))
            .collect();
        TraceContextPropagator::new().extract(&carrier)
    }

    /// The trace headers that continue `cx` in the next hop, as
    /// `(lowercase name, value)`; none when `cx` has no valid span.
    pub fn inject(cx: &Context) -> Vec<(&'static str, String)> {
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        [TRACEPARENT, TRACESTATE]
            .into_iter()
            .filter_map(|name| Some((name, carrier.remove(name)?)))
            .filter(|(_, value)| !value.is_empty())
            .collect()
    }

    /// The trace id of `cx` in hex, for logs; empty when it has none.
    pub fn trace_id(cx: &Context) -> String {
        span_trace_id(cx.span().span_context())
    }

    /// The trace id of a span in hex, for logs; empty when it is invalid.
    pub fn span_trace_id(span: &SpanContext) -> String {
        if span.is_valid() {
            span.trace_id().to_string()
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_traceparent_is_version_00_sampled_lowercase_hex() {
        let text = new_traceparent([0xab; 16], [0x01; 8]);
        assert_eq!(
            text,
            "00-abababababababababababababababab-0101010101010101-01"
        );
    }

    #[test]
    fn a_random_traceparent_is_a_fresh_valid_one() {
        let (a, b) = (random_traceparent(), random_traceparent());
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert_ne!(parts[2], "0000000000000000");
    }

    #[cfg(feature = "trace")]
    #[test]
    fn headers_round_trip_through_a_context() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract(|name| (name == TRACEPARENT).then_some(parent));
        assert_eq!(trace_id(&cx), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(inject(&cx), vec![(TRACEPARENT, parent.to_owned())]);
    }

    #[cfg(feature = "trace")]
    #[test]
    fn malformed_headers_continue_nothing() {
        for bad in [
            "",
            "00-xyz",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            let cx = extract(|name| (name == TRACEPARENT).then_some(bad));
            assert_eq!(trace_id(&cx), "", "{bad:?}");
            assert!(inject(&cx).is_empty(), "{bad:?}");
        }
    }
}

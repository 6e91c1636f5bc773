//! One connection is one trace: a native peer's `traceparent` is the root,
//! and signal (HTTP), the registry (gRPC metadata) and the relay (NATS
//! headers) each continue it. Spans are exported over OTLP/gRPC to a
//! collector in this test, as they would be to Jaeger. Sampled deltas are
//! traced from their publish on one relay to their replication on each.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::common::{Fleet, TestPeer};
use crate::otlp::{Collector, text};

const SESSION: &str = "traced";

/// The one span named `name`, checked to come from `service`.
fn one<'a>(spans: &'a [(String, Span)], name: &str, service: &str) -> &'a Span {
    let found: Vec<&(String, Span)> = spans.iter().filter(|(_, s)| s.name == name).collect();
    assert_eq!(found.len(), 1, "spans named {name:?}");
    assert_eq!(found[0].0, service, "service of {name:?}");
    &found[0].1
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_connection_is_one_trace_through_signal_registry_and_relay() {
    let collector = Collector::default();
    let endpoint = format!(
        "http://{}",
        collector.start(Ipv4Addr::LOCALHOST.into()).await
    );
    // One peer per relay, so the two peers are on different relays.
    let fleet = Fleet::start_with_env(
        1,
        2,
        1,
        1,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("DELTAMESH_TRACE_DELTA_EVERY", "1"),
        ],
    )
    .await;

    let mut peer = TestPeer::join(&fleet.signals[0].1, SESSION).await;
    let mut other = TestPeer::join(&fleet.signals[0].1, SESSION).await;
    assert_ne!(peer.relay, other.relay);
    let relay = peer.relay;
    let peer_id = peer.peer.peer_id();
    let traceparent = peer.peer.traceparent().to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    let (trace_id, root) = (hex(parts[1]), hex(parts[2]));
    peer.send_acked(b"traced delta").await;
    assert!(
        other
            .pump_until(Duration::from_secs(10), |p| p.received.len() == 1)
            .await,
        "the delta reaches the other relay's peer"
    );
    peer.peer.close().await;

    let spans = collector
        .trace(
            &trace_id,
            &[
                "POST /v1/sessions/{session}/peers",
                "deltamesh.fleet.v1.Registry/PlacePeer",
                "relay offer",
                "peer connection",
            ],
        )
        .await;
    let signal = one(
        &spans,
        "POST /v1/sessions/{session}/peers",
        "deltamesh-signal",
    );
    let placement = one(
        &spans,
        "deltamesh.fleet.v1.Registry/PlacePeer",
        "deltamesh-registry",
    );
    let offer = one(&spans, "relay offer", "deltamesh-relay");
    let connection = one(&spans, "peer connection", "deltamesh-relay");

    // The peer's span is the root; each hop is a child of the one before.
    assert_eq!(signal.parent_span_id, root, "signal continues the peer");
    assert_eq!(signal.kind, SpanKind::Server as i32);
    assert_eq!(placement.parent_span_id, signal.span_id);
    assert_eq!(offer.parent_span_id, signal.span_id);
    assert_eq!(connection.parent_span_id, offer.span_id);
    for (_, span) in &spans {
        assert!(
            span.span_id != root,
            "{} reuses the peer's span id",
            span.name
        );
    }

    for span in [signal, offer, connection] {
        assert_eq!(
            text(&span.attributes, "deltamesh.session").as_deref(),
            Some(SESSION),
            "{}",
            span.name
        );
        assert_eq!(
            text(&span.attributes, "deltamesh.peer_id"),
            Some(peer_id.to_string()),
            "{}",
            span.name
        );
        assert_eq!(
            text(&span.attributes, "deltamesh.relay_id"),
            Some(relay.to_string()),
            "{}",
            span.name
        );
    }
    assert_eq!(
        text(&placement.attributes, "deltamesh.relay_id"),
        Some(relay.to_string())
    );

    let events: Vec<&str> = connection.events.iter().map(|e| e.name.as_str()).collect();
    for expected in [
        "ice connected",
        "dtls connected",
        "channels open",
        "welcomed",
        "first delta",
        "closed",
    ] {
        assert!(events.contains(&expected), "{expected:?} in {events:?}");
    }
    let position = |name: &str| events.iter().position(|e| *e == name).unwrap();
    assert!(position("ice connected") < position("channels open"));
    assert!(position("channels open") < position("first delta"));
    assert_eq!(events.last(), Some(&"closed"));
    let closed = connection.events.last().unwrap();
    assert_eq!(
        text(&closed.attributes, "reason").as_deref(),
        Some("deleted by client")
    );
    assert!(connection.end_time_unix_nano >= connection.start_time_unix_nano);

    // Only the spans above (and nothing from another connection) are in
    // the trace.
    let names: HashMap<&str, usize> = spans.iter().fold(HashMap::new(), |mut n, (_, s)| {
        *n.entry(s.name.as_str()).or_default() += 1;
        n
    });
    assert_eq!(names.len(), 4, "{names:?}");

    // The delta's own trace: published by the sender's relay, replicated
    // by both.
    let published: Vec<Span> = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.name == "publish delta")
        .map(|(_, s)| s.clone())
        .collect();
    assert_eq!(published.len(), 1, "one delta, one publish span");
    let publish = &published[0];
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(
        text(&publish.attributes, "deltamesh.relay_id"),
        Some(relay.to_string())
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let replicated = loop {
        let spans = collector
            .trace(&publish.trace_id, &["replicate delta"])
            .await;
        let replicated: Vec<Span> = spans
            .into_iter()
            .map(|(_, s)| s)
            .filter(|s| s.name == "replicate delta")
            .collect();
        if replicated.len() == 2 || Instant::now() > deadline {
            break replicated;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut relays: Vec<String> = replicated
        .iter()
        .map(|s| {
            assert_eq!(s.parent_span_id, publish.span_id);
            assert_eq!(s.kind, SpanKind::Consumer as i32);
            text(&s.attributes, "deltamesh.relay_id").unwrap()
        })
        .collect();
    relays.sort();
    let mut expected = vec![relay.to_string(), other.relay.to_string()];
    expected.sort();
    assert_eq!(relays, expected, "each relay replicates the delta once");

    // The other peer sends a delta (seq 2, which it receives too), then its
    // relay drains: the peer reconnects to the first relay and resumes
    // there as the same origin, and its new connection's span says so.
    other.send_acked(b"before the drain").await;
    assert!(
        other
            .pump_until(Duration::from_secs(10), |p| p.received.len() == 2)
            .await,
        "the other peer's delta is echoed"
    );
    let drained = fleet
        .relays
        .iter()
        .position(|r| r.id == other.relay)
        .expect("the other relay");
    fleet.relays[drained].service.sigterm();
    assert!(
        other
            .pump_until(Duration::from_secs(10), |p| p.welcomes == 2)
            .await,
        "the peer reconnects"
    );
    assert_eq!(other.relay, relay, "to the relay that has room");
    other.peer.close().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let resumed = loop {
        let found = collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .find(|s| s.name == "peer connection" && s.events.iter().any(|e| e.name == "resume"));
        if let Some(span) = found {
            break span;
        }
        assert!(
            Instant::now() < deadline,
            "no connection span with a resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        text(&resumed.attributes, "deltamesh.relay_id"),
        Some(relay.to_string())
    );
    let resume = resumed.events.iter().find(|e| e.name == "resume").unwrap();
    let value = |key: &str| {
        resume
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone()?.value)
    };
    assert_eq!(
        value("from_seq"),
        Some(any_value::Value::IntValue(3)),
        "delivery resumes after the last seq the peer had: {resume:?}"
    );
    assert_eq!(
        value("continued"),
        Some(any_value::Value::BoolValue(true)),
        "the resumed connection continues the peer's origin: {resume:?}"
    );
}

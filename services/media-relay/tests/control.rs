//! The relay's control requests (what signal sends over NATS) with bad
//! input: each gets a failure with a code and a reason, never silence, and
//! the relay keeps serving.

use std::sync::Arc;

use deltamesh_proto::fleet::pb::{
    self, DisconnectRequest, IceRestartRequest, OfferRequest, RelayFailureCode, RelayRequest,
    SocketRequest, TrickleRequest, relay_reply::Reply, relay_request::Request,
};
use deltamesh_relay::fleet::control::handle;
use deltamesh_relay::{ChunkStore, MemoryLog, RelayConfig, RelayHandle, RelayMetrics};
use prost::Message;

async fn relay() -> RelayHandle {
    let log = Arc::new(MemoryLog::new(Arc::new(ChunkStore::new(1 << 16, 4))));
    deltamesh_relay::start(RelayConfig::default(), log, RelayMetrics::default())
        .await
        .expect("relay starts")
}

async fn failure(relay: &RelayHandle, bytes: &[u8]) -> pb::RelayFailure {
    match handle(relay, bytes, &opentelemetry::Context::new())
        .await
        .reply
    {
        Some(Reply::Failure(failure)) => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn request(request: Request) -> Vec<u8> {
    RelayRequest {
        request: Some(request),
    }
    .encode_to_vec()
}

fn offer(session: &str, identity: &str, sdp: &str) -> Vec<u8> {
    request(Request::Offer(OfferRequest {
        session: session.into(),
        identity: identity.into(),
        grants: None,
        offer_sdp: sdp.into(),
    }))
}

fn ice_restart(peer: &[u8], identity: &str, ufrag: &str, pwd: &str, candidates: usize) -> Vec<u8> {
    request(Request::IceRestart(IceRestartRequest {
        session: "doc".into(),
        peer_id: peer.to_vec(),
        identity: identity.into(),
        ufrag: ufrag.into(),
        pwd: pwd.into(),
        candidates: vec!["a=candidate:1 1 udp 1 127.0.0.1 9 typ host".into(); candidates],
    }))
}

/// A new peer's ICE password that passes the checks.
const PWD: &str = "newpasswordnewpassword12";

#[tokio::test]
async fn malformed_or_misdirected_ice_restarts_are_refused_with_a_reason() {
    let relay = relay().await;
    let peer = [7; 16];
    let cases: Vec<(Vec<u8>, RelayFailureCode, &str)> = vec![
        (
            ice_restart(&[1, 2, 3], "alice", "new1", PWD, 0),
            RelayFailureCode::BadRequest,
            "16 bytes",
        ),
        (
            ice_restart(&peer, "", "new1", PWD, 0),
            RelayFailureCode::BadRequest,
            "identity",
        ),
        (
            ice_restart(&peer, "alice", "abc", PWD, 0),
            RelayFailureCode::BadRequest,
            "ice-ufrag",
        ),
        (
            ice_restart(&peer, "alice", "new 1", PWD, 0),
            RelayFailureCode::BadRequest,
            "ice-ufrag",
        ),
        (
            ice_restart(&peer, "alice", "new1", "short", 0),
            RelayFailureCode::BadRequest,
            "ice-pwd",
        ),
        (
            ice_restart(&peer, "alice", "new1", &"p".repeat(257), 0),
            RelayFailureCode::BadRequest,
            "ice-pwd",
        ),
        (
            ice_restart(&peer, "alice", "new1", PWD, 65),
            RelayFailureCode::BadRequest,
            "too many candidates",
        ),
        (
            ice_restart(&peer, "alice", "new1", PWD, 1),
            RelayFailureCode::UnknownPeer,
            "unknown peer",
        ),
    ];
    for (bytes, code, detail) in cases {
        let failure = failure(&relay, &bytes).await;
        assert_eq!(failure.code(), code, "{failure:?}");
        assert!(failure.detail.contains(detail), "{detail}: {failure:?}");
    }

    // A WebSocket lane peer is there, but has no ICE to restart; and only
    // its owner may ask.
    let ticket = match handle(
        &relay,
        &request(Request::Socket(SocketRequest {
            session: "doc".into(),
            identity: "alice".into(),
            grants: None,
        })),
        &opentelemetry::Context::new(),
    )
    .await
    .reply
    {
        Some(Reply::Ticket(ticket)) => ticket,
        other => panic!("expected a ticket, got {other:?}"),
    };
    let lane_peer = ticket.peer_id;
    let foreign = failure(&relay, &ice_restart(&lane_peer, "mallory", "new1", PWD, 0)).await;
    assert_eq!(foreign.code(), RelayFailureCode::NotOwner, "{foreign:?}");
    let on_socket = failure(&relay, &ice_restart(&lane_peer, "alice", "new1", PWD, 0)).await;
    assert_eq!(
        on_socket.code(),
        RelayFailureCode::BadOffer,
        "{on_socket:?}"
    );
    assert!(on_socket.detail.contains("WebSocket lane"), "{on_socket:?}");
}

#[tokio::test]
async fn malformed_control_requests_are_refused_with_a_reason() {
    let relay = relay().await;
    let cases: Vec<(Vec<u8>, RelayFailureCode, &str)> = vec![
        (
            vec![0xff, 0xff, 0xff],
            RelayFailureCode::BadRequest,
            "undecodable",
        ),
        (Vec::new(), RelayFailureCode::BadRequest, "empty request"),
        (
            offer("a/b", "alice", "v=0"),
            RelayFailureCode::BadRequest,
            "session",
        ),
        (
            offer("doc", "", "v=0"),
            RelayFailureCode::BadRequest,
            "identity",
        ),
        (
            offer("doc", &"x".repeat(2000), "v=0"),
            RelayFailureCode::BadRequest,
            "identity",
        ),
        (
            offer("doc", "alice", "not sdp"),
            RelayFailureCode::BadOffer,
            "SDP",
        ),
        (
            request(Request::Trickle(TrickleRequest {
                session: "doc".into(),
                peer_id: vec![1, 2, 3],
                identity: "alice".into(),
                if_match: None,
                candidates: Vec::new(),
            })),
            RelayFailureCode::BadRequest,
            "16 bytes",
        ),
        (
            request(Request::Trickle(TrickleRequest {
                session: "doc".into(),
                peer_id: vec![7; 16],
                identity: "alice".into(),
                if_match: None,
                candidates: vec!["a=candidate:1 1 udp 1 127.0.0.1 9 typ host".into(); 65],
            })),
            RelayFailureCode::BadRequest,
            "too many candidates",
        ),
        (
            request(Request::Disconnect(DisconnectRequest {
                session: "doc".into(),
                peer_id: vec![7; 16],
                identity: "alice".into(),
            })),
            RelayFailureCode::UnknownPeer,
            "unknown peer",
        ),
    ];
    for (bytes, code, detail) in cases {
        let failure = failure(&relay, &bytes).await;
        assert_eq!(failure.code(), code, "{failure:?}");
        assert!(failure.detail.contains(detail), "{detail}: {failure:?}");
    }
    assert_eq!(relay.peer_count(), 0, "nothing was admitted");
}

#[tokio::test]
async fn a_draining_relay_refuses_offers_as_shutting_down() {
    let relay = relay().await;
    relay
        .drain(std::time::Duration::from_millis(100), "test")
        .await;
    let failure = failure(&relay, &offer("doc", "alice", "v=0")).await;
    assert_eq!(failure.code(), RelayFailureCode::ShuttingDown);
}

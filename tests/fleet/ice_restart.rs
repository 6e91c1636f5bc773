//! ICE restart in a fleet: a native peer whose network changes mid-stream
//! moves from 127.0.0.1 to 127.0.0.2 (and on to 127.0.0.3) with a `PATCH`
//! (`If-Match: *`) that signal carries over NATS to the relay holding the
//! peer. It keeps its connection (same peer id, no new `Welcome`, no
//! disconnect) and nothing is lost or doubled, in one order with a peer on
//! another relay. A peer on the WebSocket lane has no ICE to restart.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_worker::{Lane, LaneChoice};

use crate::common::{Fleet, TOKEN, TestPeer, assert_one_order, assert_sender_order, payload};
use crate::raw_peer::RawPeer;

/// Deltas each peer sends before, between and after the moves.
const PER_PHASE: usize = 100;
const PHASES: usize = 3;

async fn send_phase(peers: &[TestPeer], phase: usize) {
    for n in phase * PER_PHASE..(phase + 1) * PER_PHASE {
        for (i, peer) in peers.iter().enumerate() {
            peer.peer
                .send(1, Id::default(), payload(i, n))
                .await
                .expect("send queued");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_peer_moved_mid_stream_in_a_fleet_keeps_its_connection_and_its_place() {
    // One peer per relay: the two peers are on different relays.
    let fleet = Fleet::start(1, 2, 1, 1).await;
    let signal = &fleet.signals[0].1;
    let session = "fleet-restart";
    let mut peers = vec![
        TestPeer::join(signal, session).await,
        TestPeer::join(signal, session).await,
    ];
    let relays: HashSet<Id> = peers.iter().map(|p| p.relay).collect();
    assert_eq!(relays.len(), 2, "the peers are on different relays");
    let mover_id = peers[0].peer.peer_id();
    let placed = fleet.placements(0, session).await;

    // Deltas both ways in flight when the network changes, each time.
    let mut restart_times = Vec::new();
    for (phase, last_octet) in [2u8, 3].into_iter().enumerate() {
        send_phase(&peers, phase).await;
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet));
        let started = Instant::now();
        peers[0]
            .peer
            .move_to(ip)
            .await
            .unwrap_or_else(|error| panic!("the fleet restarts ICE to {ip}: {error}"));
        restart_times.push(started.elapsed());
    }
    // The first delta sent from the last address is acknowledged: the
    // connection carries data again.
    let moved = Instant::now();
    let first_after = peers[0]
        .send_acked(&payload(0, (PHASES - 1) * PER_PHASE))
        .await;
    let resumed_after = moved.elapsed();
    eprintln!(
        "fleet ICE restart: PATCH answered in {restart_times:?}; \
         first delta from the new address acknowledged {resumed_after:?} after"
    );
    for n in (PHASES - 1) * PER_PHASE + 1..PHASES * PER_PHASE {
        peers[0]
            .peer
            .send(1, Id::default(), payload(0, n))
            .await
            .expect("send queued");
    }
    for n in (PHASES - 1) * PER_PHASE..PHASES * PER_PHASE {
        peers[1]
            .peer
            .send(1, Id::default(), payload(1, n))
            .await
            .expect("send queued");
    }

    let total = peers.len() * PHASES * PER_PHASE;
    for (i, peer) in peers.iter_mut().enumerate() {
        let done = peer
            .pump_until(Duration::from_secs(60), |p| {
                p.received.len() >= total && p.acked.len() >= PHASES * PER_PHASE
            })
            .await;
        assert!(
            done,
            "peer {i}: {} of {total} received, {} acked",
            peer.received.len(),
            peer.acked.len()
        );
    }
    assert!(peers[0].acked.contains(&first_after));
    assert_one_order(&peers, peers.len(), PHASES * PER_PHASE);
    assert_sender_order(&peers, peers.len(), PHASES * PER_PHASE);
    let mover = &peers[0];
    assert_eq!(
        mover.welcomes, 1,
        "a new Welcome: the connection was replaced ({:?})",
        mover.disconnects
    );
    assert!(mover.disconnects.is_empty(), "{:?}", mover.disconnects);
    assert_eq!(mover.peer.peer_id(), mover_id);
    // The registry still lists the same two peers on the same relays: no
    // new connection was placed.
    assert_eq!(fleet.placements(0, session).await, placed);
    for peer in peers {
        peer.peer.close().await;
    }
}

/// A `PATCH` of the peer resource at `resource` with `If-Match: if_match`.
async fn patch(resource: &str, if_match: &str, body: &'static str) -> reqwest::Response {
    reqwest::Client::new()
        .patch(resource)
        .bearer_auth(TOKEN)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .header("if-match", if_match)
        .body(body)
        .send()
        .await
        .expect("signal answers")
}

/// The sdpfrag of an ICE restart: new credentials, no candidates.
const RESTART: &str = "a=ice-ufrag:new1\r\na=ice-pwd:newpasswordnewpassword12\r\n";
/// A trickle's sdpfrag.
const TRICKLE: &str = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";

/// An ICE restart `PATCH` of `peer` of `session`, as a client sends it.
async fn restart(signal: &str, session: &str, peer: Id) -> reqwest::StatusCode {
    patch(
        &format!("{signal}/v1/sessions/{session}/peers/{peer}"),
        "*",
        RESTART,
    )
    .await
    .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_an_ice_restart_renews_the_etag_a_trickle_must_name() {
    let fleet = Fleet::start(1, 2, 1, 1).await;
    let peer = RawPeer::join(&fleet.signals[0].1, "fleet-restart-etag").await;
    let status = patch(&peer.resource, &peer.etag, TRICKLE).await.status();
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);

    let restarted = patch(&peer.resource, "*", RESTART).await;
    assert_eq!(restarted.status(), reqwest::StatusCode::OK);
    let etag = restarted.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(etag, peer.etag, "a restart makes a new ETag");
    let frag = restarted.text().await.unwrap();
    let ufrag = frag
        .lines()
        .find_map(|line| line.strip_prefix("a=ice-ufrag:"))
        .expect("the relay's new ufrag");
    assert_eq!(etag, format!("\"{ufrag}\""), "the ETag is the new ufrag");
    assert!(frag.contains("a=ice-pwd:"), "{frag}");
    assert!(frag.contains("a=candidate:"), "{frag}");

    // The relay holds the ETag: the one from before the restart is stale.
    let status = patch(&peer.resource, &peer.etag, TRICKLE).await.status();
    assert_eq!(status, reqwest::StatusCode::PRECONDITION_FAILED);
    let status = patch(&peer.resource, &etag, TRICKLE).await.status();
    assert_eq!(status, reqwest::StatusCode::NO_CONTENT);
    peer.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_a_websocket_peer_has_no_ice_to_restart_and_an_unknown_peer_none_at_all() {
    let fleet = Fleet::start(1, 2, 1, 1).await;
    let signal = &fleet.signals[0].1;
    let session = "fleet-restart-lanes";
    let mut lane_peer = TestPeer::join_over(signal, session, LaneChoice::WebSocket).await;
    assert_eq!(lane_peer.peer.lane(), Lane::WebSocket);
    let status = restart(signal, session, lane_peer.peer.peer_id()).await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST);
    let status = restart(signal, session, Id([0x0b; 16])).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    // The refused restart left the peer as it was.
    lane_peer.send_acked(&payload(0, 0)).await;
    assert_eq!(lane_peer.welcomes, 1);
    lane_peer.peer.close().await;
}

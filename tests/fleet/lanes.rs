//! The WebSocket lane in a fleet: signal forwards a socket to the relay
//! placement chose, so a WebSocket peer on one relay and WebRTC peers on
//! others share one order.

use std::collections::HashSet;
use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_worker::{Lane, LaneChoice};

use crate::common::{Fleet, TestPeer, assert_one_order, payload};

const PER_PEER: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_peer_on_one_relay_and_webrtc_peers_on_others_share_one_order() {
    // One peer per relay: the placement spreads the session over all three.
    let fleet = Fleet::start(1, 3, 1, 2).await;
    let mut peers = vec![
        TestPeer::join_over(&fleet.signals[0].1, "fleet-lanes", LaneChoice::WebSocket).await,
        TestPeer::join_over(&fleet.signals[1].1, "fleet-lanes", LaneChoice::WebRtc).await,
        TestPeer::join_over(&fleet.signals[0].1, "fleet-lanes", LaneChoice::WebRtc).await,
    ];
    assert_eq!(peers[0].peer.lane(), Lane::WebSocket);
    assert_eq!(peers[1].peer.lane(), Lane::WebRtcUdp);
    let relays: HashSet<Id> = peers.iter().map(|p| p.relay).collect();
    assert_eq!(relays.len(), 3, "each peer on its own relay");
    for n in 0..PER_PEER {
        for (i, peer) in peers.iter().enumerate() {
            peer.peer
                .send(1, Id::default(), payload(i, n))
                .await
                .expect("send queued");
        }
    }
    let total = peers.len() * PER_PEER;
    for (i, peer) in peers.iter_mut().enumerate() {
        let done = peer
            .pump_until(Duration::from_secs(60), |p| {
                p.received.len() >= total && p.acked.len() >= PER_PEER
            })
            .await;
        assert!(
            done,
            "peer {i}: {} of {total} received, {} acked",
            peer.received.len(),
            peer.acked.len()
        );
    }
    assert_one_order(&peers, peers.len(), PER_PEER);
}

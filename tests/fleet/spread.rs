//! One session spread over three relays.

use std::collections::HashSet;
use std::time::Duration;

use deltamesh_proto::Id;

use crate::common::{Fleet, TestPeer, assert_one_order, assert_sender_order, payload};

/// Peers in the session.
const PEERS: usize = 12;
/// Deltas each peer sends.
const PER_PEER: usize = 200;

/// Sends `PER_PEER` deltas (one per `pace`) while handling events, then
/// waits until everything sent is acknowledged and everything in the
/// session (`total`) has arrived.
pub(crate) async fn send_and_collect(
    mut peer: TestPeer,
    index: usize,
    pace: Duration,
    total: usize,
) -> TestPeer {
    for n in 0..PER_PEER {
        peer.peer
            .send(1, Id::default(), payload(index, n))
            .await
            .expect("send queued");
        peer.pump_until(pace, |_| false).await;
    }
    let done = peer
        .pump_until(Duration::from_secs(90), |p| {
            p.received.len() >= total && p.acked.len() >= PER_PEER
        })
        .await;
    assert!(
        done,
        "peer {index}: {} of {total} received, {} of {PER_PEER} acked",
        peer.received.len(),
        peer.acked.len()
    );
    peer
}

/// Runs every peer's sender and collector at once.
pub(crate) async fn exchange(peers: Vec<TestPeer>, pace: Duration) -> Vec<TestPeer> {
    let total = peers.len() * PER_PEER;
    let tasks: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(i, peer)| tokio::spawn(send_and_collect(peer, i, pace, total)))
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("peer task"));
    }
    done
}

/// Joins `count` peers to `session`, alternating between the signals.
pub(crate) async fn join_all(fleet: &Fleet, session: &str, count: usize) -> Vec<TestPeer> {
    let mut peers = Vec::new();
    for i in 0..count {
        let signal = &fleet.signals[i % fleet.signals.len()].1;
        peers.push(TestPeer::join(signal, session).await);
    }
    peers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_peers_on_three_relays_see_every_delta_in_one_order() {
    let fleet = Fleet::start(2, 3, PEERS / 3, 2).await;
    let peers = join_all(&fleet, "spread", PEERS).await;
    let relays: HashSet<Id> = peers.iter().map(|p| p.relay).collect();
    assert_eq!(relays.len(), 3, "the session spans all three relays");
    let placements = fleet.placements(1, "spread").await;
    assert_eq!(
        placements.len(),
        PEERS,
        "the other registry lists every peer"
    );
    for peer in &peers {
        assert_eq!(placements[&peer.peer.peer_id()], peer.relay);
    }
    let peers = exchange(peers, Duration::ZERO).await;
    assert_one_order(&peers, PEERS, PER_PEER);
    assert_sender_order(&peers, PEERS, PER_PEER);
}

//! Failures mid-stream: a relay killed with SIGKILL, NATS restarting, a
//! registry restarting, a relay draining on SIGTERM. Through each, every
//! peer ends with every delta in one order, nothing acknowledged lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::ListRelaysRequest;

use crate::common::{Fleet, TestPeer, assert_one_order, assert_sender_order};
use crate::spread::{exchange, join_all};

/// Peers in the session of each test.
const PEERS: usize = 12;
/// One delta per peer every 10 ms: 200 take about two seconds.
const PACE: Duration = Duration::from_millis(10);

/// How many peers each relay hosts.
fn per_relay(peers: &[TestPeer]) -> HashMap<Id, usize> {
    let mut counts = HashMap::new();
    for peer in peers {
        *counts.entry(peer.relay).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relays_peers_resume_on_others_and_lose_nothing() {
    // 5 + 5 + 2 peers, then a spare relay joins: a relay of five is
    // killed, and the others have room for its peers.
    let mut fleet = Fleet::start(2, 3, 5, 2).await;
    let peers = join_all(&fleet, "crash", PEERS).await;
    let counts = per_relay(&peers);
    assert_eq!(counts.len(), 3, "{counts:?}");
    fleet.start_relay(1, 5);
    fleet.wait_for_relays(4).await;
    let (&victim, &moving) = counts.iter().max_by_key(|(_, n)| **n).unwrap();
    let sending = tokio::spawn(exchange(peers, PACE));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed_at = Instant::now();
    let index = fleet.relays.iter().position(|r| r.id == victim).unwrap();
    fleet.relays[index].service.kill();
    let peers = sending.await.expect("exchange");
    let moved: Vec<&TestPeer> = peers.iter().filter(|p| p.welcomes > 1).collect();
    assert_eq!(
        moved.len(),
        moving,
        "exactly the killed relay's peers reconnected"
    );
    assert!(moved.iter().all(|p| p.relay != victim));
    println!(
        "{moving} peers of a killed relay back and caught up within {:?}",
        killed_at.elapsed()
    );
    assert_one_order(&peers, PEERS, 200);
    assert_sender_order(&peers, PEERS, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarting_mid_stream_loses_nothing() {
    let mut fleet = Fleet::start(1, 2, 3, 1).await;
    let peers = join_all(&fleet, "nats-restart", 6).await;
    assert_eq!(per_relay(&peers).len(), 2);
    let sending = tokio::spawn(exchange(peers, PACE));
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.nats.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.nats.restart();
    let peers = sending.await.expect("exchange");
    assert_one_order(&peers, 6, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_registry_keeps_placements_and_membership() {
    let mut fleet = Fleet::start(1, 2, 3, 1).await;
    let peers = join_all(&fleet, "registry-restart", 4).await;
    let before = fleet.placements(0, "registry-restart").await;
    assert_eq!(before.len(), 4);
    let port: u16 = fleet.registries[0]
        .1
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    fleet.registries[0].0.kill();
    fleet.registries.clear();
    fleet.start_registry(port);
    assert_eq!(
        fleet.placements(0, "registry-restart").await,
        before,
        "placements survive"
    );
    // The relays heartbeat to the new instance; a new peer is placed
    // and welcomed with everyone already there.
    fleet.wait_for_relays(2).await;
    let newcomer = TestPeer::join(&fleet.signals[0].1, "registry-restart").await;
    let mut listed: Vec<Vec<u8>> = newcomer.peer.welcome().peers.clone();
    listed.sort();
    let mut expected: Vec<Vec<u8>> = peers.iter().map(|p| p.peer.peer_id().0.to_vec()).collect();
    expected.sort();
    assert_eq!(listed, expected, "membership survives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_relay_moves_its_peers_and_takes_no_new_ones() {
    let mut fleet = Fleet::start(1, 2, 3, 1).await;
    let peers = join_all(&fleet, "drain", 6).await;
    let counts = per_relay(&peers);
    assert_eq!(counts.len(), 2);
    let draining = peers[0].relay;
    let sending = tokio::spawn(exchange(peers, PACE));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let index = fleet.relays.iter().position(|r| r.id == draining).unwrap();
    // Room for the drained peers elsewhere.
    fleet.start_relay(0, 6);
    fleet.wait_for_relays(3).await;
    assert!(
        fleet.relays[index]
            .service
            .terminate(Duration::from_secs(15)),
        "the relay exits by itself after draining"
    );
    let peers = sending.await.expect("exchange");
    assert!(peers.iter().all(|p| p.relay != draining));
    assert_one_order(&peers, 6, 200);
    assert_sender_order(&peers, 6, 200);
    let relays = fleet
        .registry(0)
        .await
        .list_relays(ListRelaysRequest {})
        .await
        .unwrap()
        .into_inner()
        .relays;
    assert!(
        relays.iter().all(|r| r.relay_id != draining.0),
        "a drained relay leaves the registry"
    );
}

//! ICE-TCP end to end: a native peer that offers only an active TCP
//! candidate reaches the relay's passive one (RFC 6544, RFC 4571 framing),
//! reports the `webrtc-tcp` lane, and shares one order with a peer on UDP
//! (`webrtc-udp`); moved with an ICE restart, it stays on ICE-TCP.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::common::{TOKEN, next_matching, stack_with};
use deltamesh_proto::Id;
use deltamesh_worker::{ConnectOptions, Lane, LaneChoice, NativePeer, PeerEvent, ReceivedDelta};

/// Deltas of the session, in the order `peer` receives them.
async fn receive(peer: &mut NativePeer, count: usize) -> Vec<ReceivedDelta> {
    let mut received = Vec::new();
    while received.len() < count {
        let delta = next_matching(peer, Duration::from_secs(30), |e| match e {
            PeerEvent::Delta(d) => Some(d),
            _ => None,
        })
        .await;
        received.push(delta);
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_ice_tcp_only_and_a_peer_on_udp_share_one_order() {
    // Verified connections outlive the deadline for unverified ones.
    let stack = stack_with(|relay| relay.tcp_verify_timeout = Duration::from_millis(300)).await;
    assert_eq!(
        stack.relays[0].tcp_addrs().len(),
        1,
        "the relay listens on TCP"
    );
    let mut tcp_options = ConnectOptions::new(&stack.signal_url(), "tcp-doc", TOKEN);
    tcp_options.udp = false;
    tcp_options.ice_tcp = true;
    // ICE-TCP or nothing: no falling back to the WebSocket lane.
    tcp_options.lane = LaneChoice::WebRtc;
    tcp_options.echo = true;
    let mut tcp = NativePeer::connect(tcp_options)
        .await
        .expect("a peer without UDP connects over ICE-TCP");
    let mut udp_options = ConnectOptions::new(&stack.signal_url(), "tcp-doc", TOKEN);
    udp_options.echo = true;
    let mut udp = NativePeer::connect(udp_options).await.expect("UDP peer");
    assert_eq!(tcp.lane(), Lane::WebRtcTcp, "ICE-TCP carries the TCP peer");
    assert_eq!(udp.lane(), Lane::WebRtcUdp);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let per_peer = 300usize;
    let payload = |lane: &str, i: usize| format!("{lane} {i} ").repeat(i % 5 + 1).into_bytes();
    for i in 0..per_peer {
        tcp.send(1, Id::default(), payload("tcp", i))
            .await
            .expect("queued");
        udp.send(1, Id::default(), payload("udp", i))
            .await
            .expect("queued");
    }
    let (over_tcp, over_udp) = tokio::join!(
        receive(&mut tcp, 2 * per_peer),
        receive(&mut udp, 2 * per_peer)
    );
    let order = |deltas: &[ReceivedDelta]| -> Vec<(u64, Id, Vec<u8>)> {
        deltas
            .iter()
            .map(|d| (d.seq, d.origin, d.payload().to_vec()))
            .collect()
    };
    assert_eq!(
        order(&over_tcp),
        order(&over_udp),
        "one order on both lanes"
    );
    let seqs: Vec<u64> = over_tcp.iter().map(|d| d.seq).collect();
    assert_eq!(
        seqs,
        (1..=2 * per_peer as u64).collect::<Vec<_>>(),
        "nothing lost"
    );
    for (origin, lane) in [(tcp.peer_id(), "tcp"), (udp.peer_id(), "udp")] {
        let sent: Vec<Vec<u8>> = over_tcp
            .iter()
            .filter(|d| d.origin == origin)
            .map(|d| d.payload().to_vec())
            .collect();
        let expected: Vec<Vec<u8>> = (0..per_peer).map(|i| payload(lane, i)).collect();
        assert_eq!(sent, expected, "{lane} peer's deltas intact, in its order");
    }
    assert_eq!(tcp.lane(), Lane::WebRtcTcp);
    assert_eq!(udp.lane(), Lane::WebRtcUdp);
    tcp.close().await;
    udp.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_on_ice_tcp_only_moved_by_an_ice_restart_stays_on_ice_tcp() {
    let stack = stack_with(|relay| relay.tcp_verify_timeout = Duration::from_millis(300)).await;
    let mut options = ConnectOptions::new(&stack.signal_url(), "tcp-move", TOKEN);
    options.udp = false;
    options.ice_tcp = true;
    options.lane = LaneChoice::WebRtc;
    let mut peer = NativePeer::connect(options)
        .await
        .expect("a peer without UDP connects over ICE-TCP");
    assert_eq!(peer.lane(), Lane::WebRtcTcp);
    for i in 0..50u8 {
        peer.send(1, Id::default(), vec![i; 8])
            .await
            .expect("queued");
    }
    peer.move_to(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .await
        .expect("the relay restarts ICE");
    for i in 50..100u8 {
        peer.send(1, Id::default(), vec![i; 8])
            .await
            .expect("queued");
    }
    for _ in 0..100 {
        next_matching(&mut peer, Duration::from_secs(10), |e| match e {
            PeerEvent::Acked { .. } => Some(()),
            PeerEvent::Welcomed(_) | PeerEvent::Disconnected(_) => {
                panic!("the restart replaced the connection: {e:?}")
            }
            _ => None,
        })
        .await;
    }
    assert_eq!(peer.lane(), Lane::WebRtcTcp, "no UDP was offered");
    peer.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_relays_tcp_candidate_a_peer_without_udp_does_not_connect() {
    let stack = stack_with(|relay| relay.ice_tcp = false).await;
    assert!(stack.relays[0].tcp_addrs().is_empty());
    let mut options = ConnectOptions::new(&stack.signal_url(), "tcp-doc", TOKEN);
    options.udp = false;
    options.ice_tcp = true;
    options.lane = LaneChoice::WebRtc;
    options.connect_timeout = Duration::from_secs(2);
    let connected = NativePeer::connect(options).await;
    assert!(
        connected.is_err(),
        "the only path was TCP, and there is none"
    );
    stack.shutdown().await.unwrap();
}

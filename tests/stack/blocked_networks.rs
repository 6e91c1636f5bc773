//! A native peer on `LaneChoice::Auto` inside a network namespace that
//! blocks what WebRTC needs, beside a peer on WebRTC (UDP) outside. With
//! UDP dropped it takes ICE-TCP (`webrtc-tcp`). With the relay's TCP ports
//! refused too (its ICE-TCP candidates and its own lane port; signal's
//! HTTP port stays open) WebRTC cannot connect, and after the fallback
//! time it takes the WebSocket lane (`websocket`) through signal. Either
//! way both peers see every delta once, in one order. And once UDP gets
//! through again, an ICE restart moves a peer on ICE-TCP to UDP.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltamesh::{RunningStack, StackConfig, start};
use deltamesh_proto::Id;
use deltamesh_relay::RelayConfig;
use deltamesh_signal::SignalConfig;
use deltamesh_worker::{ConnectOptions, Lane, LaneChoice, NativePeer, PeerEvent};

use crate::common::{TOKEN, next_matching};
use crate::netns::NetNs;

/// Deltas each peer sends.
const PER_PEER: usize = 200;

/// A stack whose signal and relay (UDP, ICE-TCP and lane ports) listen on
/// the host's end of `netns`'s veth pair.
async fn stack_for(netns: &NetNs) -> RunningStack {
    let ip = IpAddr::V4(netns.host_ip);
    start(StackConfig {
        listen: SocketAddr::new(ip, 0),
        relay: RelayConfig {
            bind_ip: ip,
            advertised_ip: ip,
            ..RelayConfig::default()
        },
        signal: SignalConfig::new(TOKEN),
    })
    .await
    .expect("stack starts")
}

fn payload(tag: &str, i: usize) -> Vec<u8> {
    format!("{tag}-{i}-{}", "z".repeat(i * 7 % 200)).into_bytes()
}

/// The session's deltas as `peer` receives them: (seq, payload).
async fn receive(peer: &mut NativePeer, count: usize) -> Vec<(u64, Vec<u8>)> {
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        let delta = next_matching(peer, Duration::from_secs(30), |event| match event {
            PeerEvent::Delta(delta) => Some(delta),
            _ => None,
        })
        .await;
        received.push((delta.seq, delta.payload().to_vec()));
    }
    received
}

/// What the peer inside saw.
struct Inside {
    lane: Lane,
    /// From `NativePeer::connect` to its `Welcome`.
    connected_in: Duration,
    deltas: Vec<(u64, Vec<u8>)>,
}

/// Runs a native peer on `LaneChoice::Auto` (with an ICE-TCP candidate)
/// inside `netns`, on a runtime of its own on a thread that entered it (so
/// every socket it opens is the namespace's): it sends `PER_PEER` deltas
/// and collects the session's.
fn peer_inside(netns: &NetNs, signal_url: String, session: &'static str) -> Inside {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                netns.enter();
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async move {
                    let mut options = ConnectOptions::new(&signal_url, session, TOKEN);
                    options.echo = true;
                    options.ice_tcp = true;
                    assert_eq!(options.lane, LaneChoice::Auto);
                    let started = Instant::now();
                    let mut peer = NativePeer::connect(options)
                        .await
                        .expect("the peer inside connects");
                    let connected_in = started.elapsed();
                    let lane = peer.lane();
                    for i in 0..PER_PEER {
                        peer.send(1, Id::default(), payload("inside", i))
                            .await
                            .expect("queued");
                    }
                    let deltas = receive(&mut peer, 2 * PER_PEER).await;
                    assert_eq!(peer.lane(), lane, "the lane held");
                    peer.close().await;
                    Inside {
                        lane,
                        connected_in,
                        deltas,
                    }
                })
            })
            .join()
            .expect("the peer inside")
    })
}

/// A peer on WebRTC outside and [`peer_inside`] in `netns` exchange
/// deltas; returns what the inside saw, once both saw the same.
async fn exchange(netns: Arc<NetNs>, stack: &RunningStack, session: &'static str) -> Inside {
    let mut options =
        ConnectOptions::new(&stack.signal_url(), session, TOKEN).with_lane(LaneChoice::WebRtc);
    options.echo = true;
    let mut outside = NativePeer::connect(options)
        .await
        .expect("the peer outside connects");
    assert_eq!(outside.lane(), Lane::WebRtcUdp);
    let signal_url = stack.signal_url();
    let inside = tokio::task::spawn_blocking({
        let netns = Arc::clone(&netns);
        move || peer_inside(&netns, signal_url, session)
    });
    next_matching(&mut outside, Duration::from_secs(20), |event| match event {
        PeerEvent::PeerJoined(_) => Some(()),
        _ => None,
    })
    .await;
    for i in 0..PER_PEER {
        outside
            .send(1, Id::default(), payload("outside", i))
            .await
            .expect("queued");
    }
    let at_outside = receive(&mut outside, 2 * PER_PEER).await;
    let inside = inside.await.expect("the peer inside ran");
    assert_eq!(inside.deltas, at_outside, "one order on both sides");
    let seqs: Vec<u64> = at_outside.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (1..=2 * PER_PEER as u64).collect::<Vec<_>>(),
        "nothing lost"
    );
    for tag in ["inside", "outside"] {
        let prefix = format!("{tag}-");
        let sent: Vec<&[u8]> = at_outside
            .iter()
            .map(|(_, payload)| payload.as_slice())
            .filter(|p| p.starts_with(prefix.as_bytes()))
            .collect();
        let expected: Vec<Vec<u8>> = (0..PER_PEER).map(|i| payload(tag, i)).collect();
        assert_eq!(sent, expected, "{tag}'s deltas once each, in its order");
    }
    assert_eq!(outside.lane(), Lane::WebRtcUdp);
    outside.close().await;
    inside
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_blocked_a_native_peer_on_auto_takes_ice_tcp_and_reports_webrtc_tcp() {
    let netns = Arc::new(NetNs::create());
    netns.block_udp();
    let stack = stack_for(&netns).await;
    let inside = exchange(Arc::clone(&netns), &stack, "blocked-udp").await;
    assert_eq!(inside.lane, Lane::WebRtcTcp);
    eprintln!(
        "UDP blocked: connected over ICE-TCP in {:?}",
        inside.connected_in
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_and_the_relays_tcp_blocked_a_native_peer_falls_back_to_the_websocket_lane() {
    let netns = Arc::new(NetNs::create());
    netns.block_udp();
    let stack = stack_for(&netns).await;
    let relay = &stack.relays[0];
    let tcp = relay.tcp_addrs();
    assert!(!tcp.is_empty(), "the relay offers ICE-TCP");
    // Its ICE-TCP candidates and its own lane port: the socket goes
    // through signal, whose port stays open.
    for addr in tcp.iter().chain([&relay.socket_addr()]) {
        netns.block_tcp_port(addr.port());
    }
    let inside = exchange(Arc::clone(&netns), &stack, "blocked-tcp").await;
    assert_eq!(inside.lane, Lane::WebSocket);
    // WebRTC gets its chance first: it is given up on after the fallback
    // time without `Welcome`, or sooner when nothing at all comes back
    // from the relay for the silence timeout (here: every packet dropped).
    let defaults = ConnectOptions::new(&stack.signal_url(), "blocked-tcp", TOKEN);
    let given_up_after = defaults
        .lane_times
        .webrtc_fallback
        .min(defaults.reconnect.silence_timeout);
    assert!(
        inside.connected_in >= given_up_after,
        "WebRTC had {given_up_after:?} first: {:?}",
        inside.connected_in
    );
    assert!(
        inside.connected_in < given_up_after + Duration::from_secs(2),
        "the WebSocket lane followed at once: {:?}",
        inside.connected_in
    );
    eprintln!(
        "UDP and the relay's TCP blocked: on the WebSocket lane {:?} after connecting began",
        inside.connected_in
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_udp_gets_through_again_an_ice_restart_moves_a_peer_from_ice_tcp_to_udp() {
    let netns = Arc::new(NetNs::create());
    netns.block_udp();
    let stack = stack_for(&netns).await;
    let signal_url = stack.signal_url();
    let inside = Arc::clone(&netns);
    let lanes = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    inside.enter();
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(move_back_to_udp(&inside, &signal_url))
                })
                .join()
                .expect("the peer inside")
        })
    })
    .await
    .expect("the peer inside ran");
    assert_eq!(lanes, (Lane::WebRtcTcp, Lane::WebRtcUdp));
    stack.shutdown().await.unwrap();
}

/// Inside `netns` (UDP blocked): connects on `Auto` with ICE-TCP, lets UDP
/// through, restarts ICE on the same address and waits until the data
/// takes UDP; every delta is acknowledged on the one connection. Returns
/// the lane before and after.
async fn move_back_to_udp(netns: &NetNs, signal_url: &str) -> (Lane, Lane) {
    let mut options = ConnectOptions::new(signal_url, "blocked-then-open", TOKEN);
    options.ice_tcp = true;
    let mut peer = NativePeer::connect(options)
        .await
        .expect("the peer inside connects over ICE-TCP");
    let before = peer.lane();
    netns.unblock_udp();
    peer.move_to(IpAddr::V4(netns.ns_ip))
        .await
        .expect("the relay restarts ICE");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while peer.lane() != Lane::WebRtcUdp && Instant::now() < deadline {
        peer.send(1, Id::default(), payload("moving", sent))
            .await
            .expect("queued");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..sent {
        next_matching(&mut peer, Duration::from_secs(10), |event| match event {
            PeerEvent::Acked { .. } => Some(()),
            PeerEvent::Welcomed(_) | PeerEvent::Disconnected(_) => {
                panic!("the restart replaced the connection: {event:?}")
            }
            _ => None,
        })
        .await;
    }
    let after = peer.lane();
    peer.close().await;
    (before, after)
}

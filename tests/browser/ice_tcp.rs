//! UDP blocked: clients inside a network namespace whose only way out
//! drops UDP reach the relay over ICE-TCP (its passive candidate, RFC 4571
//! framing) and share one order with a native peer on UDP outside.
//! Chromium gathers active TCP candidates by itself; the native peer
//! offers one with `ConnectOptions::ice_tcp`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use deltamesh::{RunningStack, StackConfig, start};
use deltamesh_proto::Id;
use deltamesh_relay::RelayConfig;
use deltamesh_signal::SignalConfig;
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};

use crate::cdp::Browser;
use crate::common::{
    TOKEN, assert_no_exceptions, eval, exchange_text, exchange_with_native, native_receives,
    page_with, wait, web_dir,
};
use crate::netns::NetNs;

const PER_PEER: u64 = 200;

/// A stack whose signal and relay (UDP and TCP) listen on the host's end
/// of `netns`'s veth pair.
pub(crate) async fn stack_for(netns: &NetNs) -> RunningStack {
    stack_for_with(netns, true).await
}

/// Like [`stack_for`], with or without the relay's ICE-TCP candidates.
async fn stack_for_with(netns: &NetNs, ice_tcp: bool) -> RunningStack {
    let ip = IpAddr::V4(netns.host_ip);
    start(StackConfig {
        listen: SocketAddr::new(ip, 0),
        relay: RelayConfig {
            bind_ip: ip,
            advertised_ip: ip,
            ice_tcp,
            ..RelayConfig::default()
        },
        signal: SignalConfig {
            web_dir: Some(web_dir()),
            ..SignalConfig::new(TOKEN)
        },
    })
    .await
    .expect("stack starts")
}

/// A native peer on UDP (WebRTC only) outside the namespace, receiving
/// its own deltas too.
pub(crate) async fn udp_peer(stack: &RunningStack, session: &str) -> NativePeer {
    let mut options =
        ConnectOptions::new(&stack.signal_url(), session, TOKEN).with_lane(LaneChoice::WebRtc);
    options.echo = true;
    NativePeer::connect(options)
        .await
        .expect("the UDP peer connects")
}

#[test]
fn the_namespace_drops_udp_and_passes_tcp() {
    let netns = NetNs::create();
    netns.block_udp();
    let host = IpAddr::V4(netns.host_ip);
    let udp = std::net::UdpSocket::bind(SocketAddr::new(host, 0)).expect("udp");
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tcp = std::net::TcpListener::bind(SocketAddr::new(host, 0)).expect("tcp");
    let blocked = std::net::TcpListener::bind(SocketAddr::new(host, 0)).expect("tcp");
    let (udp_to, tcp_to) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let blocked_to = blocked.local_addr().unwrap();
    netns.block_tcp_port(blocked_to.port());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            netns.enter();
            let sender = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp inside");
            let _ = sender.send_to(b"ping", udp_to);
            std::net::TcpStream::connect(tcp_to).expect("TCP gets out");
            assert!(
                std::net::TcpStream::connect(blocked_to).is_err(),
                "TCP to a blocked port is refused"
            );
        });
    });
    assert!(udp.recv(&mut [0; 8]).is_err(), "no UDP gets out");
    let (_, from) = tcp.accept().expect("the TCP connection arrived");
    assert_eq!(
        from.ip(),
        IpAddr::V4(netns.ns_ip),
        "from the namespace's end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_with_udp_blocked_connects_over_ice_tcp_and_shares_one_order_with_a_udp_peer() {
    let netns = NetNs::create();
    netns.block_udp();
    let stack = stack_for(&netns).await;
    let session = "ice-tcp-browser";
    let mut native = udp_peer(&stack, session).await;
    let browser = Browser::launch_in(&netns).await;
    let page = page_with(&browser, &stack, session, "{echo: true}").await;
    eval(&page, "window.conn.connected()").await;
    wait(&page, "window.conn.stats().lane === 'webrtc-tcp'", 5).await;
    // The demo says so too.
    let demo = browser
        .new_page(&format!(
            "{}/?session=ice-tcp-demo&lane=webrtc",
            stack.signal_url()
        ))
        .await;
    let lane = "document.querySelector('[data-testid=lane]').textContent";
    wait(&demo, &format!("{lane} === 'webrtc-tcp'"), 20).await;

    exchange_with_native(&page, &mut native, PER_PEER).await;
    assert_no_exceptions(&page);
    native.close().await;
    drop(browser);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_relays_tcp_candidate_chromium_with_udp_blocked_does_not_connect() {
    // The control for the test above: what it connects over is ICE-TCP.
    let netns = NetNs::create();
    netns.block_udp();
    let stack = stack_for_with(&netns, false).await;
    let browser = Browser::launch_in(&netns).await;
    let page = page_with(&browser, &stack, "ice-tcp-off", "{}").await;
    let connected = eval(
        &page,
        "Promise.race([window.conn.connected().then(() => true), \
         new Promise((resolve) => setTimeout(() => resolve(false), 4000))])",
    )
    .await;
    assert_eq!(connected, serde_json::json!(false), "no path without TCP");
    drop(browser);
    stack.shutdown().await.unwrap();
}

/// The native peer inside the namespace, on a runtime of its own on a
/// thread that entered it (so every socket it opens is the namespace's):
/// it sends `PER_PEER` deltas and returns the session's deltas it saw.
fn native_inside(netns: &NetNs, signal_url: String, session: &'static str) -> Vec<(u64, String)> {
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
                    options.lane = LaneChoice::WebRtc;
                    let mut peer = NativePeer::connect(options)
                        .await
                        .expect("the peer inside connects over ICE-TCP");
                    for i in 0..PER_PEER {
                        peer.send(2, Id::default(), exchange_text("inside", i).into_bytes())
                            .await
                            .expect("queued");
                    }
                    let seen = native_receives(&mut peer, 2 * PER_PEER as usize).await;
                    peer.close().await;
                    seen
                })
            })
            .join()
            .expect("the peer inside")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_peer_with_udp_blocked_connects_over_ice_tcp_and_shares_one_order() {
    let netns = Arc::new(NetNs::create());
    netns.block_udp();
    let stack = stack_for(&netns).await;
    let session = "ice-tcp-native";
    let mut outside = udp_peer(&stack, session).await;
    let signal_url = stack.signal_url();
    let inside = tokio::task::spawn_blocking({
        let netns = Arc::clone(&netns);
        move || native_inside(&netns, signal_url, session)
    });
    // Wait for the peer inside to join, then send.
    let joined = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(PeerEvent::PeerJoined(_)) = outside.next_event().await {
                return;
            }
        }
    })
    .await;
    assert!(joined.is_ok(), "the peer inside joined");
    for i in 0..PER_PEER {
        outside
            .send(2, Id::default(), exchange_text("outside", i).into_bytes())
            .await
            .expect("queued");
    }
    let at_outside = native_receives(&mut outside, 2 * PER_PEER as usize).await;
    let at_inside = inside.await.expect("the peer inside ran");
    assert_eq!(at_inside, at_outside, "one order on both sides");
    let seqs: Vec<u64> = at_inside.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=2 * PER_PEER).collect::<Vec<_>>(), "nothing lost");
    outside.close().await;
    stack.shutdown().await.unwrap();
}

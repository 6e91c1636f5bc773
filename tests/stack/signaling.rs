//! Signaling against the real relay: what a client sees when the relay is
//! full, when its offer cannot be used, and when the relay's advertised
//! address is not concrete.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use deltamesh::{StackConfig, start};
use deltamesh_relay::RelayConfig;
use deltamesh_signal::SignalConfig;
use deltamesh_worker::PeerEvent;

use crate::common::{TOKEN, join, next_matching, stack_with};

async fn post_offer(url: &str, sdp: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/sessions/full/peers"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/sdp")
        .body(sdp.to_owned())
        .send()
        .await
        .unwrap()
}

const PLAUSIBLE_BUT_BROKEN_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=this is not sdp\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_relay_answers_503_with_retry_after_and_keeps_its_peers() {
    let stack = stack_with(|relay| relay.max_peers = 1).await;
    let mut first = join(&stack, "full").await;
    let response = post_offer(&stack.signal_url(), PLAUSIBLE_BUT_BROKEN_OFFER).await;
    assert_eq!(response.status(), 503);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // The peer already there is unaffected.
    first.ping(7).await;
    let pong = next_matching(&mut first, Duration::from_secs(5), |e| match e {
        PeerEvent::Pong(n) => Some(n),
        _ => None,
    })
    .await;
    assert_eq!(pong, 7);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_the_relay_cannot_parse_is_a_400_and_the_stack_keeps_serving() {
    let stack = stack_with(|_| {}).await;
    let response = post_offer(&stack.signal_url(), PLAUSIBLE_BUT_BROKEN_OFFER).await;
    assert_eq!(response.status(), 400);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("SDP"),
        "the problem says what is wrong: {body}"
    );
    assert_eq!(stack.relays[0].peer_count(), 0, "nothing half-made is left");
    let peer = join(&stack, "full").await;
    peer.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_relay_refuses_to_advertise_an_unspecified_address() {
    let config = StackConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        relay: RelayConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            advertised_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ..RelayConfig::default()
        },
        signal: SignalConfig::new(TOKEN),
    };
    let error = start(config).await.err().expect("refused");
    assert!(error.to_string().contains("concrete"), "{error}");
}

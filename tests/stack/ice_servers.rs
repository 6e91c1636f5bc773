//! ICE servers (PROTOCOL §10) over real HTTP: signal configured with STUN,
//! TURN and a shared secret hands the native peer TURN REST credentials
//! with its answer, and an authenticated `OPTIONS` lists the same servers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use deltamesh::{StackConfig, start};
use deltamesh_relay::RelayConfig;
use deltamesh_signal::{IceServers, SignalConfig};
use deltamesh_worker::ice_servers::parse_links;
use deltamesh_worker::{ConnectOptions, IceServer, LaneChoice, NativePeer};

use crate::common::TOKEN;

const SECRET: &str = "stack-turn-secret";
const STUN: &str = "stun:127.0.0.1:3478";
const TURN: &str = "turn:127.0.0.1:3478?transport=udp";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Checks `servers` are the STUN and the TURN server, the TURN one with a
/// development-token credential valid for about `lifetime`.
fn assert_servers(servers: &[IceServer], lifetime: u64) {
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert_eq!(servers[0].url, STUN);
    assert_eq!(
        (&servers[0].username, &servers[0].credential),
        (&None, &None)
    );
    assert_eq!(servers[1].url, TURN);
    let username = servers[1].username.clone().expect("a TURN username");
    let (expiry, identity) = username.split_once(':').unwrap();
    assert_eq!(identity, "dev");
    let expiry: u64 = expiry.parse().unwrap();
    let now = unix_now();
    assert!(
        expiry <= now + lifetime && expiry + 10 >= now + lifetime,
        "{username}"
    );
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, SECRET.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD
        .encode(hmac::sign(&key, username.as_bytes()).as_ref());
    assert_eq!(servers[1].credential.as_deref(), Some(expected.as_str()));
}

#[tokio::test]
async fn the_native_peer_gets_the_ice_servers_with_its_answer_and_options_lists_the_same() {
    let mut signal = SignalConfig::new(TOKEN);
    signal.ice_servers = IceServers::new(
        vec![STUN.into()],
        vec![TURN.into()],
        Some(SECRET.as_bytes()),
        Duration::from_secs(600),
    )
    .unwrap();
    let stack = start(StackConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        relay: RelayConfig::default(),
        signal,
    })
    .await
    .unwrap();
    let peer = NativePeer::connect(
        ConnectOptions::new(&stack.signal_url(), "ice", TOKEN).with_lane(LaneChoice::WebRtc),
    )
    .await
    .expect("connects");
    assert_servers(peer.ice_servers(), 600);

    let http = reqwest::Client::new();
    let url = format!("{}/v1/sessions/ice/peers", stack.signal_url());
    let options = http
        .request(reqwest::Method::OPTIONS, &url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    let links = options.headers().get_all("link");
    assert_servers(&parse_links(links.iter().map(|v| v.to_str().unwrap())), 600);

    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "http://elsewhere.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let links = preflight.headers().get_all("link");
    let servers = parse_links(links.iter().map(|v| v.to_str().unwrap()));
    assert_eq!(servers.len(), 1, "a preflight gets no TURN: {servers:?}");
    assert_eq!(servers[0].url, STUN);

    peer.close().await;
    stack.shutdown().await.unwrap();
}

//! TURN with a real coturn (PROTOCOL §10): signal hands out TURN REST
//! credentials made with coturn's `static-auth-secret`; Chromium with
//! `iceTransportPolicy: "relay"` connects through coturn and exchanges
//! deltas with a native peer, its relay candidates trickled to the relay
//! with `PATCH`; coturn refuses a forged and an expired credential.
//!
//! The test starts `turnserver` itself on loopback (`apt-get install
//! coturn`; scripts/test installs it) and kills it at the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use deltamesh::{RunningStack, StackConfig, start};
use deltamesh_relay::RelayConfig;
use deltamesh_signal::{IceServers, SignalConfig};
use deltamesh_testkit::Coturn;
use serde_json::Value;

use crate::cdp::Browser;
use crate::common::{
    TOKEN, assert_no_exceptions, connect_times, eval, native_peer, native_receives, page_with,
    received, wait, web_dir,
};

const SECRET: &str = "coturn-test-secret";
const REALM: &str = "deltamesh.test";
/// A stack serving the web bundle whose signal hands out `coturn` with
/// TURN REST credentials.
async fn stack_with_turn(coturn: &Coturn) -> RunningStack {
    let signal = SignalConfig {
        web_dir: Some(web_dir()),
        ice_servers: IceServers::new(
            Vec::new(),
            vec![coturn.turn_url("udp")],
            Some(SECRET.as_bytes()),
            Duration::from_secs(600),
        )
        .unwrap(),
        ..SignalConfig::new(TOKEN)
    };
    start(StackConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        relay: RelayConfig::default(),
        signal,
    })
    .await
    .expect("stack starts")
}

/// `signal_http_requests_total` counted by signal for `method` with `status`.
pub(crate) async fn requests_counted(stack: &RunningStack, method: &str, status: u16) -> u64 {
    let text = reqwest::get(format!("{}/metrics", stack.signal_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| {
            line.starts_with("signal_http_requests_total{")
                && line.contains(&format!("method=\"{method}\""))
                && line.contains(&format!("status=\"{status}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_connects_through_turn_only_and_exchanges_deltas_with_a_native_peer() {
    let coturn = Coturn::start(SECRET, REALM);
    let stack = stack_with_turn(&coturn).await;
    let mut native = native_peer(&stack, "turn").await;
    let browser = Browser::launch().await;

    let started = Instant::now();
    let page = page_with(&browser, &stack, "turn", r#"{iceTransportPolicy: "relay"}"#).await;
    eval(&page, "window.conn.connected()").await;
    let via_turn = started.elapsed();
    wait(&page, "window.conn.stats().lane === 'turn'", 5).await;
    // The demo says so too.
    let demo = browser
        .new_page(&format!(
            "{}/?session=turn-demo&lane=webrtc&iceTransportPolicy=relay",
            stack.signal_url()
        ))
        .await;
    let lane = "document.querySelector('[data-testid=lane]').textContent";
    wait(&demo, &format!("{lane} === 'turn'"), 20).await;

    // Every packet went through coturn: an allocation for the development
    // token's TURN REST user, a permission and a channel to the relay.
    let relay_ip = stack.relays[0].udp_addrs()[0].ip();
    let log = coturn.log();
    for wanted in [
        "ALLOCATE processed, success".to_owned(),
        "CHANNEL_BIND processed, success".to_owned(),
        format!("peer {relay_ip} lifetime updated"),
    ] {
        assert!(
            log.iter()
                .any(|l| l.contains(&wanted)
                    && (!wanted.contains("processed") || l.contains(":dev>"))),
            "coturn's log has no {wanted:?}: {log:#?}"
        );
    }
    // The relay candidates were gathered after the offer and trickled.
    assert!(requests_counted(&stack, "PATCH", 204).await >= 1);
    for refused in [400, 404, 412, 415, 428, 429] {
        assert_eq!(
            requests_counted(&stack, "PATCH", refused).await,
            0,
            "{refused}"
        );
    }

    // Deltas both ways, in one order.
    eval(
        &page,
        r#"(async () => {
            for (let i = 0; i < 20; i++) {
                await window.conn.send(1, "00000000-0000-0000-0000-000000000001",
                    new TextEncoder().encode("turn-" + i));
            }
            return true;
        })()"#,
    )
    .await;
    let at_native = native_receives(&mut native, 20).await;
    let texts: Vec<String> = at_native.iter().map(|(_, text)| text.clone()).collect();
    assert_eq!(
        texts,
        (0..20).map(|i| format!("turn-{i}")).collect::<Vec<_>>()
    );
    for i in 0..20 {
        native
            .send(
                1,
                deltamesh_proto::Id([1; 16]),
                format!("native-{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    wait(&page, "window.got.length >= 20", 30).await;
    let at_page: Vec<String> = received(&page)
        .await
        .into_iter()
        .map(|(_, _, t)| t)
        .collect();
    assert_eq!(
        at_page,
        (0..20).map(|i| format!("native-{i}")).collect::<Vec<_>>()
    );

    // The same session without TURN, for the comparison.
    let direct = page_with(&browser, &stack, "turn", "{}").await;
    eval(&direct, "window.conn.connected()").await;
    // Connect times in the loaded page (connect() to Welcome: worker,
    // OPTIONS, gathering, offer, ICE, DTLS, SCTP), alternating the policy.
    let times = connect_times(
        &direct,
        "turn-timing",
        &[
            (
                "relay",
                r#"{ iceTransportPolicy: "relay", lane: "webrtc" }"#,
            ),
            ("all", r#"{ iceTransportPolicy: "all", lane: "webrtc" }"#),
        ],
        10,
    )
    .await;
    eprintln!(
        "connect() to Welcome: via TURN/UDP {}; direct UDP {}; first page via TURN \
         (page load included) {} ms",
        times[0].1,
        times[1].1,
        via_turn.as_millis()
    );

    assert_no_exceptions(&page);
    assert_no_exceptions(&direct);
    eval(&page, "window.conn.close()").await;
    eval(&direct, "window.conn.close()").await;
    native.close().await;
    stack.shutdown().await.unwrap();
}

/// Gathers with one TURN server under `iceTransportPolicy: "relay"` in a bare
/// `RTCPeerConnection` of `page` for up to 8 s: the relay candidates it got
/// and the `icecandidateerror` codes.
async fn gather_through(
    page: &crate::cdp::Page,
    url: &str,
    username: &str,
    credential: &str,
) -> Value {
    let script = format!(
        r#"(async () => {{
            const pc = new RTCPeerConnection({{
                iceServers: [{{ urls: {url:?}, username: {username:?}, credential: {credential:?} }}],
                iceTransportPolicy: "relay",
            }});
            const relays = [], errors = [];
            pc.onicecandidate = (e) => {{ if (e.candidate && e.candidate.type === "relay") relays.push(e.candidate.candidate); }};
            pc.onicecandidateerror = (e) => errors.push(e.errorCode);
            pc.createDataChannel("probe");
            await pc.setLocalDescription(await pc.createOffer());
            const deadline = Date.now() + 8000;
            while (Date.now() < deadline && relays.length === 0 && errors.length === 0
                   && pc.iceGatheringState !== "complete") {{
                await new Promise((r) => setTimeout(r, 25));
            }}
            pc.close();
            return {{ relays, errors }};
        }})()"#
    );
    eval(page, &script).await
}

fn turn_password(username: &str, secret: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, username.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_accepts_signals_credentials_and_refuses_forged_and_expired_ones() {
    let coturn = Coturn::start(SECRET, REALM);
    let stack = stack_with_turn(&coturn).await;
    let browser = Browser::launch().await;
    let page = browser
        .new_page(&format!("{}/healthz", stack.signal_url()))
        .await;

    // What signal hands out works.
    let options = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/sessions/turn/peers", stack.signal_url()),
        )
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let links: Vec<&str> = options
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let servers = deltamesh_worker::ice_servers::parse_links(links);
    let turn = &servers[0];
    let (username, credential) = (
        turn.username.clone().unwrap(),
        turn.credential.clone().unwrap(),
    );
    let good = gather_through(&page, &turn.url, &username, &credential).await;
    assert!(
        !good["relays"].as_array().unwrap().is_empty(),
        "signal's credential got no relay candidate: {good}"
    );

    // Forged: the right username, a password made with another secret.
    let forged = turn_password(&username, "not-the-secret");
    let refused = gather_through(&page, &turn.url, &username, &forged).await;
    assert!(
        refused["relays"].as_array().unwrap().is_empty(),
        "{refused}"
    );
    assert!(
        refused["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == 401),
        "no 401 for a forged credential: {refused}"
    );

    // Expired: a correctly signed credential whose expiry has passed.
    let past = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    let expired_user = format!("{past}:dev");
    let expired = gather_through(
        &page,
        &turn.url,
        &expired_user,
        &turn_password(&expired_user, SECRET),
    )
    .await;
    assert!(
        expired["relays"].as_array().unwrap().is_empty(),
        "{expired}"
    );
    assert!(
        expired["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == 401),
        "no 401 for an expired credential: {expired}"
    );

    assert_no_exceptions(&page);
    page.close().await;
    stack.shutdown().await.unwrap();
}

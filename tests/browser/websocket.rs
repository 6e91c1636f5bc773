//! The WebSocket lane (PROTOCOL §11) from Chromium: the worker opens the
//! lane socket itself and runs the same protocol over it as over data
//! channels, so a page on the lane shares one order with a native peer on
//! WebRTC, large deltas go as fragments and presence arrives; a refused
//! token is reported as such; with UDP and the relay's ICE-TCP port
//! blocked, a page on "auto" falls back to the lane by itself; and a page
//! moves from the lane to WebRTC when the network lets it (after
//! `retryWebrtcMs`) and back when it stops, resuming each time.

use std::str::FromStr;
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_worker::{PeerEvent, ReceivedDelta};
use serde_json::{Value, json};

use crate::cdp::{Browser, Page};
use crate::common::{
    assert_no_exceptions, connect_times, eval, exchange_with_native, page_with, wait,
};
use crate::ice_tcp::{stack_for, udp_peer};
use crate::netns::NetNs;

const PER_PEER: u64 = 200;
/// A payload long enough to be sent as fragments (64 KiB frames).
const LARGE: usize = 300 * 1024;

/// `len` letters cycling from `a` to `z`, after `tag`.
fn large_text(tag: &str, len: usize) -> String {
    let mut text = format!("{tag}:");
    text.extend((0..len).map(|i| char::from(b'a' + (i % 26) as u8)));
    text
}

/// The page's version of [`large_text`].
const LARGE_TEXT_JS: &str = r#"window.largeText = (tag, len) => {
    const letters = new Array(len);
    for (let i = 0; i < len; i++) letters[i] = String.fromCharCode(97 + (i % 26));
    return tag + ":" + letters.join("");
}; true"#;

/// How many offers `page`'s worker has posted (it logs each).
fn offers_posted(page: &Page) -> usize {
    page.console()
        .iter()
        .filter(|line| line.contains("posting the offer"))
        .count()
}

async fn lane_of(page: &Page) -> Value {
    eval(page, "window.conn.stats().lane").await
}

/// The next delta `native` receives (other events skipped).
async fn next_delta(native: &mut deltamesh_worker::NativePeer) -> ReceivedDelta {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), native.next_event())
            .await
            .expect("a delta within 30 s")
            .expect("connection alive");
        if let PeerEvent::Delta(delta) = event {
            return delta;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_the_websocket_lane_exchanges_deltas_fragments_and_presence_with_a_native_peer() {
    let stack = crate::common::stack().await;
    let session = "websocket-lane";
    let mut native = udp_peer(&stack, session).await;
    let browser = Browser::launch().await;
    let page = page_with(
        &browser,
        &stack,
        session,
        r#"{lane: "websocket", echo: true}"#,
    )
    .await;
    eval(&page, "window.conn.connected()").await;
    wait(&page, "window.conn.stats().lane === 'websocket'", 5).await;
    assert_eq!(
        eval(&page, "window.conn.stats().transport").await,
        json!("websocket")
    );
    // Nothing went the WebRTC way: no offer was posted.
    assert_eq!(offers_posted(&page), 0, "{:#?}", page.console());

    exchange_with_native(&page, &mut native, PER_PEER).await;

    // Large deltas go as fragments over the lane, both ways.
    eval(&page, LARGE_TEXT_JS).await;
    eval(
        &page,
        &format!(
            r#"window.conn.send(5, "00000000-0000-4000-8000-000000000012",
                new TextEncoder().encode(window.largeText("page", {LARGE}))).then(() => true)"#
        ),
    )
    .await;
    let delta = next_delta(&mut native).await;
    assert_eq!(delta.kind, 5);
    assert_eq!(
        delta.payload(),
        large_text("page", LARGE).as_bytes(),
        "the page's large delta arrived whole"
    );
    native
        .send(6, Id::default(), large_text("native", LARGE).into_bytes())
        .await
        .expect("queued");
    wait(&page, "window.got.some((d) => d.kind === 6)", 30).await;
    let whole = eval(
        &page,
        &format!(
            "window.got.find((d) => d.kind === 6).text === window.largeText('native', {LARGE})"
        ),
    )
    .await;
    assert_eq!(whole, json!(true), "the native large delta arrived whole");

    // Presence over the lane reaches the native peer.
    eval(
        &page,
        "window.conn.setPresence(new TextEncoder().encode('on-the-lane')), true",
    )
    .await;
    let presence = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match native.next_event().await.expect("connection alive") {
                PeerEvent::Presence { state, .. } if state == b"on-the-lane" => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        presence.is_ok(),
        "the page's presence reached the native peer"
    );

    // Connect times in the loaded page, alternating the lanes.
    let times = connect_times(
        &page,
        "lane-timing",
        &[
            ("websocket", r#"{ lane: "websocket" }"#),
            ("webrtc", r#"{ lane: "webrtc" }"#),
        ],
        10,
    )
    .await;
    let limited = crate::turn::requests_counted(&stack, "GET", 429).await
        + crate::turn::requests_counted(&stack, "POST", 429).await;
    eprintln!(
        "connect() to Welcome in Chromium: WebSocket lane {}; WebRTC (UDP) {}; \
         rate-limited requests {limited}",
        times[0].1, times[1].1
    );

    assert_no_exceptions(&page);
    eval(&page, "window.conn.close()").await;
    native.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_on_the_websocket_lane_fails_with_signals_reason_and_stops() {
    let stack = crate::common::stack().await;
    let browser = Browser::launch().await;
    let page = browser
        .new_page(&format!("{}/healthz", stack.signal_url()))
        .await;
    let script = r#"(async () => {
        const dm = await import("/pkg/deltamesh_worker.js");
        await dm.default();
        window.states = [];
        const conn = await dm.connect("websocket-refused", "not-the-token",
            { lane: "websocket", firstRetryMs: 50 });
        conn.onState((s) => window.states.push(s));
        window.conn = conn;
        return true;
    })()"#;
    eval(&page, script).await;
    wait(&page, "window.conn.state() === 'failed'", 10).await;
    let detail = eval(&page, "window.conn.detail()").await;
    let detail = detail.as_str().unwrap();
    assert!(detail.contains("401"), "{detail}");
    assert!(detail.contains("not retrying"), "{detail}");
    // It stays failed: no retry with a token that cannot work.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let states = eval(&page, "window.states.map((s) => s.state)").await;
    assert_eq!(states, json!(["connecting", "failed"]), "{states}");
    assert_no_exceptions(&page);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_and_ice_tcp_blocked_chromium_on_auto_falls_back_to_the_websocket_lane() {
    let netns = NetNs::create();
    netns.block_udp();
    let stack = stack_for(&netns).await;
    // The relay's ICE-TCP port too; signal's HTTP port stays reachable.
    for tcp in stack.relays[0].tcp_addrs() {
        netns.block_tcp_port(tcp.port());
    }
    let session = "websocket-fallback";
    let mut native = udp_peer(&stack, session).await;
    let browser = Browser::launch_in(&netns).await;

    // The demo on "auto" (its default) ends up on the WebSocket lane.
    let demo = browser
        .new_page(&format!(
            "{}/?session=websocket-fallback-demo",
            stack.signal_url()
        ))
        .await;
    let lane = "document.querySelector('[data-testid=lane]').textContent";
    wait(&demo, &format!("{lane} === 'websocket'"), 15).await;

    let started = Instant::now();
    let page = page_with(&browser, &stack, session, r#"{lane: "auto", echo: true}"#).await;
    eval(&page, "window.conn.connected()").await;
    let fell_back = started.elapsed();
    eprintln!("auto with UDP and ICE-TCP blocked: on the WebSocket lane after {fell_back:?}");
    assert!(
        fell_back < Duration::from_secs(8),
        "fell back within a few seconds, not {fell_back:?}"
    );
    assert_eq!(lane_of(&page).await, json!("websocket"));

    // WebRTC was tried first.
    assert_eq!(offers_posted(&page), 1, "{:#?}", page.console());

    exchange_with_native(&page, &mut native, PER_PEER).await;

    // Dropped, the page reconnects straight over the lane that worked
    // (no offer, no 3 s wait for WebRTC) and resumes.
    let peer = eval(&page, "window.conn.peerId()").await;
    let peer = Id::from_str(peer.as_str().expect("a peer id")).expect("an id");
    let dropped = Instant::now();
    stack.relays[0]
        .disconnect(session, peer, "killed by the test")
        .await
        .expect("the relay knows the peer");
    wait(
        &page,
        "window.states.some((s) => s.state === 'reconnecting') && window.conn.state() === 'connected'",
        10,
    )
    .await;
    let back = dropped.elapsed();
    eprintln!("reconnect on the remembered WebSocket lane: {back:?}");
    assert!(back < Duration::from_secs(3), "{back:?}");
    assert_eq!(offers_posted(&page), 1, "no WebRTC attempt on reconnect");
    assert_eq!(lane_of(&page).await, json!("websocket"));
    exchange_with_native(&page, &mut native, PER_PEER).await;

    assert_no_exceptions(&page);
    assert_no_exceptions(&demo);
    native.close().await;
    drop(browser);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_moves_from_the_websocket_lane_to_webrtc_and_back_losing_and_doubling_nothing() {
    let netns = NetNs::create();
    let block = |netns: &NetNs, stack: &deltamesh::RunningStack| {
        netns.block_udp();
        for tcp in stack.relays[0].tcp_addrs() {
            netns.block_tcp_port(tcp.port());
        }
    };
    let stack = stack_for(&netns).await;
    block(&netns, &stack);
    let session = "websocket-and-back";
    let mut native = udp_peer(&stack, session).await;
    let browser = Browser::launch_in(&netns).await;
    let page = page_with(
        &browser,
        &stack,
        session,
        r#"{lane: "auto", echo: true, retryWebrtcMs: 1000}"#,
    )
    .await;
    eval(&page, "window.conn.connected()").await;
    assert_eq!(lane_of(&page).await, json!("websocket"));
    let peer_id = || async { eval(&page, "window.conn.peerId()").await };
    let first_id = peer_id().await;
    exchange_with_native(&page, &mut native, PER_PEER).await;

    // The network lets UDP through again (ICE-TCP stays blocked). Once
    // `retryWebrtcMs` has passed on the lane, the next reconnect tries
    // WebRTC, and resumes there what was sent meanwhile.
    netns.unblock_udp();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let id = Id::from_str(first_id.as_str().unwrap()).unwrap();
    stack.relays[0]
        .disconnect(session, id, "killed by the test")
        .await
        .expect("the relay knows the peer");
    exchange_with_native(&page, &mut native, PER_PEER).await;
    wait(&page, "window.conn.stats().lane === 'webrtc-udp'", 10).await;
    assert_eq!(offers_posted(&page), 2, "one offer at first, one now");
    let second_id = peer_id().await;
    assert_ne!(second_id, first_id, "a reconnect is a new connection");

    // Blocked again: the WebRTC path goes silent, the reconnect's WebRTC
    // attempt gets no answer within 3 s, and the lane takes over.
    block(&netns, &stack);
    exchange_with_native(&page, &mut native, PER_PEER).await;
    assert_eq!(lane_of(&page).await, json!("websocket"));
    assert_ne!(peer_id().await, second_id);

    let states = eval(&page, "window.states.map((s) => s.state)").await;
    let reconnects = states
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| *s == "reconnecting")
        .count();
    assert_eq!(reconnects, 2, "{states}");
    assert_no_exceptions(&page);
    native.close().await;
    drop(browser);
    stack.shutdown().await.unwrap();
}

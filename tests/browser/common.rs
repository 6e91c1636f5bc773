//! Shared set-up for the browser tests: a one-process stack serving the
//! web bundle, and pages that use the browser peer's public API the way an
//! application does (`import`, `connect`, callbacks).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use deltamesh::{RunningStack, StackConfig, start, start_on};
use deltamesh_proto::Id;
use deltamesh_relay::RelayConfig;
use deltamesh_signal::SignalConfig;
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};
use serde_json::Value;

use crate::cdp::{Browser, Page};

/// The development token the test stacks accept.
pub(crate) const TOKEN: &str = "browser-test-token";

/// The bundle `scripts/build-web` makes (the README's test command builds
/// it before the tests run).
pub(crate) fn web_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/web");
    assert!(
        dir.join("pkg/deltamesh_worker.js").is_file() && dir.join("index.html").is_file(),
        "no web bundle in {}: run scripts/build-web first",
        dir.display()
    );
    dir
}

/// The stack's configuration for browser tests: the web bundle, this relay.
fn config(relay: RelayConfig) -> StackConfig {
    StackConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        relay,
        signal: SignalConfig {
            web_dir: Some(web_dir()),
            ..SignalConfig::new(TOKEN)
        },
    }
}

/// A stack on free ports serving the web bundle with this relay configuration.
pub(crate) async fn stack_with(relay: RelayConfig) -> RunningStack {
    start(config(relay)).await.expect("stack starts")
}

/// A stack serving the web bundle, signal on a listener the test bound.
pub(crate) async fn stack_on(listener: tokio::net::TcpListener) -> RunningStack {
    start_on(listener, config(RelayConfig::default()))
        .await
        .expect("stack starts")
}

/// A stack on free ports serving the web bundle.
pub(crate) async fn stack() -> RunningStack {
    stack_with(RelayConfig::default()).await
}

/// A native peer joined to `session`.
pub(crate) async fn native_peer(stack: &RunningStack, session: &str) -> NativePeer {
    NativePeer::connect(
        ConnectOptions::new(&stack.signal_url(), session, TOKEN).with_lane(LaneChoice::WebRtc),
    )
    .await
    .expect("native peer connects")
}

/// The next `count` deltas `native` receives, as `(seq, payload text)`.
pub(crate) async fn native_receives(native: &mut NativePeer, count: usize) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(30), native.next_event())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} deltas arrived", seen.len()))
            .expect("connection alive");
        if let PeerEvent::Delta(delta) = event {
            seen.push((
                delta.seq,
                String::from_utf8_lossy(delta.payload()).into_owned(),
            ));
        }
    }
    seen
}

/// A page of `stack`'s origin that has imported the bundle and called
/// `connect(session, TOKEN, options)` (`options` is a JS object literal;
/// unless it names a `lane`, the page uses WebRTC only, so a test about
/// WebRTC cannot pass by falling back to the WebSocket lane).
/// The page records into globals: `got` (received deltas as
/// `{seq, origin, kind, text}`), `states` (every state change), `peerChanges`.
pub(crate) async fn connected_page(browser: &Browser, stack: &RunningStack, session: &str) -> Page {
    let page = page_with(browser, stack, session, "{}").await;
    page.eval("window.conn.connected()")
        .await
        .expect("the page connects");
    page
}

/// Like [`connected_page`] without waiting for the connection.
pub(crate) async fn page_with(
    browser: &Browser,
    stack: &RunningStack,
    session: &str,
    options: &str,
) -> Page {
    page_at(browser, &stack.signal_url(), session, options).await
}

/// Like [`page_with`], on the page of the signal at `signal_url` (a fleet's).
pub(crate) async fn page_at(
    browser: &Browser,
    signal_url: &str,
    session: &str,
    options: &str,
) -> Page {
    // Any page of the origin will do; the API needs no markup.
    let page = browser.new_page(&format!("{signal_url}/healthz")).await;
    let script = format!(
        r#"(async () => {{
            const dm = await import("/pkg/deltamesh_worker.js");
            await dm.default();
            window.got = [];
            window.states = [];
            window.peerChanges = [];
            const conn = await dm.connect({session:?}, {TOKEN:?},
                Object.assign({{lane: "webrtc"}}, {options}));
            conn.onDelta((d) => window.got.push({{
                seq: d.seq, origin: d.origin, kind: d.kind, docId: d.docId,
                text: new TextDecoder().decode(d.payload),
            }}));
            conn.onState((s) => window.states.push(s));
            conn.onPeer((p) => window.peerChanges.push(p));
            window.conn = conn;
            return true;
        }})()"#
    );
    page.eval(&script)
        .await
        .expect("the bundle loads and connect starts");
    page
}

/// Evaluates `expression`, which must succeed.
pub(crate) async fn eval(page: &Page, expression: &str) -> Value {
    page.eval(expression)
        .await
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
}

/// Waits up to `secs` seconds for `expression` to be true.
pub(crate) async fn wait(page: &Page, expression: &str, secs: u64) {
    page.wait_for(expression, Duration::from_secs(secs)).await;
}

/// Received deltas as `(seq, origin, text)`, in arrival order.
pub(crate) async fn received(page: &Page) -> Vec<(u64, String, String)> {
    let got = eval(page, "window.got").await;
    got.as_array()
        .expect("an array")
        .iter()
        .map(|d| {
            (
                d["seq"].as_u64().expect("seq"),
                d["origin"].as_str().expect("origin").to_owned(),
                d["text"].as_str().expect("text").to_owned(),
            )
        })
        .collect()
}

/// No uncaught exception in the page or its worker.
pub(crate) fn assert_no_exceptions(page: &Page) {
    let exceptions = page.exceptions();
    assert!(
        exceptions.is_empty(),
        "uncaught exceptions: {exceptions:#?}\nconsole: {:#?}",
        page.console()
    );
}

/// A page of `stack`'s origin connected to `session` (waited for) that
/// records the v1.1 callbacks into globals: `presence` (each peer's latest
/// state as text, `""` when cleared), `presenceLog` (every `[peerId, text]`),
/// `messages` (every direct `[peerId, text]`) and `notices`. The callbacks
/// are set before the worker can report anything.
pub(crate) async fn v11_page(browser: &Browser, stack: &RunningStack, session: &str) -> Page {
    let page = browser
        .new_page(&format!("{}/healthz", stack.signal_url()))
        .await;
    let script = format!(
        r#"(async () => {{
            const dm = await import("/pkg/deltamesh_worker.js");
            await dm.default();
            window.presence = {{}};
            window.presenceLog = [];
            window.messages = [];
            window.notices = [];
            const text = (bytes) => new TextDecoder().decode(bytes);
            const conn = await dm.connect({session:?}, {TOKEN:?}, {{lane: "webrtc"}});
            conn.onPresence((peer, state) => {{
                window.presence[peer] = text(state);
                window.presenceLog.push([peer, text(state)]);
            }});
            conn.onMessage((peer, payload) => window.messages.push([peer, text(payload)]));
            conn.onNotice((n) => window.notices.push(n));
            window.conn = conn;
            await conn.connected();
            return true;
        }})()"#
    );
    page.eval(&script)
        .await
        .expect("the bundle loads and the page connects");
    page
}

/// The text of delta `i` from `tag` in [`exchange_with_native`] (sizes
/// vary, up to 400 bytes); the page makes the same.
pub(crate) fn exchange_text(tag: &str, i: u64) -> String {
    format!("{tag}-{i}-{}", "z".repeat((i * 17 % 400) as usize))
}

/// Sends `per_peer` deltas from `page` and from `native` at once (both
/// connected with `echo`), then checks that both saw all `2 * per_peer` in
/// one order, each sender's in its own order, nothing lost or doubled.
pub(crate) async fn exchange_with_native(page: &Page, native: &mut NativePeer, per_peer: u64) {
    let script = format!(
        r#"(async () => {{
            const sends = [];
            for (let i = 0; i < {per_peer}; i++) {{
                const text = `page-${{i}}-` + 'z'.repeat(i * 17 % 400);
                sends.push(window.conn.send(2, "00000000-0000-4000-8000-000000000011",
                    new TextEncoder().encode(text)));
            }}
            await Promise.all(sends);
            return true;
        }})()"#
    );
    let before = eval(page, "window.got.length").await.as_u64().unwrap();
    let page_sends = eval(page, &script);
    let native_sends = async {
        for i in 0..per_peer {
            native
                .send(2, Id::default(), exchange_text("native", i).into_bytes())
                .await
                .expect("queued");
        }
    };
    tokio::join!(page_sends, native_sends);
    let at_native = native_receives(native, 2 * per_peer as usize).await;
    let wanted = before + 2 * per_peer;
    wait(page, &format!("window.got.length >= {wanted}"), 60).await;
    let at_page: Vec<(u64, String)> = received(page)
        .await
        .into_iter()
        .skip(before as usize)
        .map(|(seq, _, text)| (seq, text))
        .collect();
    assert_eq!(at_page, at_native, "one order on both sides");
    let first = at_page[0].0;
    let seqs: Vec<u64> = at_page.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (first..first + 2 * per_peer).collect::<Vec<_>>(),
        "nothing lost or doubled"
    );
    for tag in ["page", "native"] {
        let texts: Vec<&str> = at_page
            .iter()
            .map(|(_, text)| text.as_str())
            .filter(|t| t.starts_with(&format!("{tag}-")))
            .collect();
        let expected: Vec<String> = (0..per_peer).map(|i| exchange_text(tag, i)).collect();
        assert_eq!(texts, expected, "{tag}'s deltas intact, in its order");
    }
}

/// Connects in `page` (already loaded) `rounds` times for each of
/// `variants` (a name and the JS `connect` options), alternating, paced
/// within signal's per-token rate (a 429's `Retry-After` of 1 s would show
/// as an outlier); says, per name, `connect()` to Welcome as
/// "p50 … ms, max … ms over N". Printed for docs/BENCHMARKS.md.
pub(crate) async fn connect_times(
    page: &Page,
    session: &str,
    variants: &[(&str, &str)],
    rounds: usize,
) -> Vec<(String, String)> {
    let options: Vec<String> = variants
        .iter()
        .map(|(name, options)| format!("[{name:?}, {options}]"))
        .collect();
    let script = format!(
        r#"(async () => {{
            const dm = await import("/pkg/deltamesh_worker.js");
            const variants = [{}];
            const times = Object.fromEntries(variants.map(([name]) => [name, []]));
            for (let i = 0; i < {rounds}; i++) {{
                for (const [name, options] of variants) {{
                    const start = performance.now();
                    const conn = await dm.connect({session:?}, {TOKEN:?}, options);
                    await conn.connected();
                    times[name].push(performance.now() - start);
                    await conn.close();
                    // A connect makes about four requests; signal takes
                    // 10 a second per token.
                    await new Promise((r) => setTimeout(r, 300));
                }}
            }}
            return times;
        }})()"#,
        options.join(", ")
    );
    let times = eval(page, &script).await;
    variants
        .iter()
        .map(|(name, _)| {
            let mut ms: Vec<f64> = times[*name]
                .as_array()
                .expect("times per variant")
                .iter()
                .map(|t| t.as_f64().expect("a time"))
                .collect();
            ms.sort_by(f64::total_cmp);
            let summary = format!(
                "p50 {:.0} ms, max {:.0} ms over {}",
                ms[ms.len() / 2],
                ms[ms.len() - 1],
                ms.len()
            );
            ((*name).to_owned(), summary)
        })
        .collect()
}

//! The browser benchmark: headless Chromium pages using the browser peer's
//! public API against a one-process stack, each figure printed beside the
//! same measurement with native peers in the same run (the baseline).
//!
//! Needs the web bundle (`scripts/build-web`) and Debian's chromium.
//! Run: `cargo bench --bench browser` (add `-- --quick` for a short run).

#[path = "../tests/browser/cdp.rs"]
mod cdp;
// cdp.rs can launch Chromium inside a network namespace; the benchmark
// does not, so the namespace's API is unused here.
#[allow(dead_code)]
#[path = "../tests/support/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cdp::{Browser, Page};
use deltamesh::{RunningStack, StackConfig, start};
use deltamesh_proto::Id;
use deltamesh_relay::{Rate, RelayConfig};
use deltamesh_signal::{RateLimit, SignalConfig};
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};

const TOKEN: &str = "bench-token";
const DOC: &str = "00000000-0000-4000-8000-000000000009";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (connects, latency_deltas, bulk_deltas) = if quick {
        (5, 300, 3_000)
    } else {
        (20, 2_000, 20_000)
    };
    let web_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/web");
    assert!(
        web_dir.join("pkg/deltamesh_worker.js").is_file(),
        "run scripts/build-web first"
    );
    let stack = start(StackConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        // The benchmark measures the path, not the abuse limits.
        relay: RelayConfig {
            delta_rate: Rate::UNLIMITED,
            byte_rate: Rate::UNLIMITED,
            ..RelayConfig::default()
        },
        signal: SignalConfig {
            web_dir: Some(web_dir),
            address_rate: RateLimit::OFF,
            token_rate: RateLimit::OFF,
            ..SignalConfig::new(TOKEN)
        },
    })
    .await
    .expect("stack starts");
    let browser = Browser::launch().await;
    println!(
        "deltamesh browser benchmark ({} run)\n",
        if quick { "quick" } else { "full" }
    );

    // Connect: script start → import → connected → first ack, per page.
    let mut browser_connect = Vec::new();
    let mut browser_first_ack = Vec::new();
    // Page's wasm loaded; worker started and ready; offer to welcome.
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..connects {
        let page = page(&browser, &stack).await;
        let session = format!("connect-{i}");
        let marks = eval(
            &page,
            &format!(
                r#"(async () => {{
                const t0 = performance.now();
                const dm = await import("/pkg/deltamesh_worker.js");
                await dm.default();
                const loaded = performance.now();
                const conn = await dm.connect({session:?}, {TOKEN:?}, {{}});
                const started = performance.now();
                await conn.connected();
                const t1 = performance.now();
                await conn.send(1, {DOC:?}, new Uint8Array(8));
                const t2 = performance.now();
                await conn.close();
                return [t1 - t0, t2 - t0, loaded - t0, started - loaded, t1 - started];
            }})()"#
            ),
        )
        .await;
        browser_connect.push(ms(&marks[0]));
        browser_first_ack.push(ms(&marks[1]));
        phases[0].push(ms(&marks[2]));
        phases[1].push(ms(&marks[3]));
        phases[2].push(ms(&marks[4]));
        page.close().await;
    }
    let mut native_connect = Vec::new();
    let mut native_first_ack = Vec::new();
    for i in 0..connects {
        let started = Instant::now();
        let mut peer = native(&stack, &format!("native-connect-{i}")).await;
        native_connect.push(started.elapsed());
        peer.send(1, Id::default(), vec![0; 8])
            .await
            .expect("queued");
        while !matches!(peer.next_event().await, Some(PeerEvent::Acked { .. })) {}
        native_first_ack.push(started.elapsed());
        peer.close().await;
    }
    let names = [
        "import + instantiate in the page",
        "worker started and ready",
        "offer → welcome",
    ];
    for (name, phase) in names.iter().zip(&mut phases) {
        phase.sort_unstable();
        let p50 = percentile(phase, 0.5).as_secs_f64() * 1e3;
        println!("  connect phase: {name:<33} p50 {p50:>8.2} ms");
    }
    row(
        "connect: script start → welcome (p50)",
        &mut browser_connect,
        &mut native_connect,
        0.5,
    );
    row(
        "connect: script start → first ack (p50)",
        &mut browser_first_ack,
        &mut native_first_ack,
        0.5,
    );

    // Latency page → relay → page, one delta every 2 ms, clock shared by
    // both pages of one browser.
    let session = "latency";
    let sender = connected_page(&browser, &stack, session).await;
    let receiver = connected_page(&browser, &stack, session).await;
    eval(
        &receiver,
        r#"window.lat = []; window.conn.onDelta((d) => {
            const sent = Number(new TextDecoder().decode(d.payload));
            window.lat.push(performance.timeOrigin + performance.now() - sent);
        }); true"#,
    )
    .await;
    eval(
        &sender,
        &format!(
            r#"(async () => {{
            for (let i = 0; i < {latency_deltas}; i++) {{
                const now = String(performance.timeOrigin + performance.now());
                window.conn.send(1, {DOC:?}, new TextEncoder().encode(now));
                await new Promise((r) => setTimeout(r, 2));
            }}
            return true;
        }})()"#
        ),
    )
    .await;
    receiver
        .wait_for(
            &format!("window.lat.length >= {latency_deltas}"),
            Duration::from_secs(60),
        )
        .await;
    let mut browser_latency: Vec<Duration> = eval(&receiver, "window.lat")
        .await
        .as_array()
        .expect("latencies")
        .iter()
        .map(ms)
        .collect();
    let mut native_latency = native_latency(&stack, latency_deltas).await;
    row(
        "latency page → page (p50)",
        &mut browser_latency,
        &mut native_latency,
        0.5,
    );
    row(
        "latency page → page (p99)",
        &mut browser_latency,
        &mut native_latency,
        0.99,
    );

    // Throughput: one page sends `bulk_deltas` 100 B deltas as fast as acks
    // allow; then receives as many from a native sender.
    let page_send = eval(
        &sender,
        &format!(
            r#"(async () => {{
            const payload = new Uint8Array(100);
            const t0 = performance.now();
            // A sliding window of 2,000 unacknowledged sends, as the native
            // baseline keeps.
            let started = 0, acked = 0;
            await new Promise((done) => {{
                const pump = () => {{
                    while (started < {bulk_deltas} && started - acked < 2000) {{
                        started++;
                        window.conn.send(2, {DOC:?}, payload).then(() => {{
                            if (++acked === {bulk_deltas}) done(); else pump();
                        }});
                    }}
                }};
                pump();
            }});
            return {bulk_deltas} / ((performance.now() - t0) / 1000);
        }})()"#
        ),
    )
    .await
    .as_f64()
    .expect("a rate");
    receiver
        .wait_for(
            &format!(
                "window.conn.stats().deltasReceived >= {}",
                latency_deltas + bulk_deltas
            ),
            Duration::from_secs(120),
        )
        .await;
    let mut native_sender = native(&stack, session).await;
    eval(
        &receiver,
        &format!(
            r#"window.bulk = 0; window.conn.onDelta((d) => {{
                if (window.bulk === 0) window.bulkStart = performance.now();
                if (++window.bulk === {bulk_deltas}) window.bulkEnd = performance.now();
            }}); true"#
        ),
    )
    .await;
    send_bulk(&mut native_sender, bulk_deltas).await;
    receiver
        .wait_for(
            &format!("window.bulk >= {bulk_deltas}"),
            Duration::from_secs(120),
        )
        .await;
    let page_receive = eval(
        &receiver,
        &format!("{bulk_deltas} / ((window.bulkEnd - window.bulkStart) / 1000)"),
    )
    .await
    .as_f64()
    .expect("a rate");
    let native_rate = native_throughput(&stack, bulk_deltas).await;
    println!(
        "{:<44} {:>12.0} /s {:>12.0} /s {:>7.2}×",
        "one page sends (acked 100 B deltas)",
        page_send,
        native_rate,
        page_send / native_rate
    );
    println!(
        "{:<44} {:>12.0} /s {:>12.0} /s {:>7.2}×",
        "one page receives (100 B deltas)",
        page_receive,
        native_rate,
        page_receive / native_rate
    );
    for page in [&sender, &receiver] {
        let exceptions = page.exceptions();
        assert!(
            exceptions.is_empty(),
            "{exceptions:?}\n{:?}",
            page.console()
        );
    }
    native_sender.close().await;
    stack.shutdown().await.expect("clean shutdown");
}

async fn page(browser: &Browser, stack: &RunningStack) -> Page {
    browser
        .new_page(&format!("{}/healthz", stack.signal_url()))
        .await
}

async fn connected_page(browser: &Browser, stack: &RunningStack, session: &str) -> Page {
    let page = page(browser, stack).await;
    eval(
        &page,
        &format!(
            r#"(async () => {{
            const dm = await import("/pkg/deltamesh_worker.js");
            await dm.default();
            window.conn = await dm.connect({session:?}, {TOKEN:?}, {{}});
            await window.conn.connected();
            return true;
        }})()"#
        ),
    )
    .await;
    page
}

async fn eval(page: &Page, expression: &str) -> serde_json::Value {
    page.eval(expression)
        .await
        .unwrap_or_else(|e| panic!("{e}\nconsole: {:?}", page.console()))
}

fn ms(value: &serde_json::Value) -> Duration {
    Duration::from_secs_f64(value.as_f64().expect("milliseconds").max(0.0) / 1000.0)
}

async fn native(stack: &RunningStack, session: &str) -> NativePeer {
    NativePeer::connect(
        ConnectOptions::new(&stack.signal_url(), session, TOKEN).with_lane(LaneChoice::WebRtc),
    )
    .await
    .expect("native peer connects")
}

fn unix_micros() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        * 1e6
}

/// The same latency measurement between two native peers.
async fn native_latency(stack: &RunningStack, count: usize) -> Vec<Duration> {
    let sender = native(stack, "native-latency").await;
    let mut receiver = native(stack, "native-latency").await;
    let sending = tokio::spawn(async move {
        for _ in 0..count {
            let now = unix_micros().to_string().into_bytes();
            sender.send(1, Id::default(), now).await.expect("queued");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sender
    });
    let mut latencies = Vec::new();
    while latencies.len() < count {
        if let Some(PeerEvent::Delta(delta)) = receiver.next_event().await {
            let sent: f64 = std::str::from_utf8(delta.payload())
                .expect("utf-8")
                .parse()
                .expect("a time");
            latencies.push(Duration::from_secs_f64(
                (unix_micros() - sent).max(0.0) / 1e6,
            ));
        }
    }
    sending.await.expect("sender").close().await;
    receiver.close().await;
    latencies
}

async fn send_bulk(peer: &mut NativePeer, count: usize) {
    let mut acked = 0;
    let mut sent = 0;
    while acked < count {
        while sent < count && sent - acked < 2000 {
            match peer.send(2, Id::default(), vec![0; 100]).await {
                Ok(_) => sent += 1,
                Err(_) => break,
            }
        }
        if let Some(PeerEvent::Acked { .. }) = peer.next_event().await {
            acked += 1;
        }
    }
}

/// Deltas/s from one native peer to another through the relay.
async fn native_throughput(stack: &RunningStack, count: usize) -> f64 {
    let mut sender = native(stack, "native-bulk").await;
    let mut receiver = native(stack, "native-bulk").await;
    let started = Instant::now();
    let receiving = tokio::spawn(async move {
        let mut got = 0;
        while got < count {
            if let Some(PeerEvent::Delta(_)) = receiver.next_event().await {
                got += 1;
            }
        }
        receiver
    });
    send_bulk(&mut sender, count).await;
    let receiver = receiving.await.expect("receiver");
    let rate = count as f64 / started.elapsed().as_secs_f64();
    sender.close().await;
    receiver.close().await;
    rate
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn row(name: &str, browser: &mut [Duration], native: &mut [Duration], p: f64) {
    browser.sort_unstable();
    native.sort_unstable();
    let (b, n) = (percentile(browser, p), percentile(native, p));
    println!(
        "{name:<44} browser {:>8.2} ms  native {:>8.2} ms {:>7.2}×",
        b.as_secs_f64() * 1e3,
        n.as_secs_f64() * 1e3,
        b.as_secs_f64() / n.as_secs_f64()
    );
}

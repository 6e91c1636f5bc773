//! Large deltas (PROTOCOL §6) through the browser peer: a 16 MiB delta
//! from a page reaches another page and a native peer whole, once, under
//! one seq, while small deltas from a third page keep flowing; a 17 MiB one
//! is refused, by the page's `send` up front and by the relay on its first
//! fragment.

use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;
use deltamesh_proto::fragment::{DEFAULT_MAX_DELTA_SIZE, FRAGMENT_BODY, fragments};
use deltamesh_proto::frame::{FRAME_HEADER_LEN, FrameHeader};
use deltamesh_proto::pb::RejectReason;
use deltamesh_worker::{NativePeer, PeerEvent};

use crate::cdp::{Browser, Page};
use crate::common::{self, assert_no_exceptions, eval, wait};

const DOC: &str = "00000000-0000-4000-8000-000000000016";
/// The largest payload a 16 MiB delta frame (header included) carries.
const LARGE: usize = DEFAULT_MAX_DELTA_SIZE - FRAME_HEADER_LEN;
/// The kind the large delta carries; small ones carry 1.
const LARGE_KIND: u64 = 16;
/// How often the small sender sends, in ms.
const SMALL_EVERY_MS: u64 = 20;

/// A CRC-32C (Castagnoli) in the page, `window.crc32c(bytes)`, to check the
/// bytes against the one the Rust side computes with the `crc32c` crate.
const CRC32C_JS: &str = r#"(() => {
    const table = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
        let c = i;
        for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82F63B78 : c >>> 1;
        table[i] = c >>> 0;
    }
    window.crc32c = (bytes) => {
        let crc = 0xFFFFFFFF;
        for (let i = 0; i < bytes.length; i++) crc = table[(crc ^ bytes[i]) & 0xFF] ^ (crc >>> 8);
        return (crc ^ 0xFFFFFFFF) >>> 0;
    };
    return true;
})()"#;

/// Makes `window.randomBytes(n)`: `n` bytes from the browser's CSPRNG.
const RANDOM_JS: &str = r#"window.randomBytes = (n) => {
    const bytes = new Uint8Array(n);
    for (let at = 0; at < n; at += 65536) crypto.getRandomValues(bytes.subarray(at, Math.min(n, at + 65536)));
    return bytes;
}; true"#;

async fn with_helpers(page: &Page) {
    eval(page, CRC32C_JS).await;
    eval(page, RANDOM_JS).await;
}

/// Records, on `page`, every delta as `{seq, kind, len, crc, at}` (`at` the
/// arrival time, `Date.now()`; small ones also carry their send time).
async fn record_arrivals(page: &Page) {
    eval(
        page,
        r#"window.arrivals = [];
        window.conn.onDelta((d) => {
            const at = Date.now();
            const entry = { seq: d.seq, kind: d.kind, len: d.payload.length, at };
            if (d.kind === 16) entry.crc = window.crc32c(d.payload);
            else entry.text = new TextDecoder().decode(d.payload);
            window.arrivals.push(entry);
        }); true"#,
    )
    .await;
}

/// The native peer's deltas until it holds the large one and `smalls`
/// small ones: `(seq, kind, payload)` in arrival order.
async fn native_collects(native: &mut NativePeer, smalls: usize) -> Vec<(u64, u16, Vec<u8>)> {
    let mut seen = Vec::new();
    let done = |seen: &Vec<(u64, u16, Vec<u8>)>| {
        seen.iter().any(|d| u64::from(d.1) == LARGE_KIND)
            && seen.iter().filter(|d| d.1 == 1).count() >= smalls
    };
    while !done(&seen) {
        let event = tokio::time::timeout(Duration::from_secs(60), native.next_event())
            .await
            .expect("the native peer's deltas arrive")
            .expect("connection alive");
        if let PeerEvent::Delta(delta) = event {
            seen.push((delta.seq, delta.kind, delta.payload().to_vec()));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_delta_reaches_a_page_and_a_native_peer_once_under_one_seq_while_small_deltas_flow()
 {
    let stack = common::stack().await;
    let session = "browser-large";
    let mut native = common::native_peer(&stack, session).await;
    let browser = Browser::launch().await;
    let sender = common::connected_page(&browser, &stack, session).await;
    let receiver = common::connected_page(&browser, &stack, session).await;
    let chatter = common::connected_page(&browser, &stack, session).await;
    for page in [&sender, &receiver, &chatter] {
        with_helpers(page).await;
    }
    record_arrivals(&receiver).await;

    // The chatter sends a small delta every SMALL_EVERY_MS, each carrying
    // its send time, until told to stop.
    eval(
        &chatter,
        &format!(
            r#"window.smallSeqs = []; window.smallSent = 0; window.stopSmall = false;
            window.smallDone = (async () => {{
                for (let i = 0; !window.stopSmall; i++) {{
                    window.smallSent++;
                    const text = `small-${{i}}-${{Date.now()}}`;
                    window.conn.send(1, {DOC:?}, new TextEncoder().encode(text))
                        .then((seq) => window.smallSeqs.push(seq));
                    await new Promise((r) => setTimeout(r, {SMALL_EVERY_MS}));
                }}
            }})(); true"#
        ),
    )
    .await;
    wait(&receiver, "window.arrivals.length >= 10", 10).await;

    // The large delta: random bytes, its CRC taken before it goes.
    let sent = eval(
        &sender,
        &format!(
            r#"(async () => {{
                const payload = window.randomBytes({LARGE});
                const crc = window.crc32c(payload);
                const started = Date.now();
                const seq = await window.conn.send({LARGE_KIND}, {DOC:?}, payload);
                return {{ seq, crc, started, acked: Date.now() }};
            }})()"#
        ),
    )
    .await;
    let large_seq = sent["seq"].as_u64().expect("the large delta's seq");
    let large_crc = sent["crc"].as_u64().expect("its crc");
    let started = sent["started"].as_f64().expect("start time");
    let acked = sent["acked"].as_f64().expect("ack time");
    wait(&receiver, "window.arrivals.some((d) => d.kind === 16)", 60).await;
    // A little more chatter after it, then stop and let the rest land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    eval(
        &chatter,
        "window.stopSmall = true; window.smallDone.then(() => true)",
    )
    .await;
    wait(&chatter, "window.smallSeqs.length === window.smallSent", 30).await;
    let smalls = eval(&chatter, "window.smallSent")
        .await
        .as_u64()
        .expect("a count");
    wait(
        &receiver,
        &format!("window.arrivals.filter((d) => d.kind === 1).length >= {smalls}"),
        30,
    )
    .await;

    // The receiving page: the large delta once, under its seq, intact; the
    // small ones all, in order, each once; seqs strictly increasing.
    let arrivals = eval(&receiver, "window.arrivals").await;
    let arrivals = arrivals.as_array().expect("an array");
    let large: Vec<_> = arrivals
        .iter()
        .filter(|d| d["kind"] == LARGE_KIND)
        .collect();
    assert_eq!(large.len(), 1, "the large delta arrived once");
    assert_eq!(large[0]["seq"], large_seq);
    assert_eq!(large[0]["len"], LARGE as u64);
    assert_eq!(large[0]["crc"], large_crc, "the page got the bytes sent");
    let seqs: Vec<u64> = arrivals
        .iter()
        .map(|d| d["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs increase: {seqs:?}"
    );
    let small: Vec<&serde_json::Value> = arrivals.iter().filter(|d| d["kind"] == 1).collect();
    assert_eq!(small.len() as u64, smalls, "every small delta once");
    for (i, d) in small.iter().enumerate() {
        let text = d["text"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("small-{i}-")),
            "in order: {text} at {i}"
        );
    }

    // Small deltas kept flowing: while the large one was on its way up
    // (between its send and its ack), small ones were delivered, and none
    // waited long. Those sequenced after it wait for its bytes to reach
    // the receiver (the receive channel is one ordered stream).
    let latencies: Vec<f64> = small
        .iter()
        .map(|d| {
            let sent_at: f64 = d["text"]
                .as_str()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            d["at"].as_f64().unwrap() - sent_at
        })
        .collect();
    let during = small
        .iter()
        .filter(|d| (started..=acked).contains(&d["at"].as_f64().unwrap()))
        .count();
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted[sorted.len() / 2];
    let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
    let max = sorted[sorted.len() - 1];
    let large_at = large[0]["at"].as_f64().unwrap();
    println!(
        "16 MiB delta: sent to acked {:.0} ms, sent to delivered on the other page {:.0} ms; \
         {} small deltas, {during} delivered during the upload, latency p50 {p50:.0} ms, \
         p99 {p99:.0} ms, max {max:.0} ms",
        acked - started,
        large_at - started,
        small.len()
    );
    let upload_ms = acked - started;
    assert!(
        during as f64 >= upload_ms / SMALL_EVERY_MS as f64 / 4.0,
        "small deltas kept arriving during the {upload_ms:.0} ms upload: {during}"
    );
    // The head-of-line cost: a small delta waits at most about as long as
    // the large one took from its ack (its seq) to the receiver.
    let behind_large = large_at - acked;
    assert!(
        max <= behind_large + 1_000.0,
        "small-delta latency stays bounded by the large delta's delivery \
         ({behind_large:.0} ms from its ack): max {max:.0} ms"
    );

    // The native peer: the same seqs, the large one once and intact.
    let seen = native_collects(&mut native, smalls as usize).await;
    let native_large: Vec<_> = seen
        .iter()
        .filter(|d| u64::from(d.1) == LARGE_KIND)
        .collect();
    assert_eq!(
        native_large.len(),
        1,
        "the native peer got the large delta once"
    );
    assert_eq!(native_large[0].0, large_seq);
    assert_eq!(native_large[0].2.len(), LARGE);
    assert_eq!(
        u64::from(crc32c::crc32c(&native_large[0].2)),
        large_crc,
        "the native peer got the bytes sent"
    );
    let native_seqs: Vec<u64> = seen.iter().map(|d| d.0).collect();
    assert_eq!(native_seqs, seqs, "the native peer saw the same seqs");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        eval(&receiver, "window.arrivals.length").await,
        seqs.len() as u64,
        "nothing arrived twice"
    );
    for page in [&sender, &receiver, &chatter] {
        assert_no_exceptions(page);
    }
    native.close().await;
    stack.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_17_mib_delta_is_refused_by_the_page_up_front_and_by_the_relay_on_its_first_fragment() {
    let stack = common::stack().await;
    let session = "browser-too-large";
    let mut native = common::native_peer(&stack, session).await;
    let browser = Browser::launch().await;
    let page = common::connected_page(&browser, &stack, session).await;
    record_arrivals(&page).await;
    assert_eq!(
        native.welcome().max_delta_size as usize,
        DEFAULT_MAX_DELTA_SIZE,
        "the relay says 16 MiB"
    );

    // The page's send refuses it with the reason, and the connection goes on.
    let refused = page
        .eval(&format!(
            "window.conn.send(1, {DOC:?}, new Uint8Array(17 * 1024 * 1024))"
        ))
        .await
        .expect_err("a 17 MiB delta is refused");
    let frame_len = 17 * 1024 * 1024 + FRAME_HEADER_LEN;
    assert!(
        refused.contains(&format!(
            "{frame_len} bytes exceed the relay's limit of {DEFAULT_MAX_DELTA_SIZE} bytes"
        )),
        "{refused}"
    );
    let seq = eval(
        &page,
        &format!("window.conn.send(1, {DOC:?}, new TextEncoder().encode('after'))"),
    )
    .await;
    assert_eq!(seq, 1, "the refused delta took no seq");

    // A first fragment claiming 17 MiB gets TOO_LARGE at once.
    let payload = vec![0x5a; 17 * 1024 * 1024];
    let frame = FrameHeader {
        kind: 1,
        flags: 0,
        doc_id: Id::default(),
        client_seq: 1,
        timestamp_us: 0,
    }
    .encode(&payload)
    .expect("a frame");
    let first = fragments(&frame, FRAGMENT_BODY, FRAGMENT_BODY)
        .next()
        .expect("a first fragment");
    native.send_raw(Channel::Send, first).await;
    let reject = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), native.next_event())
            .await
            .expect("the relay answers the fragment")
            .expect("connection alive");
        if let PeerEvent::Rejected(reject) = event {
            break reject;
        }
    };
    assert_eq!(reject.reason(), RejectReason::TooLarge, "{reject:?}");
    assert_eq!(reject.client_seq, 1, "the reject names the frame");

    // The connection stays up: a ping is answered, the page's delta arrived.
    native.ping(7).await;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), native.next_event())
            .await
            .expect("the pong arrives")
            .expect("connection alive");
        if event == PeerEvent::Pong(7) {
            break;
        }
    }
    assert_eq!(
        eval(&page, "window.arrivals.length").await,
        0,
        "nothing reached the page"
    );
    assert_no_exceptions(&page);
    native.close().await;
    stack.shutdown().await.expect("clean shutdown");
}

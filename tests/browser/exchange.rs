//! Two browser pages and a native peer in one session: every delta reaches
//! every other peer once, intact, in the session's one order.

use std::collections::BTreeMap;

use crate::cdp::{Browser, Page};
use crate::common::{self, assert_no_exceptions, eval, received, wait};

const PER_PAGE: u64 = 500;

/// The text of delta `i` from the page tagged `tag` (sizes vary, 8 B to 1 KiB).
const PAYLOAD_JS: &str = "(tag, i) => `${tag}-${i}-` + 'x'.repeat((i * 37) % 1000)";

fn payload(tag: &str, i: u64) -> String {
    format!("{tag}-{i}-{}", "x".repeat(((i * 37) % 1000) as usize))
}

/// Sends PER_PAGE deltas at once from `page`; resolves to their seqs.
async fn send_all(page: &Page, tag: &str) {
    let script = format!(
        r#"(async () => {{
            const text = {PAYLOAD_JS};
            const doc = "00000000-0000-4000-8000-000000000001";
            const sends = [];
            for (let i = 0; i < {PER_PAGE}; i++) {{
                sends.push(window.conn.send(7, doc, new TextEncoder().encode(text({tag:?}, i))));
            }}
            window.sentSeqs = await Promise.all(sends);
            return window.sentSeqs.length;
        }})()"#
    );
    assert_eq!(eval(page, &script).await, PER_PAGE);
}

async fn sent_seqs(page: &Page) -> Vec<u64> {
    let seqs = eval(page, "window.sentSeqs").await;
    seqs.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_u64().expect("a seq"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_exchange_500_deltas_both_ways_in_one_order_that_a_native_peer_shares() {
    let stack = common::stack().await;
    let session = "browser-exchange";
    let mut native = common::native_peer(&stack, session).await;
    let browser = Browser::launch().await;
    let a = common::connected_page(&browser, &stack, session).await;
    let b = common::connected_page(&browser, &stack, session).await;
    let a_id = eval(&a, "window.conn.peerId()").await;
    let b_id = eval(&b, "window.conn.peerId()").await;
    wait(&a, "window.conn.peers().length === 2", 10).await;

    tokio::join!(send_all(&a, "a"), send_all(&b, "b"));
    wait(&a, &format!("window.got.length >= {PER_PAGE}"), 60).await;
    wait(&b, &format!("window.got.length >= {PER_PAGE}"), 60).await;

    // Each page got exactly the other's deltas, in the order they were
    // sent, intact; with its own seqs they cover 1..=1000 without a gap.
    let mut by_seq = BTreeMap::new();
    for (page, own_tag, other_tag, other_id) in [(&a, "a", "b", &b_id), (&b, "b", "a", &a_id)] {
        let got = received(page).await;
        let texts: Vec<&str> = got.iter().map(|(_, _, text)| text.as_str()).collect();
        let expected: Vec<String> = (0..PER_PAGE).map(|i| payload(other_tag, i)).collect();
        assert_eq!(
            texts, expected,
            "page {own_tag} got the other's deltas in order"
        );
        assert!(
            got.iter()
                .all(|(_, origin, _)| Some(origin.as_str()) == other_id.as_str())
        );
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "seqs increase");
        let own = sent_seqs(page).await;
        for (i, seq) in own.iter().enumerate() {
            by_seq.insert(*seq, payload(own_tag, i as u64));
        }
        let mut all: Vec<u64> = own.into_iter().chain(got.iter().map(|d| d.0)).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (1..=2 * PER_PAGE).collect::<Vec<_>>(),
            "page {own_tag}: gap-free"
        );
        let extra = eval(page, "window.got.length").await;
        assert_eq!(extra, PER_PAGE, "page {own_tag}: no duplicates");
        assert_no_exceptions(page);
    }

    // The native peer saw the same sequence: seq i carries the same payload.
    let seen = common::native_receives(&mut native, (2 * PER_PAGE) as usize).await;
    let expected: Vec<(u64, String)> = by_seq.into_iter().collect();
    assert_eq!(seen, expected);
    native.close().await;
    stack.shutdown().await.expect("clean shutdown");
}

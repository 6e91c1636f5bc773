//! ICE restart from Chromium (RFC 9725 §4.4, PROTOCOL §1): a page that
//! restarts ICE mid-stream (`Connection.restartIce()`: `restartIce()` and a
//! new local offer on the page, a `PATCH` with `If-Match: *` from the
//! worker, the relay's new credentials applied as the remote description)
//! keeps its connection: the same peer id, no new `Welcome`, no new offer,
//! nothing lost or doubled in either direction. Also when its address
//! really changes: Chromium inside a network namespace whose address is
//! replaced mid-stream restarts ICE and its deltas flow on the new path.

use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_worker::NativePeer;
use serde_json::json;

use crate::cdp::{Browser, Page};
use crate::common::{
    assert_no_exceptions, connected_page, eval, native_receives, received, stack, wait,
};
use crate::ice_tcp::stack_for;
use crate::netns::NetNs;
use crate::turn::requests_counted;

const DOC: &str = "00000000-0000-4000-8000-000000000021";
const HALF: u64 = 300;

/// Starts sends of `p-<i>` for `i` in `range`, their promises kept in
/// `window.sends`.
async fn page_sends(page: &Page, range: std::ops::Range<u64>) {
    let (from, count) = (range.start, range.end - range.start);
    let script = format!(
        r#"window.sends = (window.sends || []).concat(Array.from({{ length: {count} }}, (_, k) =>
            window.conn.send(1, {DOC:?}, new TextEncoder().encode(`p-${{{from} + k}}`))));
        true"#
    );
    eval(page, &script).await;
}

async fn native_sends(native: &NativePeer, range: std::ops::Range<u64>) {
    for i in range {
        native
            .send(1, Id::default(), format!("n-{i}").into_bytes())
            .await
            .expect("queued");
    }
}

fn offers_posted(page: &Page) -> usize {
    page.console()
        .iter()
        .filter(|line| line.contains("posting the offer"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_restarts_ice_mid_stream_keeps_its_peer_id_and_loses_and_doubles_nothing() {
    let stack = stack().await;
    let session = "browser-ice-restart";
    let mut native = crate::common::native_peer(&stack, session).await;
    let browser = Browser::launch().await;
    let page = connected_page(&browser, &stack, session).await;
    let peer_id = eval(&page, "window.conn.peerId()").await;
    assert_eq!(offers_posted(&page), 1);

    // Deltas both ways in flight while ICE restarts.
    page_sends(&page, 0..HALF).await;
    native_sends(&native, 0..HALF).await;
    eval(&page, "window.conn.restartIce().then(() => true)").await;
    page_sends(&page, HALF..2 * HALF).await;
    native_sends(&native, HALF..2 * HALF).await;

    // The relay took the restart: one PATCH answered 200.
    assert_eq!(requests_counted(&stack, "PATCH", 200).await, 1);
    let acked = eval(&page, "Promise.all(window.sends).then((all) => all.length)").await;
    assert_eq!(acked, json!(2 * HALF), "every page send acknowledged");

    let at_native: Vec<String> = native_receives(&mut native, 2 * HALF as usize)
        .await
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    let expected: Vec<String> = (0..2 * HALF).map(|i| format!("p-{i}")).collect();
    assert_eq!(
        at_native, expected,
        "the native peer got each page delta once, in order"
    );
    wait(&page, &format!("window.got.length >= {}", 2 * HALF), 30).await;
    let at_page = received(&page).await;
    let texts: Vec<String> = at_page.iter().map(|(_, _, text)| text.clone()).collect();
    let expected: Vec<String> = (0..2 * HALF).map(|i| format!("n-{i}")).collect();
    assert_eq!(
        texts, expected,
        "the page got each native delta once, in order"
    );
    assert!(at_page.windows(2).all(|w| w[1].0 > w[0].0), "seqs in order");

    // The same connection: same id, no new Welcome, no new offer.
    assert_eq!(eval(&page, "window.conn.peerId()").await, peer_id);
    let states = eval(&page, "window.states.map((s) => s.state)").await;
    let states: Vec<&str> = states
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "connected").count(),
        1,
        "{states:?}"
    );
    assert!(
        states
            .iter()
            .all(|s| *s == "connecting" || *s == "connected"),
        "{states:?}"
    );
    let states_before = states.len();
    assert_eq!(offers_posted(&page), 1, "no new offer");
    // The new credentials carry the connection by themselves: the relay
    // answers no check under the old ones, and Chromium takes a pair whose
    // checks go unanswered for about 5 s as broken (ICE `disconnected`, on
    // which the page would restart again). After 7 s: still one restart,
    // no new offer, and deltas still flow.
    tokio::time::sleep(Duration::from_secs(7)).await;
    page_sends(&page, 2 * HALF..2 * HALF + 20).await;
    native_sends(&native, 2 * HALF..2 * HALF + 20).await;
    let later = native_receives(&mut native, 20).await;
    assert_eq!(later.last().map(|(_, t)| t.as_str()), Some("p-619"));
    wait(
        &page,
        &format!("window.got.length >= {}", 2 * HALF + 20),
        10,
    )
    .await;
    assert_eq!(requests_counted(&stack, "PATCH", 200).await, 1);
    assert_eq!(offers_posted(&page), 1, "no new offer");
    // Nothing more is on its way: no duplicate arrives later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(eval(&page, "window.got.length").await, json!(2 * HALF + 20));
    let states = eval(&page, "window.states.length").await;
    assert_eq!(
        states.as_u64(),
        Some(states_before as u64),
        "no state change"
    );
    assert_no_exceptions(&page);
    native.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_address_changes_mid_stream_restarts_ice_and_its_deltas_flow_on_the_new_path()
{
    const BEFORE: u64 = 100;
    const AFTER: u64 = 200;
    let mut netns = NetNs::create();
    let stack = stack_for(&netns).await;
    let session = "browser-ice-move";
    let mut native = crate::common::native_peer(&stack, session).await;
    let browser = Browser::launch_in(&netns).await;
    let page = connected_page(&browser, &stack, session).await;
    let peer_id = eval(&page, "window.conn.peerId()").await;

    // Both ways on the old address first.
    page_sends(&page, 0..BEFORE).await;
    native_sends(&native, 0..BEFORE).await;
    native_receives(&mut native, BEFORE as usize).await;
    wait(&page, &format!("window.got.length >= {BEFORE}"), 30).await;

    // The network changes: the old address is gone (nothing can reach it
    // or leave from it any more), a new one takes its place; deltas both
    // ways are in flight when the page restarts ICE.
    let old = netns.ns_ip;
    let new = netns.renumber();
    assert_ne!(old, new);
    native_sends(&native, BEFORE..BEFORE + AFTER).await;
    page_sends(&page, BEFORE..BEFORE + AFTER).await;
    let restarted_at = Instant::now();
    eval(&page, "window.conn.restartIce().then(() => true)").await;
    let answered = restarted_at.elapsed();
    wait(&page, &format!("window.got.length > {BEFORE}"), 30).await;
    let first_on_new_path = restarted_at.elapsed();

    let at_native: Vec<String> = native_receives(&mut native, AFTER as usize)
        .await
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    let expected: Vec<String> = (BEFORE..BEFORE + AFTER).map(|i| format!("p-{i}")).collect();
    assert_eq!(at_native, expected, "each page delta once, in order");
    let total = BEFORE + AFTER;
    wait(&page, &format!("window.got.length >= {total}"), 30).await;
    let all_through = restarted_at.elapsed();
    let acked = eval(&page, "Promise.all(window.sends).then((all) => all.length)").await;
    assert_eq!(acked, json!(total), "every page send acknowledged");
    let at_page = received(&page).await;
    let texts: Vec<String> = at_page.iter().map(|(_, _, text)| text.clone()).collect();
    let expected: Vec<String> = (0..total).map(|i| format!("n-{i}")).collect();
    assert_eq!(texts, expected, "each native delta once, in order");
    println!(
        "address change {old} -> {new}: restart answered in {answered:?}, \
         first delta on the new path {first_on_new_path:?}, all {AFTER} through in {all_through:?}"
    );

    // The same connection: same id, no new Welcome, no new offer.
    assert_eq!(eval(&page, "window.conn.peerId()").await, peer_id);
    assert!(requests_counted(&stack, "PATCH", 200).await >= 1);
    assert_eq!(offers_posted(&page), 1, "no new offer");
    let states = eval(&page, "window.states.map((s) => s.state)").await;
    let connected = states
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.as_str() == Some("connected"))
        .count();
    assert_eq!(connected, 1, "one Welcome: {states}");

    // Still flowing a while later, on the new path only, nothing doubled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    native_sends(&native, total..total + 10).await;
    page_sends(&page, total..total + 10).await;
    let later = native_receives(&mut native, 10).await;
    assert_eq!(
        later.last().map(|(_, t)| t.clone()),
        Some(format!("p-{}", total + 9))
    );
    wait(&page, &format!("window.got.length >= {}", total + 10), 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(eval(&page, "window.got.length").await, json!(total + 10));
    assert_eq!(offers_posted(&page), 1, "no new offer");
    assert_no_exceptions(&page);
    native.close().await;
    stack.shutdown().await.unwrap();
}

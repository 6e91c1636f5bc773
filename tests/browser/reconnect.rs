//! A page whose connection the relay kills reconnects by itself and
//! resumes: nothing lost, nothing duplicated, in either direction.

use std::str::FromStr;
use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_worker::NativePeer;

use crate::cdp::{Browser, Page};
use crate::common::{self, assert_no_exceptions, eval, received, wait};

const DOC: &str = "00000000-0000-4000-8000-000000000002";

/// Starts `count` sends of `p-<i>` for i in `from..from + count` and keeps
/// their promise in `window.pending`.
async fn start_sends(page: &Page, from: u64, count: u64) {
    let script = format!(
        r#"window.pending = Promise.all(Array.from({{ length: {count} }}, (_, k) =>
            window.conn.send(1, {DOC:?}, new TextEncoder().encode(`p-${{{from} + k}}`)))); true"#
    );
    eval(page, &script).await;
}

async fn native_sends(native: &NativePeer, from: u64, count: u64) {
    for i in from..from + count {
        native
            .send(1, Id::default(), format!("n-{i}").into_bytes())
            .await
            .expect("queued");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_connection_the_relay_kills_reconnects_and_resumes_losing_nothing() {
    let stack = common::stack().await;
    let session = "browser-reconnect";
    let mut native = common::native_peer(&stack, session).await;
    let browser = Browser::launch().await;
    let page = common::connected_page(&browser, &stack, session).await;

    start_sends(&page, 0, 100).await;
    eval(&page, "window.pending.then((seqs) => seqs.length)").await;
    native_sends(&native, 0, 50).await;
    wait(&page, "window.got.length >= 50", 20).await;

    // The relay drops the page's connection without a word, as a crashed
    // relay process or a lost network would.
    let peer = eval(&page, "window.conn.peerId()").await;
    let peer = Id::from_str(peer.as_str().expect("a peer id")).expect("an id");
    stack.relays[0]
        .disconnect(session, peer, "killed by the test")
        .await
        .expect("the relay knows the peer");

    // Both sides keep sending while the page is away.
    start_sends(&page, 100, 100).await;
    native_sends(&native, 50, 50).await;

    wait(
        &page,
        "window.states.some((s) => s.state === 'reconnecting') && window.conn.state() === 'connected'",
        30,
    )
    .await;
    let seqs = eval(&page, "window.pending.then((seqs) => seqs.length)").await;
    assert_eq!(seqs, 100, "every send made while away was acknowledged");
    wait(&page, "window.got.length >= 100", 20).await;

    let got: Vec<String> = received(&page).await.into_iter().map(|d| d.2).collect();
    let expected: Vec<String> = (0..100).map(|i| format!("n-{i}")).collect();
    assert_eq!(
        got, expected,
        "the page got every native delta once, in order"
    );
    let seen: Vec<String> = common::native_receives(&mut native, 200)
        .await
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    let expected: Vec<String> = (0..200).map(|i| format!("p-{i}")).collect();
    assert_eq!(
        seen, expected,
        "the native peer got every page delta once, in order"
    );
    // Nothing more is on its way: no duplicate arrives later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(eval(&page, "window.got.length").await, 100);
    assert_no_exceptions(&page);
    native.close().await;
    stack.shutdown().await.expect("clean shutdown");
}

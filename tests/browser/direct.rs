//! Direct messages (PROTOCOL §9) between browser pages: the demo's direct
//! WebRTC call signalled through them, a refusal for an unknown peer, and
//! messages that arrive with their sender's id, in the order sent.

use crate::cdp::{Browser, Page};
use crate::common::{self, assert_no_exceptions, eval, v11_page, wait};

fn text_of(testid: &str) -> String {
    format!("document.querySelector('[data-testid={testid}]').textContent")
}

/// `page`'s peer id.
async fn id_of(page: &Page) -> String {
    eval(page, "window.conn.peerId()")
        .await
        .as_str()
        .expect("a welcomed page has an id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_tabs_set_up_a_direct_call_signalled_through_direct_messages() {
    let stack = common::stack().await;
    let browser = Browser::launch().await;
    let url = format!(
        "{}/?session=browser-direct-call&lane=webrtc",
        stack.signal_url()
    );
    let caller = browser.new_page(&url).await;
    let callee = browser.new_page(&url).await;
    for tab in [&caller, &callee] {
        wait(tab, &format!("{} === 'connected'", text_of("state")), 20).await;
        wait(tab, &format!("{} === '1'", text_of("peers")), 20).await;
    }
    eval(
        &caller,
        "document.querySelector('[data-testid=call]').click(), true",
    )
    .await;
    // The offer and the answer go as direct messages through the relay; the
    // call's own channel then carries a ping and its pong.
    let state = text_of("call-state");
    wait(
        &caller,
        &format!("{state}.startsWith('connected directly, ping ')"),
        20,
    )
    .await;
    wait(
        &callee,
        &format!("{state} === 'connected directly (answered a ping)'"),
        20,
    )
    .await;
    let shown = eval(&caller, &state).await;
    assert!(
        shown.as_str().is_some_and(|s| s.ends_with(" ms")),
        "the caller shows the round trip: {shown}"
    );
    assert_no_exceptions(&caller);
    assert_no_exceptions(&callee);
    stack.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_an_unknown_peer_comes_back_as_an_unknown_peer_notice() {
    let stack = common::stack().await;
    let browser = Browser::launch().await;
    let page = v11_page(&browser, &stack, "browser-direct-unknown").await;
    let nobody = "3f1e0c2a-9b7d-4e5f-8a6b-1c2d3e4f5a6b";
    eval(
        &page,
        &format!("window.conn.sendTo({nobody:?}, new TextEncoder().encode('hello?')), true"),
    )
    .await;
    wait(&page, "window.notices.length >= 1", 10).await;
    let notices = eval(&page, "window.notices").await;
    let notice = &notices[0];
    assert_eq!(notice["kind"], "relayError", "{notices}");
    assert_eq!(notice["code"], "UNKNOWN_PEER", "{notices}");
    assert!(
        notice["detail"]
            .as_str()
            .is_some_and(|d| d.contains(nobody)),
        "the detail names the recipient: {notices}"
    );
    assert_eq!(eval(&page, "window.conn.state()").await, "connected");
    assert_no_exceptions(&page);
    stack.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_between_two_pages_arrive_with_the_senders_id_in_order_and_only_there() {
    const COUNT: usize = 20;
    let stack = common::stack().await;
    let session = "browser-direct-order";
    let browser = Browser::launch().await;
    let a = v11_page(&browser, &stack, session).await;
    let b = v11_page(&browser, &stack, session).await;
    let bystander = v11_page(&browser, &stack, session).await;
    let a_id = id_of(&a).await;
    let b_id = id_of(&b).await;
    wait(&a, &format!("window.conn.peers().includes({b_id:?})"), 10).await;
    wait(&b, &format!("window.conn.peers().includes({a_id:?})"), 10).await;

    for (from, to_id, tag) in [(&a, &b_id, "a"), (&b, &a_id, "b")] {
        eval(
            from,
            &format!(
                "for (let i = 0; i < {COUNT}; i++) \
                 window.conn.sendTo({to_id:?}, new TextEncoder().encode(`{tag}-${{i}}`)); true"
            ),
        )
        .await;
    }
    for (to, from_id, tag) in [(&b, &a_id, "a"), (&a, &b_id, "b")] {
        wait(to, &format!("window.messages.length >= {COUNT}"), 10).await;
        let got = eval(to, "window.messages").await;
        let expected: Vec<serde_json::Value> = (0..COUNT)
            .map(|i| serde_json::json!([from_id, format!("{tag}-{i}")]))
            .collect();
        assert_eq!(got.as_array().expect("an array"), &expected);
    }
    // Both pages' messages have arrived; none went to the third page, and
    // nothing came back as a notice.
    assert_eq!(eval(&bystander, "window.messages.length").await, 0);
    for page in [&a, &b, &bystander] {
        assert_eq!(eval(page, "window.notices.length").await, 0);
        assert_no_exceptions(page);
    }
    stack.shutdown().await.expect("clean shutdown");
}

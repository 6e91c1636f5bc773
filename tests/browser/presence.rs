//! Presence (PROTOCOL §8) between browser pages and a native peer of one
//! session: each sees the others' latest state, a late joiner gets the
//! current states, and a state cleared or left reaches the others as empty.

use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_worker::{NativePeer, PeerEvent};

use crate::cdp::{Browser, Page};
use crate::common::{self, assert_no_exceptions, eval, v11_page, wait};

/// Sets `page`'s presence state to `text` (empty clears it).
async fn set_presence(page: &Page, text: &str) {
    eval(
        page,
        &format!("window.conn.setPresence(new TextEncoder().encode({text:?})), true"),
    )
    .await;
}

/// Waits until `page` holds `text` as `peer`'s latest presence state.
async fn page_sees(page: &Page, peer: &str, text: &str) {
    wait(page, &format!("window.presence[{peer:?}] === {text:?}"), 10).await;
}

/// `page`'s peer id.
async fn id_of(page: &Page) -> String {
    eval(page, "window.conn.peerId()")
        .await
        .as_str()
        .expect("a welcomed page has an id")
        .to_owned()
}

/// Waits until `native` is told `peer`'s presence state is `text`.
async fn native_sees(native: &mut NativePeer, peer: &str, text: &str) {
    let peer: Id = peer.parse().expect("a peer id");
    let wait = async {
        loop {
            match native.next_event().await.expect("the connection stays up") {
                PeerEvent::Presence { peer: p, state } if p == peer && state == text.as_bytes() => {
                    return;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("the native peer never saw {peer}'s presence {text:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_a_native_peer_see_each_others_latest_presence_and_a_late_page_gets_the_current_states()
 {
    let stack = common::stack().await;
    let session = "browser-presence";
    let mut native = common::native_peer(&stack, session).await;
    let native_id = native.peer_id().to_string();
    native
        .set_presence(b"native-1".to_vec())
        .await
        .expect("a state");
    let browser = Browser::launch().await;
    let a = v11_page(&browser, &stack, session).await;
    let a_id = id_of(&a).await;

    // A page that joins after the native peer set its state gets it; each
    // side sees the other's latest state.
    page_sees(&a, &native_id, "native-1").await;
    for text in ["a-1", "a-2", "a-3"] {
        set_presence(&a, text).await;
    }
    native
        .set_presence(b"native-2".to_vec())
        .await
        .expect("a state");
    native_sees(&mut native, &a_id, "a-3").await;
    page_sees(&a, &native_id, "native-2").await;

    // A page that joins late gets the current states of both, not older ones.
    let b = v11_page(&browser, &stack, session).await;
    let b_id = id_of(&b).await;
    page_sees(&b, &a_id, "a-3").await;
    page_sees(&b, &native_id, "native-2").await;
    let stale = eval(
        &b,
        "window.presenceLog.filter(([_, t]) => ['a-1', 'a-2', 'native-1'].includes(t)).length",
    )
    .await;
    assert_eq!(stale, 0, "a late page gets only the current states");
    set_presence(&b, "b-1").await;
    page_sees(&a, &b_id, "b-1").await;
    native_sees(&mut native, &b_id, "b-1").await;

    // A page that closes has its state removed for the others.
    b.close().await;
    page_sees(&a, &b_id, "").await;
    native_sees(&mut native, &b_id, "").await;
    // The others' states stay as they were.
    assert_eq!(
        eval(&a, &format!("window.presence[{native_id:?}]")).await,
        "native-2"
    );
    assert_no_exceptions(&a);
    a.close().await;
    native.close().await;
    stack.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_clearing_its_presence_with_an_empty_state_reaches_the_others_as_empty() {
    let stack = common::stack().await;
    let session = "browser-presence-clear";
    let mut native = common::native_peer(&stack, session).await;
    let browser = Browser::launch().await;
    let a = v11_page(&browser, &stack, session).await;
    let b = v11_page(&browser, &stack, session).await;
    let a_id = id_of(&a).await;

    set_presence(&a, "here").await;
    page_sees(&b, &a_id, "here").await;
    native_sees(&mut native, &a_id, "here").await;

    set_presence(&a, "").await;
    page_sees(&b, &a_id, "").await;
    native_sees(&mut native, &a_id, "").await;
    // Cleared, not gone: the page is still a peer of the session and can
    // set a state again.
    assert_eq!(
        eval(&b, &format!("window.conn.peers().includes({a_id:?})")).await,
        true
    );
    set_presence(&a, "back").await;
    page_sees(&b, &a_id, "back").await;
    native_sees(&mut native, &a_id, "back").await;
    for page in [&a, &b] {
        assert_no_exceptions(page);
    }
    a.close().await;
    b.close().await;
    native.close().await;
    stack.shutdown().await.expect("clean shutdown");
}

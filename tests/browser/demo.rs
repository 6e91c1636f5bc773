//! The demo page served at `/`: two tabs of one session see each other and
//! each other's deltas through the page's test hooks.

use crate::cdp::Browser;
use crate::common::{self, assert_no_exceptions, eval, wait};

fn text_of(testid: &str) -> String {
    format!("document.querySelector('[data-testid={testid}]').textContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_tabs_connect_see_each_other_and_count_each_others_deltas() {
    let stack = common::stack().await;
    let browser = Browser::launch().await;
    let url = format!("{}/?session=browser-demo&lane=webrtc", stack.signal_url());
    let a = browser.new_page(&url).await;
    let b = browser.new_page(&url).await;
    for tab in [&a, &b] {
        wait(tab, &format!("{} === 'connected'", text_of("state")), 20).await;
        wait(tab, &format!("{} === '1'", text_of("peers")), 20).await;
        // On loopback the selected pair is a UDP host pair.
        wait(tab, &format!("{} === 'webrtc-udp'", text_of("lane")), 5).await;
    }
    let count = text_of("delta-count");
    let before: u64 = eval(&b, &format!("Number({count})"))
        .await
        .as_u64()
        .expect("a count");
    eval(
        &a,
        "for (let i = 0; i < 5; i++) document.querySelector('[data-testid=send-test-delta]').click(); true",
    )
    .await;
    wait(&b, &format!("Number({count}) >= {}", before + 5), 10).await;
    assert_no_exceptions(&a);
    assert_no_exceptions(&b);
    stack.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_tab_leaves_the_session_at_once_not_after_the_idle_timeout() {
    let stack = common::stack().await;
    let browser = Browser::launch().await;
    let url = format!(
        "{}/?session=browser-demo-leave&lane=webrtc",
        stack.signal_url()
    );
    let stays = browser.new_page(&url).await;
    let leaves = browser.new_page(&url).await;
    wait(&stays, &format!("{} === '1'", text_of("peers")), 20).await;
    leaves.close().await;
    // The relay's idle timeout is 15 s; a closed tab is gone well before.
    wait(&stays, &format!("{} === '0'", text_of("peers")), 5).await;
    assert_no_exceptions(&stays);
    stack.shutdown().await.expect("clean shutdown");
}

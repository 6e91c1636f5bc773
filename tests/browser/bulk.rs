//! A burst bigger than the relay's slow-consumer limit: a page that falls
//! behind may be dropped, but it resumes and catches up with every delta.

use deltamesh_relay::RelayConfig;

use crate::cdp::Browser;
use crate::common::{self, assert_no_exceptions, eval, wait};

/// The relay's slow-consumer limit here (16,384 by default).
const LIMIT: u64 = 500;
const BURST: u64 = 10 * LIMIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_falls_behind_a_burst_still_gets_every_delta_once_in_order() {
    let relay = RelayConfig {
        slow_consumer_limit: LIMIT,
        slow_consumer_warn: LIMIT / 2,
        ..RelayConfig::default()
    };
    let stack = common::stack_with(relay).await;
    let browser = Browser::launch().await;
    let session = "browser-burst";
    let sender = common::connected_page(&browser, &stack, session).await;
    let receiver = common::connected_page(&browser, &stack, session).await;
    eval(
        &receiver,
        "window.count = 0; window.outOfOrder = 0; window.lastSeq = 0;
         window.conn.onDelta((d) => {
             window.count++;
             if (d.seq !== window.lastSeq + 1) window.outOfOrder++;
             window.lastSeq = d.seq;
         }); true",
    )
    .await;
    eval(
        &sender,
        &format!(
            r#"window.sent = (async () => {{
            const payload = new Uint8Array(100);
            let inflight = [];
            let acked = 0;
            for (let i = 0; i < {BURST}; i++) {{
                inflight.push(window.conn.send(2, "00000000-0000-4000-8000-000000000003", payload));
                if (inflight.length >= 2000) {{ acked += (await Promise.all(inflight)).length; inflight = []; }}
            }}
            window.acked = acked + (await Promise.all(inflight)).length;
        }})(); true"#
        ),
    )
    .await;
    wait(&sender, &format!("window.acked === {BURST}"), 90).await;
    wait(&receiver, &format!("window.count >= {BURST}"), 90).await;
    assert_eq!(
        eval(
            &receiver,
            "[window.count, window.outOfOrder, window.lastSeq]"
        )
        .await,
        serde_json::json!([BURST, 0, BURST])
    );
    let states = eval(&receiver, "window.states.map((s) => s.state).join(' ')").await;
    assert!(
        states.as_str().unwrap_or_default().contains("reconnecting"),
        "the burst outran the page and the relay dropped it at least once: {states}"
    );
    assert_no_exceptions(&sender);
    assert_no_exceptions(&receiver);
    stack.shutdown().await.expect("clean shutdown");
}

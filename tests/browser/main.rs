//! Browser tests: real headless Chromium driving deltamesh pages.

mod bulk;
mod cdp;
mod common;
mod demo;
mod direct;
mod exchange;
mod ice_restart;
mod ice_tcp;
mod large;
mod moves;
#[path = "../support/netns.rs"]
mod netns;
mod presence;
mod reconnect;
mod signal_errors;
mod turn;
mod websocket;

use std::time::{Duration, Instant};

use serde_json::json;

use cdp::{Browser, Page};

/// The smoke test of the CDP driver itself: evaluation, rejections, waiting,
/// and console/exception capture from the page and from a dedicated worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_runs_javascript_and_reports_worker_exceptions() {
    let browser = Browser::launch().await;
    let page = browser
        .new_page("data:text/html,<title>smoke</title><script>console.log('hello-from-page', 42)</script>")
        .await;

    assert_eq!(page.eval("1 + 2").await, Ok(json!(3)));
    assert_eq!(page.eval("document.title").await, Ok(json!("smoke")));
    let rejected = page
        .eval("Promise.reject(new Error('nope-rejected'))")
        .await
        .expect_err("a rejected promise is an error");
    assert!(rejected.contains("nope-rejected"), "{rejected}");

    page.eval("setTimeout(() => { window.later = true }, 200)")
        .await
        .expect("setTimeout runs");
    page.wait_for("window.later === true", Duration::from_secs(5))
        .await;

    // Chromium reports a worker's uncaught exception only through the
    // worker's own CDP session (and only if the page does not cancel the
    // Worker's error event), so this checks the worker auto-attach.
    page.eval(
        r#"const source = 'console.log("hello-from-worker"); throw new Error("boom-in-worker");';
        window.worker = new Worker(URL.createObjectURL(new Blob([source], { type: "text/javascript" })));"#,
    )
    .await
    .expect("the worker starts");
    eventually(&page, "the worker's exception", |page| {
        page.exceptions()
            .iter()
            .any(|e| e.contains("boom-in-worker"))
    })
    .await;
    eventually(&page, "the console messages", |page| {
        let console = page.console();
        ["log: hello-from-page 42", "log: hello-from-worker"]
            .iter()
            .all(|wanted| console.iter().any(|line| line == wanted))
    })
    .await;

    page.close().await;
}

/// Polls `done` for up to 5 s; panics with the page's logs if it stays false.
async fn eventually(page: &Page, what: &str, done: impl Fn(&Page) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(page) {
        assert!(
            Instant::now() < deadline,
            "{what} did not show up in 5 s; exceptions: {:#?}; console: {:#?}",
            page.exceptions(),
            page.console()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! A page whose signal server fails (an error status, or no server at all)
//! shows a clear failed state, retries with backoff and recovers once
//! signal works, with no uncaught exception on the way. Every offer starts
//! a trace of its own (a fresh `traceparent`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cdp::Browser;
use crate::common::{self, assert_no_exceptions, eval, wait};

/// The offers a stand-in got: when, and their `traceparent`.
type Offers = Arc<Mutex<Vec<(Instant, Option<String>)>>>;

/// A signal stand-in that answers every offer with one fixed error and
/// records when each offer came, with its `traceparent`. It speaks CORS,
/// as the real one does, so the page sees the status rather than a blocked
/// request.
struct FailingSignal {
    url: String,
    offers: Offers,
}

impl FailingSignal {
    async fn start(status: &'static str, extra_headers: &'static str, body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let offers = Arc::new(Mutex::new(Vec::new()));
        let recorded = offers.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(answer(stream, recorded, status, extra_headers, body));
            }
        });
        FailingSignal { url, offers }
    }

    fn offer_times(&self) -> Vec<Instant> {
        let offers = self.offers.lock().expect("not poisoned");
        offers.iter().map(|(at, _)| *at).collect()
    }

    fn traceparents(&self) -> Vec<Option<String>> {
        let offers = self.offers.lock().expect("not poisoned");
        offers.iter().map(|(_, t)| t.clone()).collect()
    }
}

async fn answer(
    mut stream: TcpStream,
    offers: Offers,
    status: &str,
    extra_headers: &str,
    body: &str,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let cors = "access-control-allow-origin: *\r\n\
        access-control-allow-methods: POST, DELETE, OPTIONS\r\n\
        access-control-allow-headers: authorization, content-type, traceparent, tracestate\r\n\
        access-control-expose-headers: location, retry-after\r\n";
    let response = if head.starts_with("options ") {
        format!("HTTP/1.1 204 No Content\r\n{cors}connection: close\r\n\r\n")
    } else {
        let traceparent = head
            .lines()
            .find_map(|l| l.strip_prefix("traceparent:"))
            .map(|v| v.trim().to_owned());
        offers
            .lock()
            .expect("not poisoned")
            .push((Instant::now(), traceparent));
        format!(
            "HTTP/1.1 {status}\r\n{cors}{extra_headers}content-type: application/problem+json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = stream.write_all(response.as_bytes()).await;
}

/// Loads a page that connects through `signal_url` and checks it shows
/// `failed` with `expected` in the detail.
async fn failing_page(
    browser: &Browser,
    stack: &deltamesh::RunningStack,
    signal_url: &str,
    expected: &str,
) -> crate::cdp::Page {
    let options = format!("{{ signalUrl: {signal_url:?} }}");
    let page = common::page_with(browser, stack, "browser-errors", &options).await;
    wait(&page, "window.conn.state() === 'failed'", 15).await;
    let detail = eval(&page, "window.conn.detail()").await;
    let detail = detail.as_str().expect("text");
    assert!(
        detail.contains(expected),
        "detail {detail:?} names {expected:?}"
    );
    assert!(
        detail.contains("retry"),
        "detail {detail:?} says it retries"
    );
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_shows_failed_and_retries_no_sooner_than_retry_after() {
    let stack = common::stack().await;
    let signal = FailingSignal::start(
        "503 Service Unavailable",
        "retry-after: 1\r\n",
        r#"{"type":"urn:deltamesh:problem:no-capacity","title":"No relay has capacity","status":503,"detail":"all relays are full"}"#,
    )
    .await;
    let browser = Browser::launch().await;
    let page = failing_page(&browser, &stack, &signal.url, "503").await;
    let detail = eval(&page, "window.conn.detail()").await;
    assert!(
        detail
            .as_str()
            .unwrap_or_default()
            .contains("No relay has capacity"),
        "the problem's title reaches the app: {detail}"
    );
    while signal.offer_times().len() < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let times = signal.offer_times();
    for gap in times.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            gap >= Duration::from_millis(950),
            "Retry-After: 1 is honoured: {gap:?}"
        );
    }
    assert_eq!(eval(&page, "window.conn.state()").await, "failed");
    assert_no_exceptions(&page);
    stack.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_shows_failed_and_retries_with_growing_pauses() {
    let stack = common::stack().await;
    let signal = FailingSignal::start(
        "400 Bad Request",
        "",
        r#"{"type":"urn:deltamesh:problem:bad-sdp","title":"Malformed SDP","status":400,"detail":"no fingerprint"}"#,
    )
    .await;
    let browser = Browser::launch().await;
    let page = failing_page(&browser, &stack, &signal.url, "400").await;
    while signal.offer_times().len() < 4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let times = signal.offer_times();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 250 ms doubling, ±20 % jitter: 200-300, 400-600, 800-1200 ms.
    assert!(gaps[0] >= Duration::from_millis(150), "{gaps:?}");
    assert!(
        gaps[1] > gaps[0] && gaps[2] > gaps[1],
        "pauses grow: {gaps:?}"
    );
    // Each attempt is a trace of its own, sampled, in W3C form.
    let traceparents = signal.traceparents();
    let mut trace_ids = std::collections::HashSet::new();
    for traceparent in &traceparents {
        let traceparent = traceparent
            .as_deref()
            .expect("every offer has a traceparent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!((parts[0], parts[3]), ("00", "01"), "{traceparent}");
        assert!(
            parts[1].len() == 32 && parts[2].len() == 16,
            "{traceparent}"
        );
        assert!(
            parts[1..3].iter().all(|p| p
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())),
            "{traceparent}"
        );
        assert!(
            trace_ids.insert(parts[1].to_owned()),
            "{traceparent} repeats"
        );
    }
    assert_no_exceptions(&page);
    stack.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signal_at_all_shows_failed_and_the_page_connects_once_signal_starts() {
    let stack = common::stack().await;
    // A port this test holds, bound but not listening: connections to it are
    // refused until signal listens on it, and nobody else can take it.
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("a free port");
    let late_addr = socket.local_addr().expect("its address");
    let browser = Browser::launch().await;
    let page = failing_page(
        &browser,
        &stack,
        &format!("http://{late_addr}"),
        "unreachable",
    )
    .await;
    // Signal comes up (another stack, on that port): the next retry works.
    let late = common::stack_on(socket.listen(1024).expect("listen")).await;
    wait(&page, "window.conn.state() === 'connected'", 20).await;
    let states = eval(&page, "window.states.map((s) => s.state).join(' ')").await;
    assert!(
        states
            .as_str()
            .unwrap_or_default()
            .ends_with("failed connected"),
        "{states}"
    );
    assert_no_exceptions(&page);
    late.shutdown().await.expect("clean shutdown");
    stack.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_shows_failed_and_is_not_retried() {
    let stack = common::stack().await;
    let signal = FailingSignal::start(
        "401 Unauthorized",
        "www-authenticate: Bearer\r\n",
        r#"{"type":"urn:deltamesh:problem:unauthorized","title":"Unauthorized","status":401,"detail":"the token is not valid"}"#,
    )
    .await;
    let browser = Browser::launch().await;
    let options = format!("{{ signalUrl: {:?} }}", signal.url);
    let page = common::page_with(&browser, &stack, "browser-errors", &options).await;
    wait(&page, "window.conn.state() === 'failed'", 15).await;
    let detail = eval(&page, "window.conn.detail()").await;
    let detail = detail.as_str().unwrap_or_default();
    assert!(
        detail.contains("401") && detail.contains("not retrying"),
        "{detail}"
    );
    // Backoff would have retried within 0.3 s; nothing comes in 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(signal.offer_times().len(), 1, "one offer, no retries");
    assert_eq!(
        eval(&page, "window.conn.close().then(() => window.conn.state())").await,
        "closed"
    );
    assert_no_exceptions(&page);
    stack.shutdown().await.expect("clean shutdown");
}

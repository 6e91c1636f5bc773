//! A page moves to another relay when its relay drains, goes silent or is
//! killed, and resumes there: nothing lost, nothing doubled, either way.
//!
//! The one-process stack has a single relay, so these run a small fleet of
//! `deltamesh` processes on a real nats-server: a registry, two relays and
//! a signal serving the web bundle. The page joins relay 1 (which takes one
//! peer), a native peer then lands on relay 2; relay 1 is then drained
//! (SIGTERM), frozen (SIGSTOP: its socket stays open and swallows every
//! packet, so only the page's silence timeout notices) or killed (SIGKILL).

use std::process::Child;
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_testkit::{NatsServer, spawn_service};
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer};

use crate::cdp::{Browser, Page};
use crate::common::{self, TOKEN, assert_no_exceptions, eval, received, wait, web_dir};

const DOC: &str = "00000000-0000-4000-8000-000000000004";
/// The page's silence timeout (the default).
const SILENCE_MS: f64 = 2000.0;

/// What happens to the page's relay.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    /// SIGTERM: it drains (peers get `Drain`) and exits.
    Drained,
    /// SIGSTOP: it stops answering without closing anything.
    Silent,
    /// SIGKILL: it is gone at once.
    Killed,
}

impl Fate {
    fn signal(self) -> libc::c_int {
        match self {
            Fate::Drained => libc::SIGTERM,
            Fate::Silent => libc::SIGSTOP,
            Fate::Killed => libc::SIGKILL,
        }
    }
}

/// The processes of the small fleet; killed when dropped.
struct Fleet {
    _nats: NatsServer,
    children: Vec<Child>,
    registry: String,
    nats_url: String,
    signal: String,
}

impl Fleet {
    fn start() -> Fleet {
        let nats = NatsServer::start();
        let nats_url = nats.url();
        let mut fleet = Fleet {
            _nats: nats,
            children: Vec::new(),
            registry: String::new(),
            nats_url,
            signal: String::new(),
        };
        fleet.registry = fleet.spawn(
            &[
                "registry",
                "--nats",
                &fleet.nats_url.clone(),
                "--listen",
                "127.0.0.1:0",
                "--relay-ttl",
                "2s",
            ],
            "registry: ",
        );
        let web = web_dir();
        let (nats_url, registry) = (fleet.nats_url.clone(), fleet.registry.clone());
        fleet.signal = fleet.spawn(
            &[
                "signal",
                "--nats",
                &nats_url,
                "--registry",
                &registry,
                "--dev",
                "--dev-token",
                TOKEN,
                "--port",
                "0",
                "--address-rate",
                "0",
                "--token-rate",
                "0",
                "--web-dir",
                web.to_str().expect("a UTF-8 path"),
            ],
            "signal: ",
        );
        fleet
    }

    fn spawn(&mut self, args: &[&str], ready: &str) -> String {
        let (child, line) = spawn_service(env!("CARGO_BIN_EXE_deltamesh"), args, ready);
        self.children.push(child);
        line
    }

    /// Starts a relay taking `max_peers`; returns its id and its process index.
    fn start_relay(&mut self, max_peers: usize) -> (Id, usize) {
        let (nats_url, registry) = (self.nats_url.clone(), self.registry.clone());
        let line = self.spawn(
            &[
                "relay",
                "--nats",
                &nats_url,
                "--registry",
                &registry,
                "--max-peers",
                &max_peers.to_string(),
            ],
            "relay: ",
        );
        let id = line
            .split(' ')
            .next()
            .and_then(|id| id.parse().ok())
            .expect("the relay's id");
        (id, self.children.len() - 1)
    }

    fn send_signal(&self, index: usize, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.children[index].id()).expect("a pid");
        // SAFETY: kill(2) has no memory effects; the pid is our own child's.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A native peer of `session`, once the signal can place it (a relay that
/// just started may not be registered yet).
async fn native_peer(signal: &str, session: &str) -> NativePeer {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match NativePeer::connect(
            ConnectOptions::new(signal, session, TOKEN).with_lane(LaneChoice::WebRtc),
        )
        .await
        {
            Ok(peer) => return peer,
            Err(error) if Instant::now() < deadline => {
                eprintln!("native peer not placed yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("the native peer connects: {error}"),
        }
    }
}

/// Asserts `texts` holds `<tag>-0..count` each exactly once; returns how
/// many of them came after a later one of the same sender (0 when the
/// sender's order holds).
fn exactly_once(texts: &[String], tag: &str, count: u64, who: &str) -> usize {
    let mut sorted = texts.to_vec();
    sorted.sort_by_key(|t| t[tag.len() + 1..].parse::<u64>().expect("a number"));
    let expected: Vec<String> = (0..count).map(|i| format!("{tag}-{i}")).collect();
    assert_eq!(sorted, expected, "{who} got every delta once");
    let mut highest = None;
    texts
        .iter()
        .filter(|t| {
            let n: u64 = t[tag.len() + 1..].parse().expect("a number");
            let late = highest.is_some_and(|h| n < h);
            highest = highest.max(Some(n));
            late
        })
        .count()
}

/// Starts `count` sends of `p-<i>` for i in `from..from + count`, their
/// promise in `window.pending`.
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

/// The page moves off its relay after `fate` and resumes on the other one.
async fn a_page_moves_when_its_relay_is(fate: Fate) {
    let mut fleet = Fleet::start();
    let (first, first_index) = fleet.start_relay(1);
    let session = format!("browser-moves-{fate:?}").to_lowercase();
    let browser = Browser::launch().await;
    let page = common::page_at(&browser, &fleet.signal, &session, "{}").await;
    eval(
        &page,
        "window.timeline = [];
         window.conn.onState((s) => window.timeline.push({ what: s.state, detail: s.detail, at: Date.now() }));
         window.conn.onNotice((n) => window.timeline.push({ what: 'notice ' + n.kind, detail: n.detail, at: Date.now() }));
         window.conn.connected().then(() => true)",
    )
    .await;
    // Relay 1 is full now: the native peer goes to relay 2.
    let (second, _) = fleet.start_relay(10);
    let mut native = native_peer(&fleet.signal, &session).await;
    assert_eq!(
        Id::from_slice(&native.welcome().relay_id).ok(),
        Some(second)
    );
    assert_ne!(first, second);
    wait(
        &page,
        &format!(
            "window.conn.peers().includes({:?})",
            native.peer_id().to_string()
        ),
        10,
    )
    .await;

    start_sends(&page, 0, 100).await;
    assert_eq!(
        eval(&page, "window.pending.then((seqs) => seqs.length)").await,
        100
    );
    native_sends(&native, 0, 50).await;
    wait(&page, "window.got.length >= 50", 20).await;

    let cut = eval(&page, "Date.now()").await.as_f64().expect("a time");
    fleet.send_signal(first_index, fate.signal());
    let cut_at = Instant::now();
    // Both sides keep sending while the page moves.
    start_sends(&page, 100, 100).await;
    native_sends(&native, 50, 50).await;

    wait(
        &page,
        &format!("window.timeline.some((t) => t.what === 'connected' && t.at >= {cut})"),
        30,
    )
    .await;
    println!(
        "{fate:?}: the page was connected again {:.0} ms after the signal",
        cut_at.elapsed().as_secs_f64() * 1000.0
    );
    let timeline = eval(&page, "window.timeline").await;
    let timeline: Vec<&serde_json::Value> = timeline
        .as_array()
        .expect("an array")
        .iter()
        .filter(|t| t["at"].as_f64() >= Some(cut))
        .collect();
    let at = |what: &str| {
        timeline
            .iter()
            .find(|t| t["what"] == what && t["at"].as_f64() >= Some(cut))
            .map(|t| t["at"].as_f64().expect("a time") - cut)
    };
    let lost = at("reconnecting").expect("the page noticed the loss");
    let back = at("connected").expect("the page is back");
    println!(
        "{fate:?}: timeline after the signal (ms): {:?}",
        timeline
            .iter()
            .map(|t| (
                t["what"].as_str().unwrap_or_default().to_owned(),
                t["at"].as_f64().unwrap_or_default() - cut
            ))
            .collect::<Vec<_>>()
    );
    match fate {
        Fate::Drained => {
            let drain = at("notice drain").expect("the page was told to move");
            assert!(drain <= lost, "the drain notice came first");
            let detail = timeline
                .iter()
                .find(|t| t["what"] == "notice drain")
                .unwrap()["detail"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(detail.contains("moving in 100 ms"), "{detail}");
            assert!(
                back - drain >= 100.0,
                "the page waited reconnect_after_ms before moving: {}",
                back - drain
            );
        }
        Fate::Silent => {
            assert!(at("notice drain").is_none());
            assert!(
                (SILENCE_MS - 600.0..=SILENCE_MS + 1500.0).contains(&lost),
                "a silent relay is noticed after about the silence timeout: {lost:.0} ms"
            );
        }
        Fate::Killed => {
            assert!(
                lost <= SILENCE_MS + 1500.0,
                "a killed relay is noticed within the silence timeout: {lost:.0} ms"
            );
        }
    }
    assert_eq!(
        eval(&page, "window.pending.then((seqs) => seqs.length)").await,
        100,
        "every send made while moving was acknowledged"
    );
    wait(&page, "window.got.length >= 100", 30).await;
    let got = received(&page).await;
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "the page got the deltas in seq order"
    );
    let got: Vec<String> = got.into_iter().map(|d| d.2).collect();
    let page_inversions = exactly_once(&got, "n", 100, "the page");
    let seen = common::native_receives(&mut native, 200).await;
    let seqs: Vec<u64> = seen.iter().map(|d| d.0).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "the native peer got the deltas in seq order: {seqs:?}"
    );
    let seen: Vec<String> = seen.into_iter().map(|(_, text)| text).collect();
    let native_inversions = exactly_once(&seen, "p", 200, "the native peer");
    // Each sender's deltas keep the order it sent them in, in the one
    // seq order, across the move.
    assert_eq!(
        (page_inversions, native_inversions),
        (0, 0),
        "{fate:?}: deltas out of their sender's order at the page and the native peer"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        eval(&page, "window.got.length").await,
        100,
        "nothing came twice"
    );
    assert_no_exceptions(&page);
    native.close().await;
    page.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_a_draining_relay_moves_after_reconnect_after_ms_and_loses_nothing() {
    a_page_moves_when_its_relay_is(Fate::Drained).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_relay_goes_silent_moves_within_the_silence_timeout_and_loses_nothing() {
    a_page_moves_when_its_relay_is(Fate::Silent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_relay_is_killed_moves_and_loses_nothing() {
    a_page_moves_when_its_relay_is(Fate::Killed).await;
}

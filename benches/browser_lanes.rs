//! Chromium on every lane in one run (issue 14's numbers): connect time,
//! delivery latency page → page and acked sends per second over WebRTC/UDP
//! (the baseline), ICE-TCP, TURN/UDP, TURN/TCP and the WebSocket lane, each
//! printed beside WebRTC/UDP. The native peer has no TURN client, so the
//! TURN lanes exist only here.
//!
//! Each lane gets a one-process stack of its own in this process, set up as
//! a deployment for that network would be (abuse limits off: the benchmark
//! measures the path):
//! - `webrtc-udp`: Chromium on the host, no ICE servers;
//! - `webrtc-tcp`: Chromium in a network namespace that drops UDP, the
//!   stack on the host's end of its veth pair, the relay's passive TCP
//!   candidate (`tests/support/netns.rs`; needs root);
//! - `turn-udp` / `turn-tcp`: a real coturn (`deltamesh_testkit::Coturn`),
//!   signal handing out only its `?transport=udp` / `?transport=tcp` URL
//!   with TURN REST credentials, the page on `iceTransportPolicy: "relay"`;
//! - `websocket`: the page on `lane: "websocket"` (PROTOCOL §11).
//!
//! Every page measured must report the lane it is measured for
//! (`conn.stats().lane`), so no number comes from another lane.
//!
//! Needs the web bundle (`scripts/build-web`), Debian's chromium and coturn.
//! Run: `cargo bench --bench browser_lanes` (add `-- --quick` for a short run).

#[path = "../tests/browser/cdp.rs"]
mod cdp;
// Only the namespace's creation and UDP block are used here.
#[allow(dead_code)]
#[path = "../tests/support/netns.rs"]
mod netns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use cdp::{Browser, Page};
use deltamesh::{RunningStack, StackConfig, start};
use deltamesh_relay::{Rate, RelayConfig};
use deltamesh_signal::{IceServers, RateLimit, SignalConfig};
use deltamesh_testkit::Coturn;
use netns::NetNs;

const TOKEN: &str = "bench-token";
const DOC: &str = "00000000-0000-4000-8000-000000000009";
const TURN_SECRET: &str = "bench-turn-secret";
const TURN_REALM: &str = "deltamesh.bench";

/// How many samples each measurement takes.
struct Counts {
    connects: usize,
    latency_deltas: usize,
    bulk_deltas: usize,
}

/// One lane's set-up: its name as `stats().lane` says it, the stack and
/// browser it runs on, and the `connect` options (a JS object literal).
struct Lane<'a> {
    name: &'static str,
    /// What `stats().lane` must say on this lane.
    reported: &'static str,
    stack: &'a RunningStack,
    browser: &'a Browser,
    options: &'static str,
}

/// What was measured on one lane.
struct Numbers {
    connect: Vec<Duration>,
    latency: Vec<Duration>,
    sends_per_s: f64,
    /// UDP datagrams the host's kernel dropped for full receive buffers
    /// while the lane was measured (the whole network namespace: other
    /// processes' drops count too).
    udp_drops: u64,
    /// Of those, the datagrams dropped at the relay's own UDP sockets.
    relay_drops: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let counts = if quick {
        Counts {
            connects: 5,
            latency_deltas: 300,
            bulk_deltas: 3_000,
        }
    } else {
        Counts {
            connects: 20,
            latency_deltas: 2_000,
            bulk_deltas: 20_000,
        }
    };
    let web_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/web");
    assert!(
        web_dir.join("pkg/deltamesh_worker.js").is_file(),
        "run scripts/build-web first"
    );
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let coturn = Coturn::start(TURN_SECRET, TURN_REALM);
    let netns = NetNs::create();
    netns.block_udp();

    let udp_stack = stack(&web_dir, loopback, IceServers::default()).await;
    let tcp_stack = stack(&web_dir, IpAddr::V4(netns.host_ip), IceServers::default()).await;
    let turn_udp_stack = stack(&web_dir, loopback, turn_only(&coturn, "udp")).await;
    let turn_tcp_stack = stack(&web_dir, loopback, turn_only(&coturn, "tcp")).await;
    let socket_stack = stack(&web_dir, loopback, IceServers::default()).await;
    let browser = Browser::launch().await;
    let browser_without_udp = Browser::launch_in(&netns).await;

    let lanes = [
        Lane {
            name: "WebRTC/UDP",
            reported: "webrtc-udp",
            stack: &udp_stack,
            browser: &browser,
            options: r#"{lane: "webrtc"}"#,
        },
        Lane {
            name: "ICE-TCP",
            reported: "webrtc-tcp",
            stack: &tcp_stack,
            browser: &browser_without_udp,
            options: r#"{lane: "webrtc"}"#,
        },
        Lane {
            name: "TURN/UDP",
            reported: "turn",
            stack: &turn_udp_stack,
            browser: &browser,
            options: r#"{lane: "webrtc", iceTransportPolicy: "relay"}"#,
        },
        Lane {
            name: "TURN/TCP",
            reported: "turn",
            stack: &turn_tcp_stack,
            browser: &browser,
            options: r#"{lane: "webrtc", iceTransportPolicy: "relay"}"#,
        },
        Lane {
            name: "WebSocket",
            reported: "websocket",
            stack: &socket_stack,
            browser: &browser,
            options: r#"{lane: "websocket"}"#,
        },
    ];
    println!(
        "deltamesh browser lanes benchmark ({} run: {} connects, {} latency deltas, \
         {} acked sends per lane)\n",
        if quick { "quick" } else { "full" },
        counts.connects,
        counts.latency_deltas,
        counts.bulk_deltas
    );
    let mut measured = Vec::new();
    for lane in &lanes {
        let numbers = measure(lane, &counts).await;
        eprintln!("{}: measured", lane.name);
        measured.push((lane.name, numbers));
    }
    // Both TURN lanes really went through coturn, over their transport.
    assert!(
        coturn.log_has("ALLOCATE processed, success"),
        "coturn allocated nothing: {:#?}",
        coturn.log()
    );
    print_table(&mut measured);

    drop(browser_without_udp);
    drop(browser);
    for stack in [
        udp_stack,
        tcp_stack,
        turn_udp_stack,
        turn_tcp_stack,
        socket_stack,
    ] {
        stack.shutdown().await.expect("clean shutdown");
    }
}

/// A stack serving the web bundle on `ip`, its signal handing out
/// `ice_servers`, with the relay's and signal's abuse limits off.
async fn stack(web_dir: &std::path::Path, ip: IpAddr, ice_servers: IceServers) -> RunningStack {
    start(StackConfig {
        listen: SocketAddr::new(ip, 0),
        relay: RelayConfig {
            bind_ip: ip,
            advertised_ip: ip,
            ice_tcp: true,
            delta_rate: Rate::UNLIMITED,
            byte_rate: Rate::UNLIMITED,
            ..RelayConfig::default()
        },
        signal: SignalConfig {
            web_dir: Some(web_dir.to_path_buf()),
            address_rate: RateLimit::OFF,
            token_rate: RateLimit::OFF,
            ice_servers,
            ..SignalConfig::new(TOKEN)
        },
    })
    .await
    .expect("stack starts")
}

/// Only `coturn`'s TURN URL over `transport`, with TURN REST credentials.
fn turn_only(coturn: &Coturn, transport: &str) -> IceServers {
    IceServers::new(
        Vec::new(),
        vec![coturn.turn_url(transport)],
        Some(TURN_SECRET.as_bytes()),
        Duration::from_secs(600),
    )
    .expect("TURN servers")
}

/// Connect times, latency and acked sends per second on `lane`.
async fn measure(lane: &Lane<'_>, counts: &Counts) -> Numbers {
    let drops_before = udp_receive_buffer_drops();
    let connect = connect_times(lane, counts.connects).await;
    let session = format!("latency-{}", lane.reported);
    let sender = connected_page(lane, &session).await;
    let receiver = connected_page(lane, &session).await;
    let latency = latency(&sender, &receiver, counts.latency_deltas).await;
    let sends_per_s = acked_sends_per_s(&sender, counts.bulk_deltas).await;
    receiver
        .wait_for(
            &format!(
                "window.conn.stats().deltasReceived >= {}",
                counts.latency_deltas + counts.bulk_deltas
            ),
            Duration::from_secs(120),
        )
        .await;
    for page in [sender, receiver] {
        assert_on_lane(&page, lane).await;
        let exceptions = page.exceptions();
        assert!(
            exceptions.is_empty(),
            "{exceptions:?}\n{:?}",
            page.console()
        );
        eval(&page, "window.conn.close()").await;
        page.close().await;
    }
    Numbers {
        connect,
        latency,
        sends_per_s,
        udp_drops: udp_receive_buffer_drops() - drops_before,
        relay_drops: lane
            .stack
            .relays
            .iter()
            .flat_map(|relay| relay.udp_addrs())
            .map(|addr| socket_drops(addr.port()))
            .sum(),
    }
}

/// The `drops` of the UDP sockets bound to `port` (/proc/net/udp): what
/// the kernel dropped for them since they were opened.
fn socket_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1)?.ends_with(&local)).then(|| fields.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// `Udp: RcvbufErrors` of this network namespace (/proc/net/snmp).
fn udp_receive_buffer_drops() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").expect("/proc/net/snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next().expect("names"), udp.next().expect("values"));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .expect("RcvbufErrors")
}

/// `connect()` to connected, `count` times one after another in one loaded
/// page; each connection must report `lane`'s name before it is closed.
async fn connect_times(lane: &Lane<'_>, count: usize) -> Vec<Duration> {
    let page = loaded_page(lane).await;
    let result = eval(
        &page,
        &format!(
            r#"(async () => {{
            const times = [], lanes = [];
            for (let i = 0; i < {count}; i++) {{
                const t0 = performance.now();
                const conn = await window.dm.connect("connect-{reported}", {TOKEN:?}, {options});
                await conn.connected();
                times.push(performance.now() - t0);
                // The lane shows once the peer connection has reported its
                // selected pair (with the next stats refresh).
                const deadline = performance.now() + 5000;
                while (!conn.stats().lane && performance.now() < deadline) {{
                    await new Promise((r) => setTimeout(r, 20));
                }}
                lanes.push(conn.stats().lane);
                await conn.close();
            }}
            return {{ times, lanes }};
        }})()"#,
            reported = lane.reported,
            options = lane.options,
        ),
    )
    .await;
    let lanes = result["lanes"].as_array().expect("lanes");
    assert!(
        lanes.iter().all(|l| l == lane.reported),
        "{}: a connection was on another lane: {lanes:?}",
        lane.name
    );
    page.close().await;
    result["times"]
        .as_array()
        .expect("times")
        .iter()
        .map(ms)
        .collect()
}

/// A page of `lane`'s stack with the bundle imported as `window.dm`.
async fn loaded_page(lane: &Lane<'_>) -> Page {
    let page = lane
        .browser
        .new_page(&format!("{}/healthz", lane.stack.signal_url()))
        .await;
    eval(
        &page,
        r#"(async () => {
            window.dm = await import("/pkg/deltamesh_worker.js");
            await window.dm.default();
            return true;
        })()"#,
    )
    .await;
    page
}

/// A page connected to `session` over `lane` (checked) as `window.conn`.
async fn connected_page(lane: &Lane<'_>, session: &str) -> Page {
    let page = loaded_page(lane).await;
    eval(
        &page,
        &format!(
            r#"(async () => {{
            window.conn = await window.dm.connect({session:?}, {TOKEN:?}, {options});
            await window.conn.connected();
            return true;
        }})()"#,
            options = lane.options,
        ),
    )
    .await;
    assert_on_lane(&page, lane).await;
    page
}

/// `page`'s connection reports `lane`'s name.
async fn assert_on_lane(page: &Page, lane: &Lane<'_>) {
    page.wait_for("window.conn.stats().lane !== null", Duration::from_secs(5))
        .await;
    let reported = eval(page, "window.conn.stats().lane").await;
    assert_eq!(
        reported, lane.reported,
        "{}: the page is on another lane",
        lane.name
    );
}

/// Latency page → relay → page, one delta every 2 ms, on the clock both
/// pages of one browser share.
async fn latency(sender: &Page, receiver: &Page, count: usize) -> Vec<Duration> {
    eval(
        receiver,
        r#"window.lat = []; window.conn.onDelta((d) => {
            if (d.kind !== 1) return;
            const sent = Number(new TextDecoder().decode(d.payload));
            window.lat.push(performance.timeOrigin + performance.now() - sent);
        }); true"#,
    )
    .await;
    eval(
        sender,
        &format!(
            r#"(async () => {{
            for (let i = 0; i < {count}; i++) {{
                const now = String(performance.timeOrigin + performance.now());
                window.conn.send(1, {DOC:?}, new TextEncoder().encode(now));
                await new Promise((r) => setTimeout(r, 2));
            }}
            return true;
        }})()"#
        ),
    )
    .await;
    receiver
        .wait_for(
            &format!("window.lat.length >= {count}"),
            Duration::from_secs(60),
        )
        .await;
    eval(receiver, "window.lat")
        .await
        .as_array()
        .expect("latencies")
        .iter()
        .map(ms)
        .collect()
}

/// Acked 100 B deltas per second from one page, a sliding window of 2,000
/// unacknowledged sends (as benches/browser.rs keeps).
async fn acked_sends_per_s(sender: &Page, count: usize) -> f64 {
    eval(
        sender,
        &format!(
            r#"(async () => {{
            const payload = new Uint8Array(100);
            const t0 = performance.now();
            let started = 0, acked = 0;
            await new Promise((done) => {{
                const pump = () => {{
                    while (started < {count} && started - acked < 2000) {{
                        started++;
                        window.conn.send(2, {DOC:?}, payload).then(() => {{
                            if (++acked === {count}) done(); else pump();
                        }});
                    }}
                }};
                pump();
            }});
            return {count} / ((performance.now() - t0) / 1000);
        }})()"#
        ),
    )
    .await
    .as_f64()
    .expect("a rate")
}

async fn eval(page: &Page, expression: &str) -> serde_json::Value {
    page.eval(expression)
        .await
        .unwrap_or_else(|e| panic!("{e}\nconsole: {:?}", page.console()))
}

fn ms(value: &serde_json::Value) -> Duration {
    Duration::from_secs_f64(value.as_f64().expect("milliseconds").max(0.0) / 1000.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One row per lane, each figure with its ratio to the first lane's.
fn print_table(measured: &mut [(&str, Numbers)]) {
    for (_, numbers) in measured.iter_mut() {
        numbers.connect.sort_unstable();
        numbers.latency.sort_unstable();
    }
    let millis = |d: Duration| d.as_secs_f64() * 1e3;
    let (_, base) = &measured[0];
    let base = [
        millis(percentile(&base.connect, 0.5)),
        millis(percentile(&base.connect, 0.99)),
        millis(percentile(&base.latency, 0.5)),
        millis(percentile(&base.latency, 0.99)),
        base.sends_per_s,
    ];
    println!(
        "{:<11} {:>16} {:>16} {:>16} {:>16} {:>18} {:>10} {:>9}",
        "lane",
        "connect p50",
        "connect p99",
        "latency p50",
        "latency p99",
        "acked sends/s",
        "UDP drops",
        "at relay"
    );
    for (name, numbers) in measured.iter() {
        let figures = [
            millis(percentile(&numbers.connect, 0.5)),
            millis(percentile(&numbers.connect, 0.99)),
            millis(percentile(&numbers.latency, 0.5)),
            millis(percentile(&numbers.latency, 0.99)),
            numbers.sends_per_s,
        ];
        let mut line = format!("{name:<11}");
        for (i, (figure, base)) in figures.iter().zip(base).enumerate() {
            let ratio = figure / base;
            if i < 4 {
                line += &format!(" {figure:>7.1} ms {ratio:>4.1}×");
            } else {
                line += &format!(" {figure:>9.0} /s {ratio:>4.2}×");
            }
        }
        println!(
            "{line} {:>10} {:>9}",
            numbers.udp_drops, numbers.relay_drops
        );
    }
    println!(
        "\n(× : the lane's figure over WebRTC/UDP's in this run; UDP drops: datagrams the \
         host dropped for full receive buffers during the lane, any process's; at relay: of \
         those, at the lane's relay sockets)"
    );
}

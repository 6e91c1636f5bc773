//! The relay benchmark: raw str0m as the baseline, then the real relay
//! (the `deltamesh` binary, its own process) with native peers over
//! loopback UDP, printed side by side with ratios; then what security
//! costs: signing deltas (against the unsigned relay) and token checks;
//! then what tracing costs (spans exported over OTLP against tracing off);
//! then the lanes side by side: connect time, delivery latency, throughput
//! and memory per idle peer over UDP, over ICE-TCP (RFC 4571 on loopback
//! TCP) and over the WebSocket lane (PROTOCOL §11, through signal).
//!
//! Run: `cargo bench --bench relay` (add `-- --quick` for a short run, and
//! `--lanes` for the lanes section alone).

#[path = "support/raw_str0m.rs"]
mod raw_str0m;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_proto::security::SECURITY_HEADER_LEN;
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use raw_str0m::Pair;

const TOKEN: &str = "bench-token";

struct Sizes {
    deltas: u64,
    receivers: usize,
    connects: usize,
    idle_peers: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let lanes_only = args.iter().any(|a| a == "--lanes");
    // The in-flight window, the same for raw str0m, the relay and the peers.
    let window: usize = args
        .iter()
        .position(|a| a == "--window")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(16 * 1024);
    let sizes = if quick {
        Sizes {
            deltas: 5_000,
            receivers: 10,
            connects: 50,
            idle_peers: 200,
        }
    } else {
        Sizes {
            deltas: 30_000,
            receivers: 10,
            connects: 200,
            idle_peers: 1_000,
        }
    };
    println!(
        "deltamesh relay benchmark ({} run, in-flight window {} KiB)\n",
        if quick { "quick" } else { "full" },
        window / 1024
    );

    // The clients share one thread, so the relay process has the other core
    // and client tasks wake each other without crossing threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if lanes_only {
        lanes(&runtime, window, &sizes);
        return;
    }
    println!(
        "1. fan-out throughput: 1 sender, {} receivers",
        sizes.receivers
    );
    for size in [100usize, 1024] {
        // Raw str0m carries messages of the relayed size (security header +
        // frame), the bytes str0m moves per delivered delta: a 1 KiB frame
        // becomes 1,144 B and no longer fits one SCTP packet (1,062 B).
        let relayed_size = size + SECURITY_HEADER_LEN;
        let raw = raw_str0m_throughput(relayed_size, sizes.deltas, window);
        let relay = Relay::spawn(window);
        let (delivered, elapsed, relay_cpu) =
            runtime.block_on(fan_out(&relay, size, sizes.deltas, sizes.receivers));
        let rate = delivered as f64 / elapsed.as_secs_f64();
        // Raw str0m runs both ends on one core: its CPU per message is 1/rate.
        let raw_us = 1e6 / raw;
        let relay_us = relay_cpu.as_secs_f64() * 1e6 / delivered as f64;
        println!(
            "   {size:>5} B frames: raw str0m 1->1 in memory ({relayed_size} B messages) {raw:>9.0} msg/s | relay delivered {rate:>9.0} deltas/s \
             ({} deltas in {:.2} s) | ratio {:.2}",
            delivered,
            elapsed.as_secs_f64(),
            rate / raw
        );
        println!(
            "          CPU per message: raw str0m {raw_us:.2} us (both ends) | relay process {relay_us:.2} us \
             per delivered delta | ratio {:.2}",
            raw_us / relay_us
        );
    }

    println!("\n2. connect: POST offer -> three channels open -> Welcome");
    let relay = Relay::spawn(window);
    let mut times = runtime.block_on(sequential_connects(&relay, sizes.connects));
    times.sort();
    println!(
        "   sequential, {} connections: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().expect("connections"))
    );
    let cpu_before = relay.cpu_time();
    let started = Instant::now();
    let made = runtime.block_on(concurrent_connects(&relay, sizes.connects, 20));
    let wall = started.elapsed();
    let cpu = relay.cpu_time() - cpu_before;
    println!(
        "   20 at a time, {made} connections: {:.0} conn/s wall (clients share the 2 cores); \
         relay CPU {:.2} ms per connection = {:.0} conn/s per relay core",
        made as f64 / wall.as_secs_f64(),
        ms(cpu) / made as f64,
        made as f64 / cpu.as_secs_f64()
    );

    println!("\n3. memory per idle connected peer");
    let relay = Relay::spawn(window);
    let before = relay.rss_bytes();
    let peers = runtime.block_on(connect_many(&relay, sizes.idle_peers));
    std::thread::sleep(Duration::from_secs(2));
    let after = relay.rss_bytes();
    println!(
        "   {} idle peers: relay RSS {:.1} MiB -> {:.1} MiB = {:.1} KiB per peer",
        peers.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / 1024.0 / peers.len() as f64
    );
    drop(peers);

    println!(
        "\n4. signing every accepted delta (Ed25519): fan-out, 100 B frames, 1 sender, {} receivers",
        sizes.receivers
    );
    let signing_key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/services/signal/tests/keys/ed25519-a.pem"
    );
    let mut results = Vec::new();
    for extra in [&[][..], &["--signing-key", signing_key][..]] {
        let relay = Relay::spawn_with(window, extra);
        let (delivered, elapsed, relay_cpu) =
            runtime.block_on(fan_out(&relay, 100, sizes.deltas, sizes.receivers));
        results.push((
            delivered as f64 / elapsed.as_secs_f64(),
            relay_cpu.as_secs_f64() * 1e6 / delivered as f64,
        ));
    }
    let [(plain_rate, plain_us), (signed_rate, signed_us)] = results[..] else {
        unreachable!("two runs")
    };
    println!(
        "   unsigned {plain_rate:>9.0} deltas/s, {plain_us:.2} us relay CPU each | signed {signed_rate:>9.0} deltas/s, \
         {signed_us:.2} us each | ratio {:.2} (rate), {:.2} (CPU)",
        signed_rate / plain_rate,
        signed_us / plain_us
    );

    println!("\n5. token checks in signal (per request)");
    let hs = token_checks(false);
    let ed = token_checks(true);
    println!(
        "   HS256 {:.1} us | EdDSA {:.1} us | ratio {:.2}",
        hs.as_secs_f64() * 1e6,
        ed.as_secs_f64() * 1e6,
        ed.as_secs_f64() / hs.as_secs_f64()
    );

    println!(
        "\n6. tracing: off, then on (every connection's spans exported over OTLP/gRPC), {} receivers, {} connects",
        sizes.receivers, sizes.connects
    );
    tracing_cost(&runtime, window, &sizes);
    lanes(&runtime, window, &sizes);
}

/// How a benchmark peer reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// A UDP host candidate (the default).
    Udp,
    /// Only an active ICE-TCP candidate, to the relay's passive one.
    IceTcp,
    /// The WebSocket lane: signal's socket, forwarded to the relay's lane port.
    WebSocket,
}

/// Section 7: connect time, delivery latency, fan-out throughput and
/// memory per idle peer, over UDP, ICE-TCP and the WebSocket lane, each
/// against a fresh relay, in one run.
fn lanes(runtime: &tokio::runtime::Runtime, window: usize, sizes: &Sizes) {
    println!(
        "\n7. lanes: UDP beside ICE-TCP and the WebSocket lane (loopback), {} sequential connects, {} deltas one in flight, fan-out 1 -> {}, {} idle peers",
        sizes.connects, sizes.connects, sizes.receivers, sizes.idle_peers
    );
    for lane in [Lane::Udp, Lane::IceTcp, Lane::WebSocket] {
        let relay = Relay::spawn(window);
        let mut times = runtime.block_on(sequential_connects_on(&relay, sizes.connects, lane));
        times.sort();
        let mut latencies = runtime.block_on(latency_on(&relay, lane, sizes.connects));
        latencies.sort();
        let mut rates = Vec::new();
        for size in [100usize, 1024] {
            let (delivered, elapsed, cpu) = runtime.block_on(fan_out_on(
                &relay,
                lane,
                size,
                sizes.deltas,
                sizes.receivers,
            ));
            rates.push((
                size,
                delivered as f64 / elapsed.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / delivered as f64,
            ));
        }
        drop(relay);
        let relay = Relay::spawn(window);
        let before = relay.rss_bytes();
        let peers = runtime.block_on(connect_many_on(&relay, sizes.idle_peers, lane));
        std::thread::sleep(Duration::from_secs(2));
        let after = relay.rss_bytes();
        let per_peer = after.saturating_sub(before) as f64 / 1024.0 / peers.len() as f64;
        drop(peers);
        println!(
            "   {lane:?}: connect p50 {:.2} ms, p99 {:.2} ms | latency p50 {:.0} us, p99 {:.0} us | {} | idle peer {per_peer:.1} KiB RSS",
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.99)),
            percentile(&latencies, 0.50).as_secs_f64() * 1e6,
            percentile(&latencies, 0.99).as_secs_f64() * 1e6,
            rates
                .iter()
                .map(|(size, rate, us)| format!(
                    "{size} B: {rate:.0} deltas/s, {us:.2} us relay CPU each"
                ))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
}

/// An OTLP trace receiver that only counts the spans it gets.
#[derive(Clone, Default)]
struct SpanSink(std::sync::Arc<std::sync::atomic::AtomicU64>);

#[tonic::async_trait]
impl TraceService for SpanSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0
            .fetch_add(spans as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl SpanSink {
    /// Serves OTLP/gRPC on a free local port; returns its endpoint URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(self.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Fan-out and connects with tracing off, then with every connection traced
/// and exported to an OTLP receiver in this process.
fn tracing_cost(runtime: &tokio::runtime::Runtime, window: usize, sizes: &Sizes) {
    let sink = SpanSink::default();
    let endpoint = runtime.block_on(sink.start());
    let traced = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let mut results = Vec::new();
    for env in [&[][..], &traced[..]] {
        let relay = Relay::spawn_with_env(window, &[], env);
        let (delivered, elapsed, relay_cpu) =
            runtime.block_on(fan_out(&relay, 100, sizes.deltas, sizes.receivers));
        let mut connects = runtime.block_on(sequential_connects(&relay, sizes.connects));
        connects.sort();
        results.push((
            delivered as f64 / elapsed.as_secs_f64(),
            relay_cpu.as_secs_f64() * 1e6 / delivered as f64,
            percentile(&connects, 0.50),
        ));
    }
    // The last spans leave within the batch delay.
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    let [
        (off_rate, off_us, off_connect),
        (on_rate, on_us, on_connect),
    ] = results[..]
    else {
        unreachable!("two runs")
    };
    println!(
        "   fan-out, 100 B frames: off {off_rate:>9.0} deltas/s, {off_us:.2} us relay CPU each | on {on_rate:>9.0} deltas/s, \
         {on_us:.2} us each | ratio {:.2} (rate), {:.2} (CPU)",
        on_rate / off_rate,
        on_us / off_us
    );
    println!(
        "   sequential connect p50: off {:.2} ms | on {:.2} ms | ratio {:.2}   ({} spans exported)",
        ms(off_connect),
        ms(on_connect),
        on_connect.as_secs_f64() / off_connect.as_secs_f64(),
        sink.spans()
    );
}

/// Time to verify one token, HS256 or EdDSA, averaged over many.
fn token_checks(eddsa: bool) -> Duration {
    use deltamesh_signal::token::{Claims, TokenSigner, TokenVerifier, unix_now};
    const CHECKS: u32 = 20_000;
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/services/signal/tests/keys/");
    let read = |name: &str| std::fs::read(format!("{keys}{name}")).expect("test key");
    let mut verifier = TokenVerifier::default();
    let signer = if eddsa {
        verifier
            .add_eddsa_pem("k", &read("ed25519-a.pub.pem"))
            .unwrap();
        TokenSigner::eddsa_pem("k", &read("ed25519-a.pem")).unwrap()
    } else {
        let secret = b"0123456789abcdef0123456789abcdef";
        verifier.add_hs256("k", secret).unwrap();
        TokenSigner::hs256("k", secret).unwrap()
    };
    let token = signer.sign(&Claims {
        iss: None,
        sub: "bench".into(),
        session: "bench".into(),
        grants: Default::default(),
        exp: unix_now() + 3600,
        nbf: None,
        iat: None,
    });
    let started = Instant::now();
    for _ in 0..CHECKS {
        verifier.verify(&token).expect("a good token");
    }
    started.elapsed() / CHECKS
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The one-process stack binary, run as its own process.
struct Relay {
    child: Child,
    url: String,
    window: usize,
}

impl Relay {
    fn spawn(window: usize) -> Relay {
        Relay::spawn_with(window, &[])
    }

    /// The relay with `extra` command-line arguments.
    fn spawn_with(window: usize, extra: &[&str]) -> Relay {
        Relay::spawn_with_env(window, extra, &[])
    }

    /// The relay with `extra` arguments and `env` variables.
    fn spawn_with_env(window: usize, extra: &[&str], env: &[(&str, &str)]) -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_deltamesh"))
            .args(["--port", "0", "--dev-token", TOKEN])
            // The benchmark measures the relay, not its abuse limits.
            .args(["--address-rate", "0", "--token-rate", "0"])
            .args(["--delta-rate", "0", "--byte-rate", "0"])
            .args(extra)
            .args(["--send-window", &window.to_string()])
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the deltamesh binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let url = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("signal: ").map(str::to_owned))
            .expect("the stack prints its signal URL");
        Relay { child, url, window }
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
    }

    fn rss_bytes(&self) -> u64 {
        self.proc_file("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// User + system CPU time the relay process has used.
    fn cpu_time(&self) -> Duration {
        let stat = self.proc_file("stat");
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = fields
            .get(11..13)
            .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
        Duration::from_secs_f64(ticks as f64 / 100.0)
    }

    fn options(&self, session: &str) -> ConnectOptions {
        self.options_on(session, Lane::Udp)
    }

    fn options_on(&self, session: &str, lane: Lane) -> ConnectOptions {
        let mut options = ConnectOptions::new(&self.url, session, TOKEN);
        options.send_window = self.window;
        options.lane = LaneChoice::WebRtc;
        match lane {
            Lane::Udp => {}
            Lane::IceTcp => {
                options.udp = false;
                options.ice_tcp = true;
            }
            Lane::WebSocket => options.lane = LaneChoice::WebSocket,
        }
        options
    }

    async fn join_on(&self, session: &str, lane: Lane) -> NativePeer {
        NativePeer::connect(self.options_on(session, lane))
            .await
            .expect("peer connects")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `count` deltas of `size` bytes from one peer; returns the deltas
/// delivered to all receivers, the time until the last one arrived, and the
/// CPU time the relay process used meanwhile.
async fn fan_out(
    relay: &Relay,
    size: usize,
    count: u64,
    receivers: usize,
) -> (u64, Duration, Duration) {
    fan_out_on(relay, Lane::Udp, size, count, receivers).await
}

/// [`fan_out`] with every peer on `lane`.
async fn fan_out_on(
    relay: &Relay,
    lane: Lane,
    size: usize,
    count: u64,
    receivers: usize,
) -> (u64, Duration, Duration) {
    let session = format!("fan-out-{lane:?}-{size}");
    let mut sinks = Vec::new();
    for _ in 0..receivers {
        sinks.push(relay.join_on(&session, lane).await);
    }
    let mut sender = relay.join_on(&session, lane).await;
    let started = Instant::now();
    let cpu_before = relay.cpu_time();
    let counting: Vec<_> = sinks
        .into_iter()
        .map(|mut sink| {
            tokio::spawn(async move {
                let mut got = 0u64;
                while got < count {
                    match sink.next_event().await {
                        Some(PeerEvent::Delta(_)) => got += 1,
                        Some(_) => {}
                        None => break,
                    }
                }
                got
            })
        })
        .collect();
    let payload = vec![0x5A; size.saturating_sub(56)];
    let mut sent = 0u64;
    let mut acked = 0u64;
    while acked < count {
        while sent < count && sent - acked < 4096 {
            sender
                .send(1, Id::default(), payload.clone())
                .await
                .expect("send");
            sent += 1;
        }
        match sender.next_event().await {
            Some(PeerEvent::Acked { .. }) => acked += 1,
            Some(PeerEvent::Rejected(r)) => panic!("rejected: {r:?}"),
            Some(_) => {}
            None => panic!("sender disconnected"),
        }
    }
    let mut delivered = 0;
    for task in counting {
        delivered += task.await.unwrap_or(0);
    }
    (delivered, started.elapsed(), relay.cpu_time() - cpu_before)
}

/// Send to delivery, one 100-byte delta in flight at a time, `count`
/// times, between two peers of one session on `lane`.
async fn latency_on(relay: &Relay, lane: Lane, count: usize) -> Vec<Duration> {
    let session = format!("latency-{lane:?}");
    let mut receiver = relay.join_on(&session, lane).await;
    let sender = relay.join_on(&session, lane).await;
    let payload = vec![0x5A; 100 - 56];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        sender
            .send(1, Id::default(), payload.clone())
            .await
            .expect("send");
        loop {
            match receiver.next_event().await {
                Some(PeerEvent::Delta(_)) => break,
                Some(_) => {}
                None => panic!("receiver disconnected"),
            }
        }
        times.push(started.elapsed());
    }
    times
}

async fn sequential_connects(relay: &Relay, count: usize) -> Vec<Duration> {
    sequential_connects_on(relay, count, Lane::Udp).await
}

async fn sequential_connects_on(relay: &Relay, count: usize, lane: Lane) -> Vec<Duration> {
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        let peer = relay.join_on(&format!("connect-{i}"), lane).await;
        times.push(started.elapsed());
        peer.close().await;
    }
    times
}

async fn concurrent_connects(relay: &Relay, count: usize, parallel: usize) -> usize {
    let mut made = 0;
    for batch in 0..count.div_ceil(parallel) {
        let tasks: Vec<_> = (0..parallel)
            .map(|i| {
                let options = relay.options(&format!("burst-{batch}-{i}"));
                tokio::spawn(async move {
                    let peer = NativePeer::connect(options).await.ok()?;
                    peer.close().await;
                    Some(())
                })
            })
            .collect();
        for task in tasks {
            if let Ok(Some(())) = task.await {
                made += 1;
            }
        }
    }
    made
}

async fn connect_many(relay: &Relay, count: usize) -> Vec<NativePeer> {
    connect_many_on(relay, count, Lane::Udp).await
}

async fn connect_many_on(relay: &Relay, count: usize, lane: Lane) -> Vec<NativePeer> {
    let mut peers = Vec::with_capacity(count);
    for i in 0..count {
        peers.push(relay.join_on(&format!("idle-{}", i % 50), lane).await);
    }
    peers
}

/// Messages per second from one `Rtc` to another wired in memory: an offerer
/// set up like the native peer, an ICE-lite answerer set up like the relay.
fn raw_str0m_throughput(size: usize, count: u64, window: usize) -> f64 {
    let mut pair = Pair::new(1);
    let message = vec![0x5A; size];
    let mut sent = 0u64;
    let mut started = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pair.received_messages < count && Instant::now() < deadline {
        if let Some(mut channel) = pair.sender.channel(pair.channel) {
            started.get_or_insert_with(Instant::now);
            while sent < count {
                let in_flight = channel.buffered_amount();
                if in_flight > 0 && in_flight + size > window {
                    break;
                }
                if !channel.write(true, &message).unwrap_or(false) {
                    break;
                }
                sent += 1;
            }
        }
        let next = pair.exchange();
        let now = Instant::now();
        if next <= now {
            pair.timeout(now);
        }
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    pair.received_messages as f64 / elapsed.as_secs_f64().max(1e-9)
}

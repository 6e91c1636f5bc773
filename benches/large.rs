//! The large-delta benchmark (issue 13): a 1 MiB and a 16 MiB delta from one
//! native peer to 10 receivers through the one-process stack (the
//! `deltamesh` binary, its own process), beside raw str0m moving the same
//! bytes to 10 receivers in 16 KiB messages in the same run; peak memory of
//! the relay and of the peers' process; then small-delta latency while a
//! 16 MiB delta is in flight, beside the same small deltas with nothing
//! large in flight.
//!
//! Run: `cargo bench --bench large` (add `-- --quick` for a short run,
//! `-- --window BYTES` for another in-flight window).

#[path = "support/raw_str0m.rs"]
mod raw_str0m;

use std::process::Child;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_proto::fragment::{FRAGMENT_BODY, FRAGMENT_HEADER_LEN};
use deltamesh_testkit::spawn_service;
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};
use raw_str0m::Pair;
use tokio::sync::mpsc;

const TOKEN: &str = "bench-token";
const MIB: usize = 1024 * 1024;
const RECEIVERS: usize = 10;
/// The in-flight window of relay, peers and raw str0m alike: their default,
/// or `--window BYTES`.
fn window() -> usize {
    static WINDOW: OnceLock<usize> = OnceLock::new();
    *WINDOW.get_or_init(|| {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == "--window")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(16 * 1024)
    })
}
/// One fragment on the wire: what str0m moves per message for a large delta.
const FRAGMENT_MESSAGE: usize = FRAGMENT_HEADER_LEN + FRAGMENT_BODY;
/// Small deltas: payload bytes (an 8-byte send stamp, then zeros).
const SMALL: usize = 100;
/// One small delta every this often.
const SMALL_EVERY: Duration = Duration::from_millis(2);
/// A delta frame's header on `send`; its relayed frame's on `receive`.
const FRAME_HEADER: usize = 56;
const RELAYED_HEADER: usize = 176;

/// The payload of a delta whose frame is `size` bytes (a "16 MiB delta" is
/// the largest the relay takes by default: its frame is 16 MiB).
fn payload_len(size: usize) -> usize {
    size - FRAME_HEADER
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = |size: usize| match (quick, size > MIB) {
        (true, _) => 1,
        (false, false) => 5,
        (false, true) => 3,
    };
    println!(
        "deltamesh large-delta benchmark ({} run, {RECEIVERS} receivers, in-flight window {} KiB)\n",
        if quick { "quick" } else { "full" },
        window() / 1024
    );
    // The peers share one thread, so the relay process has the other core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!("1. one delta to {RECEIVERS} receivers: time until the last has it whole");
    for size in [MIB, 16 * MIB] {
        reset_peak_rss();
        // Raw str0m moves each receiver's relayed frame.
        let raw = raw_str0m_fan_out(payload_len(size) + RELAYED_HEADER, RECEIVERS);
        let raw_peak = own_peak_rss();
        let relay = Relay::spawn();
        let idle_rss = relay.rss().current;
        reset_peak_rss();
        let cpu_before = (relay.cpu_time(), own_cpu_time());
        let wall = Instant::now();
        let mut times = runtime.block_on(large_fan_out(&relay, size, runs(size)));
        let wall = wall.elapsed();
        let relay_cpu = relay.cpu_time() - cpu_before.0;
        let peers_cpu = own_cpu_time() - cpu_before.1;
        let peers_peak = own_peak_rss();
        times.sort();
        let median = times[times.len() / 2];
        let moved = (size * RECEIVERS) as f64 / MIB as f64;
        println!(
            "   {:>2} MiB: raw str0m 1->{RECEIVERS} in memory {:>8.1} ms ({:>6.1} MiB/s) | relay, median of {} {:>8.1} ms \
             ({:>6.1} MiB/s, all {}) | ratio {:.2}",
            size / MIB,
            ms(raw),
            moved / raw.as_secs_f64(),
            times.len(),
            ms(median),
            moved / median.as_secs_f64(),
            times
                .iter()
                .map(|t| format!("{:.0}", ms(*t)))
                .collect::<Vec<_>>()
                .join("/"),
            raw.as_secs_f64() / median.as_secs_f64()
        );
        println!(
            "          CPU over the runs ({:.2} s wall, connects included): relay process {:.2} s ({:.0}% of a core) | \
             peers' process {:.2} s ({:.0}%)",
            wall.as_secs_f64(),
            relay_cpu.as_secs_f64(),
            100.0 * relay_cpu.as_secs_f64() / wall.as_secs_f64(),
            peers_cpu.as_secs_f64(),
            100.0 * peers_cpu.as_secs_f64() / wall.as_secs_f64()
        );
        let upload = runtime.block_on(upload_time(&relay, size));
        println!(
            "          of which the upload alone (sender -> relay, stored and acknowledged, nobody receiving): {:.1} ms",
            ms(upload)
        );
        let rss = relay.rss();
        println!(
            "          memory: relay RSS {:.1} MiB idle with peers, peak {:.1} MiB | peers' process peak {:.1} MiB \
             (11 peers) | raw str0m's process peak {:.1} MiB",
            mib(idle_rss),
            mib(rss.peak),
            mib(peers_peak),
            mib(raw_peak)
        );
    }

    println!(
        "\n2. small-delta latency ({SMALL} B every {} ms from another peer, at {RECEIVERS} receivers): \
         nothing large in flight, then while 16 MiB deltas are",
        SMALL_EVERY.as_millis()
    );
    let relay = Relay::spawn();
    let (quiet, loaded, transfers) =
        runtime.block_on(head_of_line(&relay, 16 * MIB, runs(16 * MIB)));
    println!(
        "   (each 16 MiB delta took {} ms from send until its last receiver had it)",
        transfers
            .iter()
            .map(|t| format!("{:.0}", ms(*t)))
            .collect::<Vec<_>>()
            .join("/")
    );
    for (name, p) in [("p10", 0.1), ("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        println!(
            "   {name}: quiet {:>8.2} ms ({} deliveries) | 16 MiB in flight {:>8.2} ms ({} deliveries) | ratio {:>7.1}",
            ms(percentile(&quiet, p)),
            quiet.len(),
            ms(percentile(&loaded, p)),
            loaded.len(),
            percentile(&loaded, p).as_secs_f64() / percentile(&quiet, p).as_secs_f64().max(1e-9)
        );
    }
}

/// `runs` deltas of `size` random bytes, one at a time, from one peer to
/// [`RECEIVERS`] peers that check every byte; the time from `send` until the
/// last receiver has it, per run.
async fn large_fan_out(relay: &Relay, size: usize, runs: usize) -> Vec<Duration> {
    let session = format!("large-{size}");
    let (arrivals, mut arrived) = mpsc::unbounded_channel();
    let payloads: Vec<Arc<Vec<u8>>> = (0..runs)
        .map(|run| Arc::new(random_bytes(payload_len(size), run as u64 + 1)))
        .collect();
    for _ in 0..RECEIVERS {
        let mut peer = relay.join(&session).await;
        let arrivals = arrivals.clone();
        let payloads = payloads.clone();
        tokio::spawn(async move {
            let mut next = 0;
            while let Some(event) = peer.next_event().await {
                if let PeerEvent::Delta(delta) = event {
                    assert!(
                        delta.payload() == payloads[next].as_slice(),
                        "delta {next} arrived whole and unchanged"
                    );
                    next += 1;
                    let _ = arrivals.send(Instant::now());
                }
            }
        });
    }
    let mut sender = relay.join(&session).await;
    let mut times = Vec::new();
    for payload in payloads {
        let started = Instant::now();
        sender
            .send(1, Id::default(), payload.to_vec())
            .await
            .expect("send");
        let mut last = started;
        for _ in 0..RECEIVERS {
            let at = tokio::time::timeout(Duration::from_secs(120), arrived.recv())
                .await
                .expect("every receiver gets the delta in time")
                .expect("receivers alive");
            last = last.max(at);
        }
        times.push(last - started);
        expect_ack(&mut sender).await;
    }
    sender.close().await;
    times
}

/// The time from `send` to `Acked` of one delta of `size` in a session
/// with no other peer.
async fn upload_time(relay: &Relay, size: usize) -> Duration {
    let mut sender = relay.join(&format!("upload-{size}")).await;
    let payload = random_bytes(payload_len(size), 3);
    let started = Instant::now();
    sender.send(1, Id::default(), payload).await.expect("send");
    expect_ack(&mut sender).await;
    let elapsed = started.elapsed();
    sender.close().await;
    elapsed
}

async fn expect_ack(sender: &mut NativePeer) {
    loop {
        match sender.next_event().await {
            Some(PeerEvent::Acked { .. }) => return,
            Some(PeerEvent::Rejected(reject)) => panic!("rejected: {reject:?}"),
            Some(_) => {}
            None => panic!("sender disconnected"),
        }
    }
}

/// Small deltas from one peer to [`RECEIVERS`] peers, first with nothing
/// else in flight, then while another peer sends `runs` deltas of `large`
/// bytes one after the other. Returns the latencies (send call to
/// receiver's event) of the small deltas sent in each phase: all of the
/// quiet phase, and those sent while a large delta was on its way (from its
/// `send` until its last receiver had it); and how long each large delta
/// was on its way.
async fn head_of_line(
    relay: &Relay,
    large: usize,
    runs: usize,
) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let session = "head-of-line";
    // (sent, latency) of every small delivery at every receiver.
    let deliveries: Arc<Mutex<Vec<(u64, Duration)>>> = Arc::default();
    let (large_arrivals, mut large_arrived) = mpsc::unbounded_channel();
    for _ in 0..RECEIVERS {
        let mut peer = relay.join(session).await;
        let deliveries = deliveries.clone();
        let large_arrivals = large_arrivals.clone();
        tokio::spawn(async move {
            while let Some(event) = peer.next_event().await {
                if let PeerEvent::Delta(delta) = event {
                    if delta.payload().len() == SMALL {
                        let sent =
                            u64::from_le_bytes(delta.payload()[..8].try_into().expect("stamp"));
                        let latency = Duration::from_nanos(now_ns().saturating_sub(sent));
                        deliveries.lock().expect("lock").push((sent, latency));
                    } else {
                        let _ = large_arrivals.send(now_ns());
                    }
                }
            }
        });
    }
    let mut big = relay.join(session).await;
    let small = relay.join(session).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut small = small;
            let mut tick = tokio::time::interval(SMALL_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let mut payload = now_ns().to_le_bytes().to_vec();
                payload.resize(SMALL, 0);
                small.send(1, Id::default(), payload).await.expect("send");
                sent += 1;
                // Acks are not measured, only taken.
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::ZERO, small.next_event()).await
                {}
            }
            small.close().await;
            sent
        })
    };
    let quiet_from = now_ns();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let quiet_to = now_ns();
    let mut windows = Vec::new();
    for run in 0..runs {
        let payload = random_bytes(payload_len(large), run as u64 + 100);
        let from = now_ns();
        big.send(1, Id::default(), payload).await.expect("send");
        let mut to = from;
        for _ in 0..RECEIVERS {
            let at = tokio::time::timeout(Duration::from_secs(120), large_arrived.recv())
                .await
                .expect("every receiver gets the large delta in time")
                .expect("receivers alive");
            to = to.max(at);
        }
        windows.push((from, to));
        expect_ack(&mut big).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ticker.await.expect("ticker");
    // The small deltas sent last are still on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deliveries = deliveries.lock().expect("lock").clone();
    let in_phase = |keep: &dyn Fn(u64) -> bool| {
        let mut latencies: Vec<Duration> = deliveries
            .iter()
            .filter(|(sent, _)| keep(*sent))
            .map(|(_, latency)| *latency)
            .collect();
        latencies.sort();
        latencies
    };
    let quiet = in_phase(&|sent| (quiet_from..quiet_to).contains(&sent));
    let loaded = in_phase(&|sent| {
        windows
            .iter()
            .any(|(from, to)| (*from..*to).contains(&sent))
    });
    let transfers = windows
        .iter()
        .map(|(from, to)| Duration::from_nanos(to - from))
        .collect();
    (quiet, loaded, transfers)
}

/// Nanoseconds since the first call: the clock the peers of this process
/// share.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// `len` pseudo-random bytes (xorshift64*), different for each `seed`.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Resident memory of a process: now and its peak.
struct Rss {
    current: u64,
    peak: u64,
}

fn rss_of(status: &str) -> Rss {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Rss {
        current: field("VmRSS:"),
        peak: field("VmHWM:"),
    }
}

/// User + system CPU time of the process whose `/proc/PID/stat` is `stat`.
fn cpu_of(stat: &str) -> Duration {
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

fn own_cpu_time() -> Duration {
    cpu_of(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// Starts this process's peak RSS afresh from its current RSS.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn own_peak_rss() -> u64 {
    rss_of(&std::fs::read_to_string("/proc/self/status").unwrap_or_default()).peak
}

/// The one-process stack binary, run as its own process.
struct Relay {
    child: Child,
    url: String,
}

impl Relay {
    fn spawn() -> Relay {
        let window = window().to_string();
        let (child, url) = spawn_service(
            env!("CARGO_BIN_EXE_deltamesh"),
            &[
                "--port",
                "0",
                "--dev-token",
                TOKEN,
                // The benchmark measures the relay, not its abuse limits.
                "--address-rate",
                "0",
                "--token-rate",
                "0",
                "--delta-rate",
                "0",
                "--byte-rate",
                "0",
                "--send-window",
                &window,
            ],
            "signal: ",
        );
        Relay { child, url }
    }

    fn rss(&self) -> Rss {
        rss_of(
            &std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
                .unwrap_or_default(),
        )
    }

    fn cpu_time(&self) -> Duration {
        cpu_of(
            &std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default(),
        )
    }

    async fn join(&self, session: &str) -> NativePeer {
        let mut options =
            ConnectOptions::new(&self.url, session, TOKEN).with_lane(LaneChoice::WebRtc);
        options.send_window = window();
        NativePeer::connect(options).await.expect("peer connects")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes messages of `message`'s size on `pair`'s channel while the
/// window has room, as the relay writes fragments, until `total` bytes are
/// written (`sent` counts them).
fn write_within_window(pair: &mut Pair, sent: &mut usize, message: &[u8], total: usize) {
    let Some(mut channel) = pair.sender.channel(pair.channel) else {
        return;
    };
    while *sent < total && channel.buffered_amount() < window() {
        let len = message.len().min(total - *sent);
        if !channel.write(true, &message[..len]).unwrap_or(false) {
            break;
        }
        *sent += len;
    }
}

/// The time raw str0m takes to move `size` bytes to each of `receivers`
/// receivers, in fragment-sized messages within the same window, all on
/// one thread (one core: the sending ends and the receiving ends), counted
/// from when every association is open.
fn raw_str0m_fan_out(size: usize, receivers: usize) -> Duration {
    let mut pairs: Vec<Pair> = (0..receivers)
        .map(|i| Pair::new(u8::try_from(i + 1).expect("few receivers")))
        .collect();
    let message = random_bytes(FRAGMENT_MESSAGE, 7);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sent = vec![0; receivers];
    let mut started = None;
    while pairs.iter().any(|p| p.received_bytes < size) {
        assert!(Instant::now() < deadline, "raw str0m finished in time");
        if started.is_none()
            && pairs
                .iter_mut()
                .all(|p| p.sender.channel(p.channel).is_some())
        {
            started = Some(Instant::now());
        }
        let mut next = Instant::now() + Duration::from_secs(1);
        for (pair, sent) in pairs.iter_mut().zip(&mut sent) {
            if started.is_some() {
                write_within_window(pair, sent, &message, size);
            }
            next = next.min(pair.exchange());
        }
        let now = Instant::now();
        if next <= now {
            for pair in &mut pairs {
                pair.timeout(now);
            }
        }
    }
    started.map_or(Duration::ZERO, |s| s.elapsed())
}

//! Lanes side by side in one run: connect time (offer or socket to
//! `Welcome`), delivery latency and throughput over WebRTC/UDP and over the
//! WebSocket lane (PROTOCOL §11), and the memory of idle WebSocket peers.
//! The one-process stack runs in this process with native peers on
//! loopback, so the memory figure is the whole process (peers, signal's
//! forwarding, the relay), per idle WebSocket peer.
//!
//! Run: `cargo bench --bench lanes` (`-- --quick` for fewer samples).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use deltamesh::{StackConfig, start};
use deltamesh_proto::Id;
use deltamesh_relay::{Rate, RelayConfig};
use deltamesh_signal::{RateLimit, SignalConfig};
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};

const TOKEN: &str = "bench-token";

fn options(url: &str, session: &str, lane: LaneChoice) -> ConnectOptions {
    let mut options = ConnectOptions::new(url, session, TOKEN);
    options.lane = lane;
    options
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn next_delta(peer: &mut NativePeer) -> deltamesh_worker::ReceivedDelta {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), peer.next_event()).await {
            Ok(Some(PeerEvent::Delta(d))) => return d,
            Ok(Some(_)) => {}
            other => panic!("no delta: {other:?}"),
        }
    }
}

async fn lane_run(url: &str, lane: LaneChoice, name: &str, connects: usize, deltas: usize) {
    let mut times = Vec::new();
    for i in 0..connects {
        let started = Instant::now();
        let peer = NativePeer::connect(options(url, &format!("connect-{name}-{i}"), lane))
            .await
            .expect("connects");
        times.push(started.elapsed());
        peer.close().await;
    }
    times.sort_unstable();
    println!(
        "{name:>10}  connect  p50 {:>7.2?}  p99 {:>7.2?}  ({connects} connects)",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );

    let session = format!("flow-{name}");
    let sender = NativePeer::connect(options(url, &session, lane))
        .await
        .unwrap();
    let mut receiver = NativePeer::connect(options(url, &session, lane))
        .await
        .unwrap();
    // Latency: one delta at a time.
    let mut latencies = Vec::new();
    for i in 0..1000u32 {
        let sent = Instant::now();
        sender
            .send(1, Id::default(), i.to_le_bytes().to_vec())
            .await
            .unwrap();
        next_delta(&mut receiver).await;
        latencies.push(sent.elapsed());
    }
    latencies.sort_unstable();
    println!(
        "{name:>10}  latency  p50 {:>7.2?}  p99 {:>7.2?}  (1000 deltas, one in flight)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    // Throughput: a burst of 256-byte deltas.
    let started = Instant::now();
    let payload = vec![5u8; 256];
    let send = async {
        for _ in 0..deltas {
            sender
                .send(1, Id::default(), payload.clone())
                .await
                .unwrap();
        }
    };
    let receive = async {
        for _ in 0..deltas {
            next_delta(&mut receiver).await;
        }
    };
    tokio::join!(send, receive);
    let elapsed = started.elapsed();
    println!(
        "{name:>10}  through  {:>8.0} deltas/s  ({deltas} × 256 B in {elapsed:.2?})",
        deltas as f64 / elapsed.as_secs_f64()
    );
    sender.close().await;
    receiver.close().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let unlimited = Rate::UNLIMITED;
    let relay = RelayConfig {
        max_peers: 10_000,
        max_peers_per_session: 10_000,
        max_pending: 1_000,
        delta_rate: unlimited,
        byte_rate: unlimited,
        command_rate: unlimited,
        ..RelayConfig::default()
    };
    let mut signal = SignalConfig::new(TOKEN);
    signal.address_rate = RateLimit::OFF;
    signal.token_rate = RateLimit::OFF;
    let stack = start(StackConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        relay,
        signal,
    })
    .await
    .expect("stack starts");
    let url = stack.signal_url();
    let (connects, deltas) = if quick { (20, 5_000) } else { (100, 20_000) };
    lane_run(&url, LaneChoice::WebRtc, "webrtc-udp", connects, deltas).await;
    lane_run(&url, LaneChoice::WebSocket, "websocket", connects, deltas).await;

    let idle = if quick { 100 } else { 500 };
    let before = rss_kib();
    let mut peers = Vec::new();
    for _ in 0..idle {
        peers.push(
            NativePeer::connect(options(&url, "idle", LaneChoice::WebSocket))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    println!(
        " websocket  memory   {:.1} KiB per idle peer (process RSS {before} → {after} KiB, {idle} peers, both ends)",
        (after.saturating_sub(before)) as f64 / idle as f64
    );
    drop(peers);
    stack.shutdown().await.unwrap();
}

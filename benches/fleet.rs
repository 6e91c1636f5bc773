//! The fleet benchmark: a registry, relays and signal as separate
//! `deltamesh` processes on a real nats-server with JetStream, native peers
//! over loopback UDP. Baselines measured in the same run: raw NATS
//! publish → subscribe, and JetStream publish → ordered consumer (the hop
//! every cross-relay delta takes), both at the same rates; presence
//! updates across relays beside raw NATS at the same rate; a 1 MiB and a
//! 16 MiB delta across relays beside raw NATS moving the same bytes.
//!
//! Run: `cargo bench --bench fleet` (add `-- --quick` for a short run,
//! `-- --only large|presence|latency|sustained` for one section).

use std::process::Child;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use deltamesh_proto::Id;
use deltamesh_testkit::{NatsServer, spawn_service};
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};
use futures_util::{FutureExt, StreamExt};

const TOKEN: &str = "bench-token";

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seconds = if quick { 1.0 } else { 3.0 };
    let sustained = if quick { 2_000 } else { 10_000 };
    println!(
        "deltamesh fleet benchmark ({} run)\n",
        if quick { "quick" } else { "full" }
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `--only large|presence|latency|sustained` runs one section.
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let runs = |section: &str| only.as_deref().is_none_or(|o| o == section);
    runtime.block_on(async {
        let nats = NatsServer::start();
        let client = async_nats::connect(nats.url()).await.expect("NATS");
        if runs("large") {
            large_section(&nats, &client, if quick { 1 } else { 3 }).await;
        }
        if runs("presence") {
            presence_section(&nats, &client, if quick { 2.0 } else { 10.0 }).await;
        }
        if !runs("latency") && !runs("sustained") {
            return;
        }
        for rate in [1_000u32, 10_000].into_iter().filter(|_| runs("latency")) {
            let raw = nats_latency(&client, rate, seconds).await;
            let js = jetstream_latency(&client, rate, seconds).await;
            let fleet = Fleet::start(&nats, 2, 1).await;
            let cross = cross_relay_latency(&fleet, rate, seconds).await;
            drop(fleet);
            for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
                println!(
                    "latency at {rate:>6}/s {name}  NATS pub→sub {:>7.3} ms  JetStream pub→consumer {:>7.3} ms  cross-relay peer→peer {:>7.3} ms  {:>5.2}× NATS",
                    ms(percentile(&raw, p)),
                    ms(percentile(&js, p)),
                    ms(percentile(&cross, p)),
                    ms(percentile(&cross, p)) / ms(percentile(&raw, p)).max(1e-6),
                );
            }
        }
        if !runs("sustained") {
            return;
        }
        let raw = jetstream_throughput(&client, sustained * 6).await;
        let fleet = Fleet::start(&nats, 3, 2).await;
        let (accepted, delivered) = spread_throughput(&fleet, sustained).await;
        println!(
            "sustained, one session over 3 relays (6 peers)  accepted {accepted:>8.0} deltas/s  delivered {delivered:>8.0} deltas/s  JetStream publish alone {raw:>8.0}/s  {:>5.2}×",
            accepted / raw
        );
    });
}

/// Nanoseconds since the first call, as the clock every party of
/// this process shares.
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn latency_of(payload: &[u8]) -> Duration {
    let sent = u64::from_le_bytes(payload[..8].try_into().expect("8-byte stamp"));
    Duration::from_nanos(now_ns().saturating_sub(sent))
}

/// Sends `rate` messages per second for `seconds`, in 1 ms ticks.
async fn paced(rate: u32, seconds: f64, mut send: impl AsyncFnMut(Vec<u8>)) {
    let total = (f64::from(rate) * seconds) as u64;
    let per_tick = (u64::from(rate) / 1000).max(1);
    let tick = Duration::from_micros(1_000_000 * per_tick / u64::from(rate));
    let mut ticker = tokio::time::interval(tick);
    let mut sent = 0;
    while sent < total {
        ticker.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let mut payload = now_ns().to_le_bytes().to_vec();
            payload.resize(100, 0);
            send(payload).await;
            sent += 1;
        }
    }
}

/// A delta whose frame is 1 MiB and one whose frame is 16 MiB (the largest
/// a relay takes by default), from a peer on relay 1 to a peer on relay 2,
/// beside core NATS moving the same bytes in 512 KiB messages; median of
/// `runs` each.
async fn large_section(nats: &NatsServer, client: &async_nats::Client, runs: usize) {
    const MIB: usize = 1024 * 1024;
    let fleet = Fleet::start(nats, 2, 1).await;
    let sender = fleet.join("large", false).await;
    let mut receiver = fleet.join("large", false).await;
    assert_ne!(
        sender.welcome().relay_id,
        receiver.welcome().relay_id,
        "the two peers are on different relays"
    );
    let mut sender = sender;
    for size in [MIB, 16 * MIB] {
        let payload: Vec<u8> = (0..size - 56).map(|i| (i * 31 % 251) as u8).collect();
        let mut cross = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            sender
                .send(1, Id::default(), payload.clone())
                .await
                .expect("send");
            loop {
                match tokio::time::timeout(Duration::from_secs(120), receiver.next_event()).await {
                    Ok(Some(PeerEvent::Delta(delta))) => {
                        assert!(delta.payload() == payload.as_slice(), "arrived whole");
                        break;
                    }
                    Ok(Some(_)) => {}
                    _ => panic!("the large delta crossed in time"),
                }
            }
            cross.push(started.elapsed());
            while let Some(Some(_)) = sender.next_event().now_or_never() {}
            raw.push(nats_bulk(client, &payload).await);
        }
        let (cross, raw) = (sorted(cross), sorted(raw));
        let (cross, raw) = (cross[cross.len() / 2], raw[raw.len() / 2]);
        println!(
            "large delta across relays, {:>2} MiB frame  NATS pub→sub of the same bytes {:>8.1} ms  cross-relay peer→peer {:>8.1} ms  {:>5.2}× NATS",
            size / MIB,
            ms(raw),
            ms(cross),
            ms(cross) / ms(raw).max(1e-6)
        );
    }
}

/// Time for `bytes` to go through core NATS in 512 KiB messages, publish
/// of the first to receipt of the last.
async fn nats_bulk(client: &async_nats::Client, bytes: &[u8]) -> Duration {
    let mut subscriber = client.subscribe("bench.bulk").await.expect("subscribe");
    client.flush().await.expect("flush");
    let started = Instant::now();
    for chunk in bytes.chunks(512 * 1024) {
        client
            .publish("bench.bulk", chunk.to_vec().into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    let mut received = 0;
    while received < bytes.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), subscriber.next())
            .await
            .expect("in time")
            .expect("subscribed");
        received += message.payload.len();
    }
    started.elapsed()
}

/// Presence senders on relay 1, at most; each stays below the relay's
/// forwarding limit (PROTOCOL §8, 20 states/s per peer) so every state is
/// forwarded and none is skipped.
const PRESENCE_SENDERS: usize = 4;
const PRESENCE_RATE: u32 = 10;

/// Presence update latency from peers on relay 1 to a peer on relay 2,
/// beside core NATS publish → subscribe at the same total rate.
async fn presence_section(nats: &NatsServer, client: &async_nats::Client, seconds: f64) {
    let fleet = Fleet::start(nats, 2, PRESENCE_SENDERS).await;
    let (senders, cross) = presence_latency(&fleet, "presence", false, seconds).await;
    // One relay's part: a sender and the receiver on the same relay.
    let (_, local) = presence_latency(&fleet, "presence-local", true, seconds).await;
    drop(fleet);
    let rate = PRESENCE_RATE * senders as u32;
    let raw = nats_latency(client, rate, seconds).await;
    // The delta path at the same total rate, for comparison.
    let fleet = Fleet::start(nats, 2, 1).await;
    let deltas = cross_relay_latency(&fleet, rate, seconds).await;
    drop(fleet);
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        println!(
            "presence, {senders} peers × {PRESENCE_RATE}/s, {name}  NATS pub→sub {:>7.3} ms  cross-relay set_presence→Presence {:>7.3} ms  {:>5.2}× NATS  \
             (one relay {:>7.3} ms; cross-relay 100 B deltas at {rate}/s {:>7.3} ms; {} / {} / {} samples)",
            ms(percentile(&raw, p)),
            ms(percentile(&cross, p)),
            ms(percentile(&cross, p)) / ms(percentile(&raw, p)).max(1e-6),
            ms(percentile(&local, p)),
            ms(percentile(&deltas, p)),
            raw.len(),
            cross.len(),
            deltas.len(),
        );
    }
}

/// Joins senders (all of [`PRESENCE_SENDERS`] for another relay than the
/// receiver's, one for the receiver's own) and a receiver to `session`;
/// returns how many senders were where asked, and the latencies of their
/// states at the receiver.
async fn presence_latency(
    fleet: &Fleet,
    session: &str,
    same_relay: bool,
    seconds: f64,
) -> (usize, Vec<Duration>) {
    let mut joined = Vec::new();
    for _ in 0..if same_relay { 1 } else { PRESENCE_SENDERS } {
        joined.push(fleet.join(session, false).await);
    }
    let mut receiver = fleet.join(session, false).await;
    let senders: Vec<NativePeer> = joined
        .into_iter()
        .filter(|peer| (peer.welcome().relay_id == receiver.welcome().relay_id) == same_relay)
        .collect();
    assert!(!senders.is_empty(), "a sender is where it should be");
    let count = senders.len();
    let expected = (f64::from(PRESENCE_RATE) * seconds) as usize * count;
    let collect = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(expected);
        while latencies.len() < expected {
            match tokio::time::timeout(Duration::from_secs(5), receiver.next_event()).await {
                Ok(Some(PeerEvent::Presence { state, .. })) if state.len() >= 8 => {
                    latencies.push(latency_of(&state));
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        latencies
    });
    let mut senders = senders;
    futures_util::future::join_all(senders.iter_mut().map(|sender| {
        paced(PRESENCE_RATE, seconds, async |mut state| {
            state.truncate(32);
            sender.set_presence(state).await.expect("set_presence");
            while let Some(Some(_)) = sender.next_event().now_or_never() {}
        })
    }))
    .await;
    let latencies = collect.await.expect("collector");
    assert!(
        latencies.len() * 10 >= expected * 9,
        "{} of {expected} presence states arrived",
        latencies.len()
    );
    (count, sorted(latencies))
}

async fn nats_latency(client: &async_nats::Client, rate: u32, seconds: f64) -> Vec<Duration> {
    let subject = format!("bench.raw.{rate}");
    let mut subscriber = client.subscribe(subject.clone()).await.expect("subscribe");
    client.flush().await.expect("flush");
    let expected = (f64::from(rate) * seconds) as usize;
    let collect = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(expected);
        while latencies.len() < expected {
            match tokio::time::timeout(Duration::from_secs(5), subscriber.next()).await {
                Ok(Some(message)) => latencies.push(latency_of(&message.payload)),
                _ => break,
            }
        }
        latencies
    });
    paced(rate, seconds, async |payload| {
        client
            .publish(subject.clone(), payload.into())
            .await
            .expect("publish");
        client.flush().await.expect("flush");
    })
    .await;
    sorted(collect.await.expect("collector"))
}

async fn jetstream_latency(client: &async_nats::Client, rate: u32, seconds: f64) -> Vec<Duration> {
    let js = jetstream::new(client.clone());
    let name = format!("BENCH_LATENCY_{rate}");
    let subject = format!("bench.js.{rate}");
    let stream = js
        .get_or_create_stream(stream::Config {
            name,
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            ..stream::Config::default()
        })
        .await
        .expect("stream");
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer")
        .messages()
        .await
        .expect("messages");
    let expected = (f64::from(rate) * seconds) as usize;
    let collect = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(expected);
        while latencies.len() < expected {
            match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                Ok(Some(Ok(message))) => latencies.push(latency_of(&message.payload)),
                _ => break,
            }
        }
        latencies
    });
    let (acks, mut pending) = tokio::sync::mpsc::unbounded_channel();
    let waiter = tokio::spawn(async move {
        while let Some(ack) = pending.recv().await {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await.expect("stored");
        }
    });
    paced(rate, seconds, async |payload| {
        let ack = js
            .publish(subject.clone(), payload.into())
            .await
            .expect("publish");
        let _ = acks.send(ack);
    })
    .await;
    drop(acks);
    waiter.await.expect("acks");
    sorted(collect.await.expect("collector"))
}

async fn jetstream_throughput(client: &async_nats::Client, count: usize) -> f64 {
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(stream::Config {
        name: "BENCH_THROUGHPUT".into(),
        subjects: vec!["bench.throughput".into()],
        storage: stream::StorageType::File,
        ..stream::Config::default()
    })
    .await
    .expect("stream");
    let started = Instant::now();
    let mut acks = futures_util::stream::FuturesUnordered::new();
    for n in 0..count {
        let mut payload = (n as u64).to_le_bytes().to_vec();
        payload.resize(100, 0);
        acks.push(
            js.publish("bench.throughput", payload.into())
                .await
                .expect("publish")
                .into_future(),
        );
        while acks.len() > 4096 {
            acks.next().await.expect("ack").expect("stored");
        }
    }
    while let Some(ack) = acks.next().await {
        ack.expect("stored");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// A registry, relays and one signal, each its own process.
struct Fleet {
    processes: Vec<Child>,
    signal_url: String,
}

impl Fleet {
    /// `relays` relays taking `per_relay` peers each, so a session's peers
    /// spread over all of them.
    async fn start(nats: &NatsServer, relays: usize, per_relay: usize) -> Fleet {
        let mut processes = Vec::new();
        let (registry, url) = spawn(
            &["registry", "--nats", &nats.url(), "--listen", "127.0.0.1:0"],
            "registry: ",
        );
        processes.push(registry);
        for _ in 0..relays {
            let per_relay = per_relay.to_string();
            let (relay, _) = spawn(
                &[
                    "relay",
                    "--nats",
                    &nats.url(),
                    "--registry",
                    &url,
                    "--max-peers",
                    &per_relay,
                    "--delta-rate",
                    "0",
                    "--byte-rate",
                    "0",
                ],
                "relay: ",
            );
            processes.push(relay);
        }
        let (signal, signal_url) = spawn(
            &[
                "signal",
                "--nats",
                &nats.url(),
                "--registry",
                &url,
                "--dev",
                "--dev-token",
                TOKEN,
                "--port",
                "0",
                "--address-rate",
                "0",
                "--token-rate",
                "0",
            ],
            "signal: ",
        );
        processes.push(signal);
        // Registration is a heartbeat away from the start-up line.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Fleet {
            processes,
            signal_url,
        }
    }

    /// A peer of `session`; with `echo` it receives its own deltas too.
    async fn join(&self, session: &str, echo: bool) -> NativePeer {
        let mut options =
            ConnectOptions::new(&self.signal_url, session, TOKEN).with_lane(LaneChoice::WebRtc);
        options.echo = echo;
        NativePeer::connect(options).await.expect("peer connects")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

fn spawn(args: &[&str], ready: &str) -> (Child, String) {
    spawn_service(env!("CARGO_BIN_EXE_deltamesh"), args, ready)
}

async fn cross_relay_latency(fleet: &Fleet, rate: u32, seconds: f64) -> Vec<Duration> {
    let session = format!("latency-{rate}");
    let sender = fleet.join(&session, false).await;
    let mut receiver = fleet.join(&session, false).await;
    assert_ne!(
        sender.welcome().relay_id,
        receiver.welcome().relay_id,
        "the two peers are on different relays"
    );
    let expected = (f64::from(rate) * seconds) as usize;
    let collect = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(expected);
        while latencies.len() < expected {
            match tokio::time::timeout(Duration::from_secs(10), receiver.next_event()).await {
                Ok(Some(PeerEvent::Delta(delta))) => latencies.push(latency_of(delta.payload())),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        latencies
    });
    let mut sender = sender;
    paced(rate, seconds, async |payload| {
        sender.send(1, Id::default(), payload).await.expect("send");
        // Acks and echoes are not measured, only taken.
        while let Some(Some(_)) = sender.next_event().now_or_never() {}
    })
    .await;
    let latencies = collect.await.expect("collector");
    assert_eq!(latencies.len(), expected, "every delta crossed");
    sorted(latencies)
}

async fn spread_throughput(fleet: &Fleet, per_peer: usize) -> (f64, f64) {
    let mut peers = Vec::new();
    for _ in 0..6 {
        peers.push(fleet.join("sustained", true).await);
    }
    let total = per_peer * peers.len();
    let started = Instant::now();
    let tasks: Vec<_> = peers
        .into_iter()
        .map(|mut peer| {
            tokio::spawn(async move {
                let mut received = 0;
                for _ in 0..per_peer {
                    peer.send(1, Id::default(), vec![0; 100])
                        .await
                        .expect("send");
                    while let Some(Some(event)) = peer.next_event().now_or_never() {
                        received += usize::from(matches!(event, PeerEvent::Delta(_)));
                    }
                }
                while received < total {
                    match tokio::time::timeout(Duration::from_secs(30), peer.next_event()).await {
                        Ok(Some(PeerEvent::Delta(_))) => received += 1,
                        Ok(Some(_)) => {}
                        _ => panic!("{received} of {total} deltas arrived"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("peer");
    }
    let seconds = started.elapsed().as_secs_f64();
    (total as f64 / seconds, (total * 6) as f64 / seconds)
}

fn sorted(mut latencies: Vec<Duration>) -> Vec<Duration> {
    latencies.sort();
    latencies
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

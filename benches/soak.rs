//! The soak run: a fleet as `deploy/local-stack --relays 3` runs it (a
//! registry, three relays and signal, each its own `deltamesh` process, on
//! a real nats-server with JetStream) under churn for ten minutes:
//!
//! - steady peers send at a steady rate the whole time (and receive
//!   everything, their own deltas included);
//! - every second a peer joins, sends a few deltas and leaves;
//! - every two minutes one relay is restarted (SIGTERM: it drains, its
//!   peers move; then a new relay takes its place);
//! - NATS is restarted once, half way.
//!
//! At the end every steady peer must hold one gap-free sequence with every
//! acknowledged delta exactly once. Each process's memory (RSS) is printed
//! every 30 s, to show it flat after warm-up.
//!
//! Run: `cargo bench --bench soak` (`SOAK_SECONDS=60` for a short run).

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_testkit::{NatsServer, spawn_service, terminate};
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};

const TOKEN: &str = "soak-token";
const SESSION: &str = "soak";
/// Peers that stay for the whole run.
const STEADY_PEERS: u32 = 4;
/// Deltas per second each steady peer sends.
const STEADY_RATE: u64 = 25;
/// Deltas each churning peer sends before it leaves.
const CHURN_DELTAS: u64 = 3;
const RELAYS: usize = 3;
const RELAY_RESTART_EVERY: Duration = Duration::from_secs(120);
const MEMORY_EVERY: Duration = Duration::from_secs(30);

/// A delta's identity in its payload: who sent it and its number there.
type DeltaId = (u32, u64);

/// What every task records.
#[derive(Default)]
struct Record {
    /// Every delta the relays acknowledged.
    acked: HashSet<DeltaId>,
    /// Per steady peer, what it received: seq → delta.
    received: HashMap<u32, HashMap<u64, DeltaId>>,
    /// Deltas received twice (same seq, or same delta under two seqs).
    duplicates: u64,
    /// Deltas rejected (resent later: they are not lost, but counted).
    rejected: u64,
    /// Peers that joined and left.
    churned: u64,
}

fn main() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(soak(Duration::from_secs(seconds)));
}

async fn soak(length: Duration) {
    println!(
        "deltamesh soak: {RELAYS} relays, {STEADY_PEERS} steady peers at {STEADY_RATE}/s each, \
         a peer joining and leaving every second, a relay restart every {}s, NATS restarted once; {}s",
        RELAY_RESTART_EVERY.as_secs(),
        length.as_secs()
    );
    let mut nats = NatsServer::start();
    let mut fleet = Fleet::start(&nats.url());
    // Registration is a heartbeat away from the start-up lines.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let record = Arc::new(Mutex::new(Record::default()));
    let started = Instant::now();
    let end = started + length;

    // Every steady peer is in before any sends: each must see everything.
    let mut peers = Vec::new();
    for _ in 0..STEADY_PEERS {
        peers.push(fleet.join().await);
    }
    let tasks: Vec<_> = (0..STEADY_PEERS)
        .zip(peers)
        .map(|(index, peer)| tokio::spawn(steady(peer, index, end, Arc::clone(&record))))
        .collect();
    let churn = tokio::spawn(churn(fleet.signal_url.clone(), end, Arc::clone(&record)));

    let mut next_restart = started + RELAY_RESTART_EVERY;
    let mut next_memory = started;
    let mut nats_restarted = false;
    let mut restarted = 0usize;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_memory {
            next_memory += MEMORY_EVERY;
            let mut line = format!("t={:>4}s rss MiB:", now.duration_since(started).as_secs());
            for (name, pid) in fleet.pids().into_iter().chain([("nats", nats.pid())]) {
                line.push_str(&format!(" {name} {:.1}", rss_mib(pid)));
            }
            println!("{line}");
        }
        if now >= next_restart {
            next_restart += RELAY_RESTART_EVERY;
            let which = restarted % RELAYS;
            restarted += 1;
            let took = fleet.restart_relay(which);
            println!(
                "t={:>4}s relay {which} restarted (drained and exited in {:.1}s)",
                now.duration_since(started).as_secs(),
                took.as_secs_f64()
            );
        }
        if !nats_restarted && now >= started + length / 2 {
            nats_restarted = true;
            nats.restart();
            println!(
                "t={:>4}s NATS restarted",
                now.duration_since(started).as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = churn.await;
    for task in tasks {
        let _ = task.await;
    }
    let record = record.lock().expect("record");
    report(&record, started.elapsed());
}

/// A peer that sends `STEADY_RATE` deltas per second until `end`, then
/// keeps receiving until it has every acknowledged delta (or 60 s pass).
async fn steady(mut peer: NativePeer, index: u32, end: Instant, record: Arc<Mutex<Record>>) {
    let mut pending: HashMap<u64, DeltaId> = HashMap::new();
    let mut counter = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / STEADY_RATE));
    let settle = end + Duration::from_secs(60);
    let mut seen = (0, 0);
    let mut quiet_since = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick(), if Instant::now() < end => {
                counter += 1;
                let id = (index, counter);
                if let Ok(client_seq) = peer.send(1, Id::default(), payload(id)).await {
                    pending.insert(client_seq, id);
                }
            }
            event = peer.next_event() => {
                let Some(event) = event else { return };
                on_event(event, &mut pending, Some(index), &record);
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if Instant::now() >= end {
            // Done once it holds every acknowledged delta and nothing has
            // moved for two seconds (others' last acks may still come).
            let record = record.lock().expect("record");
            let have = record.received.get(&index).map_or(0, HashMap::len);
            let now = (have, record.acked.len());
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
            let quiet = quiet_since.elapsed() >= Duration::from_secs(2);
            if (have >= now.1 && pending.is_empty() && quiet) || Instant::now() > settle {
                return;
            }
        }
    }
}

/// Every second until `end`, a peer joins, sends `CHURN_DELTAS` deltas,
/// waits for their acks and leaves.
async fn churn(signal_url: String, end: Instant, record: Arc<Mutex<Record>>) {
    let mut number = 0u32;
    while Instant::now() < end {
        let next = Instant::now() + Duration::from_secs(1);
        number += 1;
        let mut options =
            ConnectOptions::new(&signal_url, SESSION, TOKEN).with_lane(LaneChoice::WebRtc);
        options.echo = true;
        if let Ok(Ok(mut peer)) =
            tokio::time::timeout(Duration::from_secs(10), NativePeer::connect(options)).await
        {
            let mut pending = HashMap::new();
            for counter in 1..=CHURN_DELTAS {
                let id = (1000 + number, counter);
                if let Ok(client_seq) = peer.send(1, Id::default(), payload(id)).await {
                    pending.insert(client_seq, id);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while !pending.is_empty() && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(200), peer.next_event()).await {
                    Ok(Some(event)) => on_event(event, &mut pending, None, &record),
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            peer.close().await;
            record.lock().expect("record").churned += 1;
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Records one event of a peer; `steady` names a steady peer, whose
/// received deltas count.
fn on_event(
    event: PeerEvent,
    pending: &mut HashMap<u64, DeltaId>,
    steady: Option<u32>,
    record: &Mutex<Record>,
) {
    let mut record = record.lock().expect("record");
    match event {
        PeerEvent::Acked { client_seq, .. } => {
            if let Some(id) = pending.remove(&client_seq) {
                record.acked.insert(id);
            }
        }
        PeerEvent::Renumbered { old, new } => {
            if let Some(id) = pending.remove(&old) {
                pending.insert(new, id);
            }
        }
        PeerEvent::Rejected(reject) => {
            pending.remove(&reject.client_seq);
            record.rejected += 1;
        }
        PeerEvent::Delta(delta) => {
            if let Some(index) = steady {
                let id = read_payload(delta.payload());
                let received = record.received.entry(index).or_default();
                let twice = received.insert(delta.seq, id).is_some();
                if twice {
                    record.duplicates += 1;
                }
            }
        }
        _ => {}
    }
}

fn report(record: &Record, took: Duration) {
    let acked = &record.acked;
    println!(
        "\nafter {:.0}s: {} deltas acknowledged, {} peers churned, {} rejected",
        took.as_secs_f64(),
        acked.len(),
        record.churned,
        record.rejected
    );
    let mut sequences = Vec::new();
    for index in 0..STEADY_PEERS {
        let received = record.received.get(&index).cloned().unwrap_or_default();
        let mut seqs: Vec<u64> = received.keys().copied().collect();
        seqs.sort_unstable();
        let gaps = seqs.windows(2).filter(|w| w[1] != w[0] + 1).count()
            + usize::from(seqs.first().is_some_and(|&s| s != 1));
        let ids: HashSet<DeltaId> = received.values().copied().collect();
        let doubled = received.len() - ids.len();
        let lost = acked.difference(&ids).count();
        println!(
            "steady peer {index}: {} deltas, seqs {}..{}, {gaps} gaps, {doubled} doubled, {lost} acknowledged but missing",
            received.len(),
            seqs.first().copied().unwrap_or(0),
            seqs.last().copied().unwrap_or(0),
        );
        sequences.push(received);
    }
    // One order: wherever two peers hold a seq, it is the same delta.
    let one_order = sequences.windows(2).all(|pair| {
        pair[0]
            .iter()
            .all(|(seq, id)| pair[1].get(seq).is_none_or(|other| other == id))
    });
    println!(
        "one order on every steady peer: {one_order}; duplicate deliveries: {}",
        record.duplicates
    );
}

fn payload((peer, counter): DeltaId) -> Vec<u8> {
    let mut bytes = peer.to_le_bytes().to_vec();
    bytes.extend_from_slice(&counter.to_le_bytes());
    bytes
}

fn read_payload(bytes: &[u8]) -> DeltaId {
    let peer = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    let counter = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    (peer, counter)
}

/// A process's resident memory in MiB (0 when it is gone).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A registry, relays and signal, each its own process, as
/// deploy/local-stack starts them.
struct Fleet {
    nats_url: String,
    registry_url: String,
    registry: Child,
    relays: Vec<Child>,
    signal: Child,
    signal_url: String,
}

impl Fleet {
    fn start(nats_url: &str) -> Fleet {
        let (registry, registry_url) = spawn(
            &["registry", "--nats", nats_url, "--listen", "127.0.0.1:0"],
            "registry: ",
        );
        let relays = (0..RELAYS)
            .map(|_| spawn_relay(nats_url, &registry_url))
            .collect();
        let (signal, signal_url) = spawn(
            &[
                "signal",
                "--nats",
                nats_url,
                "--registry",
                &registry_url,
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
        Fleet {
            nats_url: nats_url.to_owned(),
            registry_url,
            registry,
            relays,
            signal,
            signal_url,
        }
    }

    /// Drains relay `which` with SIGTERM, waits for it to exit, and starts
    /// a new one in its place; returns how long the old one took.
    fn restart_relay(&mut self, which: usize) -> Duration {
        let started = Instant::now();
        terminate(&self.relays[which]);
        let _ = self.relays[which].wait();
        let took = started.elapsed();
        self.relays[which] = spawn_relay(&self.nats_url, &self.registry_url);
        took
    }

    async fn join(&self) -> NativePeer {
        let mut options =
            ConnectOptions::new(&self.signal_url, SESSION, TOKEN).with_lane(LaneChoice::WebRtc);
        options.echo = true;
        NativePeer::connect(options).await.expect("peer connects")
    }

    fn pids(&self) -> Vec<(&'static str, u32)> {
        let mut pids = vec![
            ("registry", self.registry.id()),
            ("signal", self.signal.id()),
        ];
        pids.extend(self.relays.iter().map(|relay| ("relay", relay.id())));
        pids
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in self
            .relays
            .iter_mut()
            .chain([&mut self.signal, &mut self.registry])
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A relay that takes at most 3 peers of a session, so they spread.
fn spawn_relay(nats_url: &str, registry_url: &str) -> Child {
    let args = [
        "relay",
        "--nats",
        nats_url,
        "--registry",
        registry_url,
        "--max-peers-per-session",
        "3",
    ];
    spawn(&args, "relay: ").0
}

fn spawn(args: &[&str], ready: &str) -> (Child, String) {
    spawn_service(env!("CARGO_BIN_EXE_deltamesh"), args, ready)
}

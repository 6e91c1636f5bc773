//! The compose stack on a real Docker engine, as operators run it:
//! deltamesh's image built from `deploy/Dockerfile`, then
//! `docker compose -f deploy/docker-compose.yml up --scale media-relay=3`
//! (with `deploy/offline/docker-compose.stand-ins.yml` when no registry is
//! reachable, as here). Native peers reach signal at localhost:8080 and
//! spread over the relay containers; a relay killed or stopped moves its
//! peers with nothing lost; one connection is one trace at an OTLP receiver
//! in this test (where Jaeger would be); Prometheus scrapes every service,
//! the relays that exist included; `down` leaves nothing behind.
//!
//! Not in `cargo test --workspace` (`test = false`: it needs a Docker
//! engine and the stand-in images): scripts/test runs it with
//! `cargo test --test compose`. Set `DELTAMESH_COMPOSE_ONLINE=1` to use the
//! official images instead of the stand-ins.

#[path = "../support/otlp.rs"]
mod otlp;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::ListRelaysRequest;
use deltamesh_proto::fleet::pb::registry_client::RegistryClient;
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};

use crate::otlp::Collector;

/// The Compose project this test owns (and removes).
const PROJECT: &str = "deltamesh-compose-test";
/// Signal's development token in the compose file.
const TOKEN: &str = "deltamesh-dev-token";
const SIGNAL: &str = "http://127.0.0.1:8080";
const SESSION: &str = "compose";
/// Peers one session may have on one relay: five peers need three relays.
const PER_SESSION: usize = 2;
/// Ports the stack publishes on the host (the relays' own are ranges).
const HOST_PORTS: [u16; 7] = [8080, 4222, 50051, 9090, 4317, 4318, 16686];
/// How long any one wait of this test may take.
const WAIT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `docker ARGS`; panics with its stderr unless it succeeds.
fn docker(args: &[&str], env: &[(String, String)]) -> Output {
    let output = Command::new("docker")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(repo())
        .output()
        .expect("docker runs");
    assert!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The project's Compose files and environment; `down` on drop, with the
/// services' last logs first when the test failed.
struct Stack {
    args: Vec<String>,
    env: Vec<(String, String)>,
    _dir: TempDir,
}

impl Stack {
    fn new(otlp_forward: String) -> Stack {
        let dir = TempDir::new();
        let overrides = dir.0.join("test.yml");
        let fast_export = "      OTEL_BSP_SCHEDULE_DELAY: \"200\"\n";
        std::fs::write(
            &overrides,
            format!(
                "services:\n  media-relay:\n    environment:\n      \
                 DELTAMESH_MAX_PEERS_PER_SESSION: \"{PER_SESSION}\"\n{fast_export}  \
                 signal:\n    environment:\n{fast_export}  \
                 registry:\n    environment:\n{fast_export}"
            ),
        )
        .unwrap();
        let mut files = vec!["deploy/docker-compose.yml".to_owned()];
        if std::env::var_os("DELTAMESH_COMPOSE_ONLINE").is_none() {
            files.push("deploy/offline/docker-compose.stand-ins.yml".to_owned());
        }
        files.push(overrides.display().to_string());
        let mut args = vec!["compose".to_owned(), "-p".to_owned(), PROJECT.to_owned()];
        for file in files {
            args.extend(["-f".to_owned(), file]);
        }
        Stack {
            args,
            env: vec![("OTLP_FORWARD".to_owned(), otlp_forward)],
            _dir: dir,
        }
    }

    /// `docker compose … ARGS`.
    fn compose(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = self.args.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        docker(&all, &self.env)
    }

    /// `docker compose down`, leaving no container, network or volume.
    fn down(&self) {
        self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
    }

    /// The relay id each running media-relay container announced, by id.
    fn relay_containers(&self) -> HashMap<String, String> {
        let ids = stdout(&self.compose(&["ps", "-q", "media-relay"]));
        let mut found = HashMap::new();
        for container in ids.split_whitespace() {
            let logs = stdout(&docker(&["logs", container], &[]));
            if let Some(line) = logs.lines().find_map(|l| l.strip_prefix("relay: ")) {
                let relay = line.split_whitespace().next().unwrap_or_default();
                found.insert(relay.to_owned(), container.to_owned());
            }
        }
        found
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut all: Vec<&str> = self.args.iter().map(String::as_str).collect();
            all.extend_from_slice(&["logs", "--no-color", "--tail", "30"]);
            if let Ok(output) = Command::new("docker")
                .args(&all)
                .envs(self.env.clone())
                .output()
            {
                eprintln!("--- compose logs ---\n{}", stdout(&output));
            }
        }
        let mut all: Vec<&str> = self.args.iter().map(String::as_str).collect();
        all.extend_from_slice(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        let _ = Command::new("docker")
            .args(&all)
            .envs(self.env.clone())
            .current_dir(repo())
            .output();
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("deltamesh-compose-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A native peer of the session and what it has seen.
struct Peer {
    peer: NativePeer,
    index: usize,
    relay: Id,
    received: BTreeMap<u64, Vec<u8>>,
    acked: HashSet<u64>,
    sent: usize,
}

impl Peer {
    async fn join(index: usize) -> Result<Peer, String> {
        let mut options = ConnectOptions::new(SIGNAL, SESSION, TOKEN).with_lane(LaneChoice::WebRtc);
        options.echo = true;
        let peer = NativePeer::connect(options)
            .await
            .map_err(|e| e.to_string())?;
        let relay = Id::from_slice(&peer.welcome().relay_id).unwrap();
        Ok(Peer {
            peer,
            index,
            relay,
            received: BTreeMap::new(),
            acked: HashSet::new(),
            sent: 0,
        })
    }

    /// Handles events until `done` holds or `wait` passes; false on timeout.
    async fn pump_until(&mut self, wait: Duration, done: impl Fn(&Peer) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while !done(self) {
            let event = match tokio::time::timeout_at(deadline, self.peer.next_event()).await {
                Ok(Some(event)) => event,
                Ok(None) | Err(_) => return false,
            };
            match event {
                PeerEvent::Delta(delta) => {
                    let payload = delta.payload().to_vec();
                    if let Some(earlier) = self.received.insert(delta.seq, payload) {
                        panic!("seq {} delivered twice (first {earlier:?})", delta.seq);
                    }
                }
                PeerEvent::Acked { client_seq, .. } => {
                    self.acked.insert(client_seq);
                }
                PeerEvent::Welcomed(welcome) => {
                    self.relay = Id::from_slice(&welcome.relay_id).unwrap();
                }
                PeerEvent::Rejected(reject) => panic!("delta rejected: {reject:?}"),
                PeerEvent::Disconnected(reason) => {
                    eprintln!("peer {} disconnected: {reason}", self.index)
                }
                _ => {}
            }
        }
        true
    }

    /// Sends `count` deltas of round `round`, 10 ms apart, then waits until
    /// all it sent is acknowledged and `total` deltas of the session arrived.
    async fn exchange(mut self, round: &'static str, count: usize, total: usize) -> Peer {
        for n in 0..count {
            let payload = format!("peer {} {round} {n}", self.index).into_bytes();
            self.peer
                .send(1, Id::default(), payload)
                .await
                .expect("send queued");
            self.sent += 1;
            self.pump_until(Duration::from_millis(10), |_| false).await;
        }
        let done = self
            .pump_until(WAIT, |p| {
                p.received.len() >= total && p.acked.len() >= p.sent
            })
            .await;
        assert!(
            done,
            "peer {} ({round}): {} of {total} received, {} of {} acked",
            self.index,
            self.received.len(),
            self.acked.len(),
            self.sent
        );
        self
    }
}

/// Every peer sends `count` deltas at once; then each has seqs 1..=total
/// (every delta of the session so far), all the same.
async fn round(
    peers: Vec<Peer>,
    round: &'static str,
    count: usize,
    total: &mut usize,
) -> Vec<Peer> {
    *total += peers.len() * count;
    let tasks: Vec<_> = peers
        .into_iter()
        .map(|peer| tokio::spawn(peer.exchange(round, count, *total)))
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("peer task"));
    }
    let reference = &done[0].received;
    let seqs: Vec<u64> = reference.keys().copied().collect();
    assert_eq!(
        seqs,
        (1..=*total as u64).collect::<Vec<_>>(),
        "{round}: a gap"
    );
    let payloads: HashSet<&Vec<u8>> = reference.values().collect();
    assert_eq!(payloads.len(), *total, "{round}: a delta stored twice");
    for peer in &done {
        assert_eq!(
            &peer.received, reference,
            "peer {} saw another order",
            peer.index
        );
    }
    eprintln!(
        "compose: {round}: {total} deltas in one order on {} peers",
        done.len()
    );
    done
}

/// The live relays the registry lists that take peers, with their UDP
/// addresses.
async fn relays() -> Vec<(Id, Vec<String>)> {
    let endpoint = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051");
    let Ok(channel) = endpoint.connect().await else {
        return Vec::new();
    };
    let mut registry = RegistryClient::new(channel);
    let Ok(listed) = registry.list_relays(ListRelaysRequest {}).await else {
        return Vec::new();
    };
    listed
        .into_inner()
        .relays
        .into_iter()
        .filter(|r| !r.draining)
        .map(|r| (Id::from_slice(&r.relay_id).unwrap(), r.udp_addrs))
        .collect()
}

/// Waits until the registry lists exactly `n` relays taking peers.
async fn await_relays(n: usize) -> Vec<(Id, Vec<String>)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let relays = relays().await;
        if relays.len() == n {
            return relays;
        }
        assert!(
            Instant::now() < deadline,
            "{} relays registered, not {n}",
            relays.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prometheus's answer to `GET /api/v1/PATH`.
async fn prometheus(path: &str) -> Option<serde_json::Value> {
    let response = reqwest::get(format!("http://127.0.0.1:9090/api/v1/{path}"))
        .await
        .ok()?;
    serde_json::from_slice(&response.bytes().await.ok()?).ok()
}

/// Waits until Prometheus has signal and the registry up, and exactly
/// `relays` relay targets, all up.
async fn await_targets(relays: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut up: HashMap<String, usize> = HashMap::new();
        let mut down = 0;
        if let Some(targets) = prometheus("targets?state=active").await {
            for target in targets["data"]["activeTargets"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let job = target["labels"]["job"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if target["health"] == "up" {
                    *up.entry(job).or_default() += 1;
                } else {
                    down += 1;
                }
            }
        }
        let want: HashMap<String, usize> =
            [("signal", 1), ("registry", 1), ("media-relay", relays)]
                .into_iter()
                .map(|(job, n)| (job.to_owned(), n))
                .collect();
        if up == want && down == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus targets up {up:?}, {down} down; want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until Prometheus's `sum(relay_connections{state="connected"})` is `n`.
async fn await_connected(n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = prometheus("query?query=sum(relay_connections%7Bstate%3D%22connected%22%7D)")
            .await
            .and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_owned)
            });
        if value.as_deref() == Some(n.to_string().as_str()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "relay_connections{{state=\"connected\"}} is {value:?}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The project's containers, networks and volumes still on the engine.
fn leftovers() -> String {
    let label = format!("label=com.docker.compose.project={PROJECT}");
    let mut left = String::new();
    for kind in [
        &["ps", "-aq"][..],
        &["network", "ls", "-q"],
        &["volume", "ls", "-q"],
    ] {
        let mut args = kind.to_vec();
        args.extend(["--filter", &label]);
        left += &stdout(&docker(&args, &[]));
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_serves_a_session_over_scaled_relays() {
    let collector = Collector::default();
    let otlp = collector.start(Ipv4Addr::UNSPECIFIED.into()).await;
    let stack = Stack::new(format!("host.docker.internal:{}", otlp.port()));
    // What an earlier run left behind, if it was killed.
    stack.down();
    for port in HOST_PORTS {
        assert!(
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
            "port {port} is taken: the stack publishes it"
        );
    }

    let started = Instant::now();
    stack.compose(&["build", "registry"]);
    let image = stdout(&docker(
        &[
            "image",
            "inspect",
            "deltamesh:local",
            "--format",
            "{{.Size}}",
        ],
        &[],
    ));
    eprintln!(
        "compose: image built in {:.1} s, {} MB",
        started.elapsed().as_secs_f64(),
        image.trim().parse::<u64>().unwrap_or(0) / 1_000_000
    );

    // `up`, then the first offer signal serves.
    let up = Instant::now();
    stack.compose(&["up", "--detach", "--no-build", "--scale", "media-relay=3"]);
    let first = loop {
        match Peer::join(0).await {
            Ok(peer) => break peer,
            Err(error) => {
                assert!(up.elapsed() < WAIT, "no offer served: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    eprintln!(
        "compose: first offer served {} ms after `up`",
        up.elapsed().as_millis()
    );

    // Three relay containers register, each advertising host candidates
    // in its own port range; peers connect to them (reachable).
    let registered = await_relays(3).await;
    for (relay, addrs) in &registered {
        assert!(!addrs.is_empty(), "relay {relay} advertises no address");
        for addr in addrs {
            let port: u16 = addr
                .strip_prefix("127.0.0.1:")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            assert!(
                (40000..=40199).contains(&port),
                "relay {relay} advertises {addr}"
            );
        }
    }
    let containers = stack.relay_containers();
    assert_eq!(
        containers.len(),
        3,
        "each container announced its relay: {containers:?}"
    );
    await_targets(3).await;

    let trace_id = hex(first.peer.traceparent().split('-').nth(1).unwrap());
    let mut peers = vec![first];
    for index in 1..5 {
        peers.push(Peer::join(index).await.expect("peer joins"));
    }
    let on: HashSet<Id> = peers.iter().map(|p| p.relay).collect();
    assert_eq!(
        on.len(),
        3,
        "five peers, two a relay: the session spans all three"
    );
    await_connected(5).await;
    let mut total = 0;
    peers = round(peers, "spread", 20, &mut total).await;

    // One connection, one trace: signal, registry and relay continue the
    // peer's traceparent.
    let spans = collector
        .trace(
            &trace_id,
            &[
                "POST /v1/sessions/{session}/peers",
                "deltamesh.fleet.v1.Registry/PlacePeer",
                "relay offer",
            ],
        )
        .await;
    let services: HashSet<&str> = spans.iter().map(|(s, _)| s.as_str()).collect();
    for service in ["deltamesh-signal", "deltamesh-registry", "deltamesh-relay"] {
        assert!(
            services.contains(service),
            "no span of {service} in the trace: {services:?}"
        );
    }

    // Room for the peers that move, then a relay killed: its peers move,
    // nothing lost.
    stack.compose(&[
        "up",
        "--detach",
        "--no-build",
        "--no-recreate",
        "--scale",
        "media-relay=5",
    ]);
    await_relays(5).await;
    let containers = stack.relay_containers();
    let count_on = |peers: &[Peer], relay: Id| peers.iter().filter(|p| p.relay == relay).count();
    let killed = peers
        .iter()
        .map(|p| p.relay)
        .find(|r| count_on(&peers, *r) == PER_SESSION)
        .unwrap();
    docker(&["kill", &containers[&killed.to_string()]], &[]);
    peers = round(peers, "after kill", 10, &mut total).await;
    assert_eq!(
        count_on(&peers, killed),
        0,
        "the killed relay's peers moved"
    );

    // A relay stopped: it drains (its peers move) and exits cleanly.
    let stopped = peers
        .iter()
        .map(|p| p.relay)
        .find(|r| count_on(&peers, *r) > 0)
        .unwrap();
    let container = &containers[&stopped.to_string()];
    docker(&["stop", "--time", "15", container], &[]);
    let exit = stdout(&docker(
        &["inspect", "--format", "{{.State.ExitCode}}", container],
        &[],
    ));
    assert_eq!(exit.trim(), "0", "the stopped relay exits 0 after draining");
    let logs = docker(&["logs", container], &[]);
    assert!(
        String::from_utf8_lossy(&logs.stderr).contains("\"draining\""),
        "the stopped relay logged that it drains"
    );
    peers = round(peers, "after stop", 10, &mut total).await;
    assert_eq!(
        count_on(&peers, stopped),
        0,
        "the stopped relay's peers moved"
    );
    await_targets(3).await;
    await_connected(5).await;

    // Down to one relay: the two peers left keep the session going on it.
    for peer in peers.drain(2..) {
        peer.peer.close().await;
    }
    stack.compose(&["up", "--detach", "--no-build", "--scale", "media-relay=1"]);
    let last = await_relays(1).await[0].0;
    peers = round(peers, "on one relay", 10, &mut total).await;
    assert!(
        peers.iter().all(|p| p.relay == last),
        "every peer is on the last relay"
    );
    await_targets(1).await;
    for peer in peers {
        peer.peer.close().await;
    }

    stack.down();
    let left = leftovers();
    assert!(left.trim().is_empty(), "`down` left {left}");
}

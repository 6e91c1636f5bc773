//! A fleet of real processes for the tests: a nats-server with JetStream,
//! registries, relays and signal instances, each a `deltamesh` child
//! process, plus native peers that send and collect deltas. Every service
//! binds port 0 and the tests read its address from its start-up line, so
//! no port is picked first and handed over later (another process could
//! take it in between).
//!
//! Set `DELTAMESH_TEST_LOGS=1` to see the services' logs.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::registry_client::RegistryClient;
use deltamesh_proto::fleet::pb::{ListPeersRequest, ListRelaysRequest};
use deltamesh_testkit::{NatsServer, terminate};
use deltamesh_worker::{ConnectOptions, NativePeer, PeerEvent};

/// The development token every signal of the test fleets accepts.
pub(crate) const TOKEN: &str = "fleet-test-token";
/// How long a service may take to print its start-up line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One `deltamesh` child process; killed on drop.
pub(crate) struct Service {
    child: Child,
    lines: mpsc::Receiver<String>,
    args: Vec<String>,
}

impl Service {
    /// Starts `deltamesh ARGS` and waits for a stdout line starting with
    /// `ready` (returned without the prefix).
    pub(crate) fn start(args: &[String], ready: &str) -> (Service, String) {
        Service::start_with_env(args, ready, &[])
    }

    /// [`Service::start`] with extra environment variables.
    pub(crate) fn start_with_env(
        args: &[String],
        ready: &str,
        env: &[(String, String)],
    ) -> (Service, String) {
        let logs = std::env::var_os("DELTAMESH_TEST_LOGS").is_some();
        let mut child = Command::new(env!("CARGO_BIN_EXE_deltamesh"))
            .args(args)
            .env("RUST_LOG", "info,str0m=warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(if logs {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("deltamesh starts");
        let lines = lines(child.stdout.take().expect("piped stdout"));
        let mut service = Service {
            child,
            lines,
            args: args.to_vec(),
        };
        let value = service.wait_line(ready);
        (service, value)
    }

    /// The rest of the next stdout line starting with `prefix`.
    pub(crate) fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => panic!(
                    "`deltamesh {}` never printed {prefix:?}",
                    self.args.join(" ")
                ),
            }
        }
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting.
    pub(crate) fn sigterm(&self) {
        terminate(&self.child);
    }

    /// Sends SIGTERM and waits (up to `wait`) for the process to exit; true
    /// if it exited by itself.
    pub(crate) fn terminate(&mut self, wait: Duration) -> bool {
        self.sigterm();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A relay process and its id.
pub(crate) struct RelayProcess {
    /// The process.
    pub service: Service,
    /// The relay's id.
    pub id: Id,
}

/// NATS, registries, relays and signals, all separate processes.
pub(crate) struct Fleet {
    /// The NATS server.
    pub nats: NatsServer,
    /// Registry processes, with their gRPC URLs.
    pub registries: Vec<(Service, String)>,
    /// Relay processes.
    pub relays: Vec<RelayProcess>,
    /// Signal processes, with their base URLs.
    pub signals: Vec<(Service, String)>,
    /// Environment variables every service gets.
    env: Vec<(String, String)>,
}

impl Fleet {
    /// Starts NATS, `registries` registries, `relays` relays of
    /// `max_peers` each (relay i registers with registry i mod n), and
    /// `signals` signals (signal i asks registry i mod n), and waits until
    /// every relay is registered.
    pub(crate) async fn start(
        registries: usize,
        relays: usize,
        max_peers: usize,
        signals: usize,
    ) -> Fleet {
        Fleet::start_with_env(registries, relays, max_peers, signals, &[]).await
    }

    /// [`Fleet::start`], with `env` set for every service.
    pub(crate) async fn start_with_env(
        registries: usize,
        relays: usize,
        max_peers: usize,
        signals: usize,
        env: &[(&str, &str)],
    ) -> Fleet {
        let nats = NatsServer::start();
        let mut fleet = Fleet {
            nats,
            registries: Vec::new(),
            relays: Vec::new(),
            signals: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        for _ in 0..registries {
            fleet.start_registry(0);
        }
        for i in 0..relays {
            fleet.start_relay(i % registries, max_peers);
        }
        for i in 0..signals {
            let registry = fleet.registries[i % registries].1.clone();
            let args = [
                "signal",
                "--nats",
                &fleet.nats.url(),
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
            ];
            let (service, url) = Service::start_with_env(&strings(&args), "signal: ", &fleet.env);
            fleet.signals.push((service, url));
        }
        fleet.wait_for_relays(relays).await;
        fleet
    }

    /// Starts a registry on `port`: 0 for one it picks (its start-up line
    /// says which), or the port a killed registry reported, to restart it
    /// at the URL the relays and signals know.
    pub(crate) fn start_registry(&mut self, port: u16) -> usize {
        let listen = format!("127.0.0.1:{port}");
        let args = [
            "registry",
            "--nats",
            &self.nats.url(),
            "--listen",
            &listen,
            "--relay-ttl",
            "2s",
        ];
        let (service, url) = Service::start_with_env(&strings(&args), "registry: ", &self.env);
        self.registries.push((service, url));
        self.registries.len() - 1
    }

    /// Starts a relay taking `max_peers`, registered with registry `registry`.
    pub(crate) fn start_relay(&mut self, registry: usize, max_peers: usize) -> Id {
        let args = [
            "relay",
            "--nats",
            &self.nats.url(),
            "--registry",
            &self.registries[registry].1,
            "--max-peers",
            &max_peers.to_string(),
        ];
        let (service, line) = Service::start_with_env(&strings(&args), "relay: ", &self.env);
        let id: Id = line
            .split(' ')
            .next()
            .and_then(|id| id.parse().ok())
            .expect("relay line names its id");
        self.relays.push(RelayProcess { service, id });
        id
    }

    /// A gRPC client of registry `index`.
    pub(crate) async fn registry(&self, index: usize) -> RegistryClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(self.registries[index].1.clone())
            .expect("registry URL")
            .connect()
            .await
            .expect("registry reachable");
        RegistryClient::new(channel)
    }

    /// Waits until the registry lists `count` live relays.
    pub(crate) async fn wait_for_relays(&self, count: usize) {
        let mut registry = self.registry(0).await;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let live = registry
                .list_relays(ListRelaysRequest {})
                .await
                .map(|r| r.into_inner().relays.len())
                .unwrap_or(0);
            if live == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{live} of {count} relays registered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The peers of `session` as the registry lists them: peer → relay.
    pub(crate) async fn placements(&self, registry: usize, session: &str) -> HashMap<Id, Id> {
        let peers = self
            .registry(registry)
            .await
            .list_peers(ListPeersRequest {
                session: session.into(),
            })
            .await
            .expect("list peers")
            .into_inner()
            .peers;
        peers
            .iter()
            .map(|p| {
                (
                    Id::from_slice(&p.peer_id).unwrap(),
                    Id::from_slice(&p.relay_id).unwrap(),
                )
            })
            .collect()
    }
}

/// Each line `reader` yields, passed on as it comes (from a thread).
pub(crate) fn lines(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Owned copies of `args`.
pub(crate) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// A peer of the test session and what it has seen.
pub(crate) struct TestPeer {
    /// The connected peer.
    pub peer: NativePeer,
    /// The relay that welcomed it last.
    pub relay: Id,
    /// Payloads received, by seq.
    pub received: HashMap<u64, Vec<u8>>,
    /// client_seqs acknowledged.
    pub acked: HashSet<u64>,
    /// Times it was welcomed (1 + reconnects).
    pub welcomes: usize,
    /// The reasons of its disconnects, in order.
    pub disconnects: Vec<String>,
}

impl TestPeer {
    /// Joins `session` through the signal at `signal_url`, receiving its own
    /// deltas too.
    pub(crate) async fn join(signal_url: &str, session: &str) -> TestPeer {
        let mut options = ConnectOptions::new(signal_url, session, TOKEN)
            .with_lane(deltamesh_worker::LaneChoice::WebRtc);
        options.echo = true;
        let peer = NativePeer::connect(options).await.expect("peer connects");
        let relay = Id::from_slice(&peer.welcome().relay_id).unwrap();
        TestPeer {
            peer,
            relay,
            received: HashMap::new(),
            acked: HashSet::new(),
            welcomes: 1,
            disconnects: Vec::new(),
        }
    }

    /// [`TestPeer::join`] over `lane`.
    pub(crate) async fn join_over(
        signal_url: &str,
        session: &str,
        lane: deltamesh_worker::LaneChoice,
    ) -> TestPeer {
        let mut options = ConnectOptions::new(signal_url, session, TOKEN);
        options.echo = true;
        options.lane = lane;
        let peer = NativePeer::connect(options).await.expect("peer connects");
        let relay = Id::from_slice(&peer.welcome().relay_id).unwrap();
        TestPeer {
            peer,
            relay,
            received: HashMap::new(),
            acked: HashSet::new(),
            welcomes: 1,
            disconnects: Vec::new(),
        }
    }

    /// Sends `payload` and handles events until the relay acknowledged it;
    /// returns its client_seq.
    pub(crate) async fn send_acked(&mut self, payload: &[u8]) -> u64 {
        let client_seq = self
            .peer
            .send(1, Id::default(), payload.to_vec())
            .await
            .expect("send queued");
        assert!(
            self.pump_until(Duration::from_secs(10), |p| p.acked.contains(&client_seq))
                .await,
            "delta {client_seq} was not acknowledged"
        );
        client_seq
    }

    /// Handles events until `done` holds or `wait` passes; false on timeout.
    pub(crate) async fn pump_until(
        &mut self,
        wait: Duration,
        done: impl Fn(&TestPeer) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while !done(self) {
            let event = match tokio::time::timeout_at(deadline, self.peer.next_event()).await {
                Ok(Some(event)) => event,
                Ok(None) | Err(_) => return false,
            };
            self.on_event(event);
        }
        true
    }

    fn on_event(&mut self, event: PeerEvent) {
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
                self.welcomes += 1;
                self.relay = Id::from_slice(&welcome.relay_id).unwrap();
            }
            PeerEvent::Rejected(reject) => panic!("delta rejected: {reject:?}"),
            PeerEvent::Disconnected(reason) => {
                eprintln!("peer disconnected: {reason}");
                self.disconnects.push(reason);
            }
            _ => {}
        }
    }
}

/// The payload peer `peer` sends as its `n`th delta.
pub(crate) fn payload(peer: usize, n: usize) -> Vec<u8> {
    format!("peer {peer} delta {n}").into_bytes()
}

/// Asserts that every peer received exactly seqs 1..=total, the same
/// payload under each seq, and every payload sent exactly once.
pub(crate) fn assert_one_order(peers: &[TestPeer], senders: usize, per_sender: usize) {
    let total = (senders * per_sender) as u64;
    let reference = &peers[0].received;
    let expected: HashSet<Vec<u8>> = (0..senders)
        .flat_map(|p| (0..per_sender).map(move |n| payload(p, n)))
        .collect();
    let seen: HashSet<Vec<u8>> = reference.values().cloned().collect();
    assert_eq!(seen.len(), reference.len(), "a payload was stored twice");
    assert_eq!(seen, expected, "every payload sent is there once");
    for seq in 1..=total {
        assert!(reference.contains_key(&seq), "seq {seq} missing (gap)");
    }
    for (i, peer) in peers.iter().enumerate() {
        assert_eq!(
            peer.received.len() as u64,
            total,
            "peer {i} received {} of {total}",
            peer.received.len()
        );
        assert_eq!(&peer.received, reference, "peer {i} saw another order");
    }
}

/// Asserts that each sender's deltas are in the seq order in the order it
/// sent them (`payload(p, 0)` first). It holds while NATS answers; a
/// publish retried through an outage may land after later ones.
pub(crate) fn assert_sender_order(peers: &[TestPeer], senders: usize, per_sender: usize) {
    let seq_of: HashMap<&[u8], u64> = peers[0]
        .received
        .iter()
        .map(|(seq, payload)| (payload.as_slice(), *seq))
        .collect();
    for sender in 0..senders {
        let seqs: Vec<u64> = (0..per_sender)
            .map(|n| seq_of[payload(sender, n).as_slice()])
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "sender {sender}'s deltas are out of the order it sent them: {seqs:?}"
        );
    }
}

//! The registry over gRPC, against a real nats-server and a real server on a
//! free port, through the generated client.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::registry_client::RegistryClient;
use deltamesh_proto::fleet::pb::{
    HeartbeatRequest, ListPeersRequest, ListRelaysRequest, LookupPeerRequest, MembershipEvent,
    PeerRecord, PlacePeerRequest, RegisterRelayRequest, RelayInfo, RelayLoad, WatchSessionRequest,
};
use deltamesh_proto::fleet::registry_endpoint;
use deltamesh_registry::{
    RegistryConfig, RegistryError, RegistryMetrics, buckets, membership, serve,
};
use deltamesh_testkit::NatsServer;
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};
use tonic::{Code, Request, Status};

/// How long anything awaited may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// Short leases so expiry tests are fast.
const FAST: RegistryConfig = RegistryConfig {
    heartbeat_interval: Duration::from_millis(200),
    relay_ttl: Duration::from_secs(1),
    janitor_interval: Duration::from_millis(100),
};

/// Leases that outlast any test, for tests about something else.
const STEADY: RegistryConfig = RegistryConfig {
    heartbeat_interval: Duration::from_secs(1),
    relay_ttl: Duration::from_secs(60),
    janitor_interval: Duration::from_millis(100),
};

/// The self-signed test certificate for 127.0.0.1 and localhost, and its
/// key (tests/keys/README.md).
const TEST_CERT: &str = include_str!("../../../tests/keys/localhost.crt");
const TEST_KEY: &str = include_str!("../../../tests/keys/localhost.key");

/// One running registry instance and a client of it.
struct Registry {
    client: RegistryClient<Channel>,
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RegistryError>>,
}

impl Registry {
    async fn start(nats: &NatsServer, config: RegistryConfig) -> Registry {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve(
            client,
            config,
            RegistryMetrics::default(),
            listener,
            None,
            async {
                let _ = stopped.await;
            },
        ));
        let channel = Channel::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let client = RegistryClient::new(channel);
        Registry {
            client,
            url,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// The peers bucket, as a relay opens it.
async fn peers_bucket(nats: &NatsServer) -> kv::Store {
    let client = async_nats::connect(nats.url()).await.unwrap();
    buckets::peers(&async_nats::jetstream::new(client))
        .await
        .unwrap()
}

fn relay(n: u8, capacity: u32) -> RelayInfo {
    RelayInfo {
        relay_id: vec![n; 16],
        udp_addrs: vec![format!("127.0.0.1:{}", 4000 + u16::from(n))],
        capacity,
        public_key: vec![7; 32],
        ..Default::default()
    }
}

fn peer(n: u8, session: &str, relay: u8) -> PeerRecord {
    PeerRecord {
        peer_id: vec![n; 16],
        session: session.to_owned(),
        relay_id: vec![relay; 16],
        state: 2,
        joined_at_ms: 1_700_000_000_000,
        identity: format!("user-{n}"),
    }
}

async fn register(client: &mut RegistryClient<Channel>, relay: RelayInfo) -> Result<(), Status> {
    client
        .register_relay(RegisterRelayRequest { relay: Some(relay) })
        .await
        .map(drop)
}

async fn heartbeat(
    client: &mut RegistryClient<Channel>,
    n: u8,
    peers: u32,
    draining: bool,
) -> Result<(), Status> {
    let load = RelayLoad {
        peers,
        ..Default::default()
    };
    client
        .heartbeat(HeartbeatRequest {
            relay_id: vec![n; 16],
            load: Some(load),
            draining,
        })
        .await
        .map(drop)
}

async fn place(
    client: &mut RegistryClient<Channel>,
    session: &str,
    exclude: &[u8],
) -> Result<u8, Status> {
    let request = PlacePeerRequest {
        session: session.to_owned(),
        exclude_relays: exclude.iter().map(|&n| vec![n; 16]).collect(),
    };
    let relay = client
        .place_peer(request)
        .await?
        .into_inner()
        .relay
        .unwrap();
    Ok(relay.relay_id[0])
}

async fn relay_ids(client: &mut RegistryClient<Channel>) -> Vec<u8> {
    let relays = client
        .list_relays(ListRelaysRequest {})
        .await
        .unwrap()
        .into_inner()
        .relays;
    let mut ids: Vec<u8> = relays.iter().map(|relay| relay.relay_id[0]).collect();
    ids.sort();
    ids
}

async fn peer_ids(client: &mut RegistryClient<Channel>, session: &str) -> Vec<u8> {
    let request = ListPeersRequest {
        session: session.to_owned(),
    };
    let peers = client.list_peers(request).await.unwrap().into_inner().peers;
    let mut ids: Vec<u8> = peers.iter().map(|peer| peer.peer_id[0]).collect();
    ids.sort();
    ids
}

async fn watch(client: &mut RegistryClient<Channel>, session: &str) -> Streaming<MembershipEvent> {
    let request = WatchSessionRequest {
        session: session.to_owned(),
    };
    client.watch_session(request).await.unwrap().into_inner()
}

async fn next_event(events: &mut Streaming<MembershipEvent>) -> MembershipEvent {
    tokio::time::timeout(PATIENCE, events.message())
        .await
        .expect("a membership event in time")
        .unwrap()
        .expect("the watch goes on")
}

/// Polls `check` until it holds, failing after [`PATIENCE`].
async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn code<T>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_register_heartbeat_and_expire_without_heartbeats() {
    let nats = NatsServer::start();
    let mut registry = Registry::start(&nats, FAST).await;
    let client = &mut registry.client;

    let reply = client
        .register_relay(RegisterRelayRequest {
            relay: Some(relay(1, 10)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.heartbeat_interval_ms, reply.ttl_ms), (200, 1000));
    let relays = client
        .list_relays(ListRelaysRequest {})
        .await
        .unwrap()
        .into_inner()
        .relays;
    assert_eq!(relays.len(), 1);
    assert_eq!(relays[0].udp_addrs, ["127.0.0.1:4001"]);
    assert!(relays[0].heartbeat_at_ms > 0);

    heartbeat(client, 1, 5, false).await.unwrap();
    let relays = client
        .list_relays(ListRelaysRequest {})
        .await
        .unwrap()
        .into_inner()
        .relays;
    assert_eq!(relays[0].load.unwrap().peers, 5);

    // No more heartbeats: the lease runs out and the relay must register again.
    eventually("the silent relay is gone", || {
        let mut client = client.clone();
        async move { relay_ids(&mut client).await.is_empty() }
    })
    .await;
    assert_eq!(code(heartbeat(client, 1, 5, false).await), Code::NotFound);
    register(client, relay(1, 10)).await.unwrap();
    heartbeat(client, 1, 5, false).await.unwrap();
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_only_clients_trusting_the_certificate_get_through() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(TEST_CERT, TEST_KEY));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(
        client,
        STEADY,
        RegistryMetrics::default(),
        listener,
        Some(tls),
        async {
            let _ = stopped.await;
        },
    ));
    let client = |url: String, tls: Option<ClientTlsConfig>| {
        RegistryClient::new(registry_endpoint(&url, tls).unwrap().connect_lazy())
    };
    let trusting = || Some(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(TEST_CERT)));

    let mut by_ip = client(format!("https://127.0.0.1:{port}"), trusting());
    register(&mut by_ip, relay(1, 10)).await.unwrap();
    assert_eq!(relay_ids(&mut by_ip).await, [1]);
    let mut by_name = client(format!("https://localhost:{port}"), trusting());
    assert_eq!(relay_ids(&mut by_name).await, [1]);

    // Not trusting the certificate, or not speaking TLS, gets nothing.
    let mut untrusting = client(
        format!("https://127.0.0.1:{port}"),
        Some(ClientTlsConfig::new()),
    );
    let listed = untrusting.list_relays(ListRelaysRequest {}).await;
    let status = listed.expect_err("a client not trusting the certificate is refused");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("UnknownIssuer"), "{status}");
    let mut plaintext = client(format!("http://127.0.0.1:{port}"), None);
    let listed = tokio::time::timeout(PATIENCE, plaintext.list_relays(ListRelaysRequest {}))
        .await
        .expect("a plaintext client is refused promptly");
    assert!(listed.is_err());
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_keeps_sessions_together_and_avoids_draining_excluded_and_full_relays() {
    let nats = NatsServer::start();
    let mut registry = Registry::start(&nats, STEADY).await;
    let client = &mut registry.client;
    for n in [1, 2, 3] {
        register(client, relay(n, 10)).await.unwrap();
    }
    heartbeat(client, 3, 0, true).await.unwrap();
    membership::put_peer(&peers_bucket(&nats).await, &peer(9, "room", 2))
        .await
        .unwrap();

    for _ in 0..5 {
        assert_eq!(
            place(client, "room", &[]).await.unwrap(),
            2,
            "the session's relay"
        );
        assert_ne!(
            place(client, "other", &[]).await.unwrap(),
            3,
            "never a draining relay"
        );
    }
    assert_eq!(
        place(client, "room", &[2]).await.unwrap(),
        1,
        "not excluded, not draining"
    );
    heartbeat(client, 2, 10, false).await.unwrap();
    assert_eq!(
        place(client, "room", &[]).await.unwrap(),
        1,
        "the session's relay is full"
    );

    let status = place(client, "room", &[1]).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "every relay is full, draining or gone");
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_looked_up_listed_and_watched() {
    let nats = NatsServer::start();
    let mut registry = Registry::start(&nats, STEADY).await;
    let client = &mut registry.client;
    register(client, relay(1, 10)).await.unwrap();
    register(client, relay(2, 10)).await.unwrap();
    let peers = peers_bucket(&nats).await;
    for record in [
        peer(1, "room.1", 1),
        peer(2, "room.1", 2),
        peer(3, "room.10", 1),
        peer(4, "room", 1),
    ] {
        membership::put_peer(&peers, &record).await.unwrap();
    }

    let found = client
        .lookup_peer(LookupPeerRequest {
            session: "room.1".into(),
            peer_id: vec![2; 16],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found, peer(2, "room.1", 2));
    let missing = client
        .lookup_peer(LookupPeerRequest {
            session: "room.10".into(),
            peer_id: vec![2; 16],
        })
        .await;
    assert_eq!(code(missing), Code::NotFound);
    assert_eq!(peer_ids(client, "room.1").await, [1, 2]);
    assert_eq!(peer_ids(client, "room.10").await, [3]);
    assert!(peer_ids(client, "empty").await.is_empty());

    let mut events = watch(client, "room.1").await;
    let mut first = [next_event(&mut events).await, next_event(&mut events).await];
    first.sort_by_key(|event| event.peer.as_ref().unwrap().peer_id.clone());
    assert_eq!(
        first.map(|event| (event.peer.unwrap(), event.removed)),
        [(peer(1, "room.1", 1), false), (peer(2, "room.1", 2), false),]
    );

    membership::put_peer(&peers, &peer(5, "room.10", 1))
        .await
        .unwrap();
    membership::put_peer(&peers, &peer(6, "room.1", 1))
        .await
        .unwrap();
    let joined = next_event(&mut events).await;
    assert_eq!(
        (joined.peer.unwrap(), joined.removed),
        (peer(6, "room.1", 1), false)
    );

    membership::remove_peer(&peers, "room.1", Id([1; 16]))
        .await
        .unwrap();
    let left = next_event(&mut events).await;
    assert!(left.removed);
    let left = left.peer.unwrap();
    assert_eq!(
        (left.peer_id, left.session),
        (vec![1; 16], "room.1".to_owned())
    );
    assert_eq!(peer_ids(client, "room.1").await, [2, 6]);
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_removes_the_peers_of_a_relay_that_is_gone() {
    let nats = NatsServer::start();
    let mut registry = Registry::start(&nats, FAST).await;
    let client = &mut registry.client;
    register(client, relay(1, 10)).await.unwrap();
    register(client, relay(2, 10)).await.unwrap();
    // Relay 2 keeps heartbeating, relay 1 goes silent (as if SIGKILLed).
    let mut beating = client.clone();
    let heart = tokio::spawn(async move {
        loop {
            heartbeat(&mut beating, 2, 1, false).await.unwrap();
            tokio::time::sleep(FAST.heartbeat_interval).await;
        }
    });
    let peers = peers_bucket(&nats).await;
    membership::put_peer(&peers, &peer(1, "room", 1))
        .await
        .unwrap();
    membership::put_peer(&peers, &peer(2, "room", 2))
        .await
        .unwrap();

    let mut events = watch(client, "room").await;
    assert!(!next_event(&mut events).await.removed);
    assert!(!next_event(&mut events).await.removed);
    let gone = next_event(&mut events).await;
    assert!(gone.removed);
    assert_eq!(gone.peer.unwrap().peer_id, vec![1; 16]);
    assert_eq!(peer_ids(client, "room").await, [2]);
    assert_eq!(relay_ids(client).await, [2]);
    heart.abort();
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_state_and_a_restart_loses_nothing() {
    let nats = NatsServer::start();
    let first = Registry::start(&nats, STEADY).await;
    let mut second = Registry::start(&nats, STEADY).await;
    let mut client = first.client.clone();
    register(&mut client, relay(1, 10)).await.unwrap();
    register(&mut client, relay(2, 10)).await.unwrap();
    membership::put_peer(&peers_bucket(&nats).await, &peer(5, "room", 2))
        .await
        .unwrap();

    assert_eq!(relay_ids(&mut second.client).await, [1, 2]);
    assert_eq!(peer_ids(&mut second.client, "room").await, [5]);
    assert_eq!(place(&mut second.client, "room", &[]).await.unwrap(), 2);
    heartbeat(&mut second.client, 1, 3, false).await.unwrap();
    first.stop().await;

    let mut third = Registry::start(&nats, STEADY).await;
    for client in [&mut second.client, &mut third.client] {
        assert_eq!(relay_ids(client).await, [1, 2]);
        assert_eq!(peer_ids(client, "room").await, [5]);
        assert_eq!(place(client, "room", &[]).await.unwrap(), 2);
    }
    heartbeat(&mut third.client, 2, 1, false).await.unwrap();
    second.stop().await;
    third.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_status_and_the_server_goes_on() {
    let nats = NatsServer::start();
    let mut registry = Registry::start(&nats, STEADY).await;
    let client = &mut registry.client;

    assert_eq!(code(heartbeat(client, 42, 0, false).await), Code::NotFound);
    let mut short_id = relay(1, 10);
    short_id.relay_id = vec![1, 2, 3];
    let mut no_addrs = relay(1, 10);
    no_addrs.udp_addrs.clear();
    let mut bad_addr = relay(1, 10);
    bad_addr.udp_addrs = vec!["nowhere".into()];
    let mut many_addrs = relay(1, 10);
    many_addrs.udp_addrs = vec!["127.0.0.1:1".into(); 17];
    let mut bad_key = relay(1, 10);
    bad_key.public_key = vec![1; 5];
    for bad in [
        short_id,
        no_addrs,
        bad_addr,
        many_addrs,
        bad_key,
        relay(1, 0),
    ] {
        assert_eq!(code(register(client, bad).await), Code::InvalidArgument);
    }
    let missing = client
        .register_relay(RegisterRelayRequest { relay: None })
        .await;
    assert_eq!(code(missing), Code::InvalidArgument);
    let short = client
        .heartbeat(HeartbeatRequest {
            relay_id: vec![1; 3],
            ..Default::default()
        })
        .await;
    assert_eq!(code(short), Code::InvalidArgument);

    for session in ["", "bad name", "a/b", &"x".repeat(129)] {
        assert_eq!(
            code(place(client, session, &[]).await),
            Code::InvalidArgument,
            "{session:?}"
        );
        let list = client
            .list_peers(ListPeersRequest {
                session: session.into(),
            })
            .await;
        assert_eq!(code(list), Code::InvalidArgument);
        let watch = client
            .watch_session(WatchSessionRequest {
                session: session.into(),
            })
            .await;
        assert_eq!(code(watch), Code::InvalidArgument);
    }
    let bad_exclude = client
        .place_peer(PlacePeerRequest {
            session: "room".into(),
            exclude_relays: vec![vec![1; 3]],
        })
        .await;
    assert_eq!(code(bad_exclude), Code::InvalidArgument);
    let bad_peer = client
        .lookup_peer(LookupPeerRequest {
            session: "room".into(),
            peer_id: vec![1; 17],
        })
        .await;
    assert_eq!(code(bad_peer), Code::InvalidArgument);
    let no_relay = place(client, "room", &[]).await;
    assert_eq!(code(no_relay), Code::ResourceExhausted);

    // Over 64 KiB: refused before decoding.
    let huge = client
        .list_peers(ListPeersRequest {
            session: "x".repeat(70 * 1024),
        })
        .await;
    let huge = code(huge);
    assert!(
        matches!(huge, Code::OutOfRange | Code::ResourceExhausted),
        "{huge:?}"
    );
    assert!(relay_ids(client).await.is_empty());

    // Not protobuf at all, and a string field that is not UTF-8.
    let mut raw = tonic::client::Grpc::new(
        Channel::from_shared(registry.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for body in [vec![0xff; 4], vec![0x0a, 0x01, 0xff]] {
        raw.ready().await.unwrap();
        let path = PathAndQuery::from_static("/deltamesh.fleet.v1.Registry/LookupPeer");
        let reply = raw.unary(Request::new(body), path, RawCodec).await;
        // tonic refuses an undecodable body with INTERNAL, before any handler.
        assert_eq!(code(reply), Code::Internal);
    }
    register(client, relay(1, 10)).await.unwrap();
    assert_eq!(relay_ids(client).await, [1]);
    registry.stop().await;
}

/// Sends and receives message bodies as raw bytes.
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

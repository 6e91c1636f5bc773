//! The fleet network over real sockets: signal's HTTP router in front of a
//! [`FleetNetwork`] talking gRPC to a scripted fake registry and NATS
//! request/reply (on a real nats-server) to scripted fake relays.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deltamesh_proto::fleet::pb::registry_server::{Registry, RegistryServer};
use deltamesh_proto::fleet::pb::{self, relay_reply, relay_request};
use deltamesh_proto::fleet::relay_control_subject;
use deltamesh_proto::{Grants, Id};
use deltamesh_signal::{
    DEV_SUBJECT, FleetNetwork, FleetTimeouts, Network, NetworkError, PeerState, SignalConfig,
    SignalMetrics, router, serve,
};
use deltamesh_testkit::NatsServer;
use futures_util::StreamExt;
use prometheus_client::registry::Registry as Metrics;
use prost::Message as _;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tonic::codegen::tokio_stream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Status};

const TOKEN: &str = "dev-token-for-tests";
const SESSION: &str = "doc-1";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

const OFFER: &str = "v=0\r\n\
    o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
    s=-\r\n\
    t=0 0\r\n\
    a=group:BUNDLE 0\r\n\
    m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
    c=IN IP4 0.0.0.0\r\n\
    a=ice-ufrag:offr\r\n\
    a=ice-pwd:offerpasswordoffer123456\r\n\
    a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
    a=setup:actpass\r\n\
    a=mid:0\r\n\
    a=sctp-port:5000\r\n";

const ANSWER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=ice-lite\r\n";

const CANDIDATE: &str = "a=candidate:1 1 UDP 2130706431 192.0.2.1 50000 typ host\r\n";

/// A peer's ICE restart sdpfrag: new credentials, a candidate on its new address.
const RESTART_FRAG: &str = "a=ice-ufrag:new1\r\na=ice-pwd:newpasswordnewpassword12\r\n\
    m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
    a=candidate:7 1 udp 2130706431 127.0.0.2 5000 typ host\r\n";

const RELAY_A: Id = Id([0xa1; 16]);
const RELAY_B: Id = Id([0xb2; 16]);
const RELAY_C: Id = Id([0xc3; 16]);
const RELAY_D: Id = Id([0xd4; 16]);
const PEER: Id = Id([0x11; 16]);
const UNKNOWN_PEER: Id = Id([0x0b; 16]);

/// Short timeouts, for the tests that run into them; the others use the
/// defaults, so a loaded machine does not make them time out.
const SHORT_TIMEOUTS: FleetTimeouts = FleetTimeouts {
    registry: Duration::from_millis(500),
    relay: Duration::from_millis(500),
};

// ---------------------------------------------------------------- fake registry

#[derive(Default)]
struct RegistryState {
    /// The relays `PlacePeer` hands out, the first not excluded.
    relays: Vec<Id>,
    /// When set, `PlacePeer` answers RESOURCE_EXHAUSTED with this message.
    exhausted: Option<String>,
    /// When set, every call hangs.
    stalled: bool,
    /// What `LookupPeer` and `ListPeers` know.
    records: Vec<pb::PeerRecord>,
    /// The exclude list of each `PlacePeer`.
    placements: Vec<Vec<Id>>,
    /// Each `LookupPeer`: session and peer.
    lookups: Vec<(String, Id)>,
}

#[derive(Clone, Default)]
struct FakeRegistry(Arc<Mutex<RegistryState>>);

impl FakeRegistry {
    fn state(&self) -> MutexGuard<'_, RegistryState> {
        self.0.lock().unwrap()
    }

    async fn stall_if_told(&self) {
        if self.state().stalled {
            std::future::pending::<()>().await;
        }
    }

    /// Serves it on `listener` until the returned sender is dropped.
    fn serve(&self, listener: TcpListener) -> oneshot::Sender<()> {
        let (stop, stopped) = oneshot::channel::<()>();
        let service = RegistryServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        stop
    }
}

fn record(
    peer: Id,
    relay: Id,
    identity: &str,
    state: pb::PeerState,
    joined: u64,
) -> pb::PeerRecord {
    pb::PeerRecord {
        peer_id: peer.0.to_vec(),
        session: SESSION.to_owned(),
        relay_id: relay.0.to_vec(),
        state: state.into(),
        joined_at_ms: joined,
        identity: identity.to_owned(),
    }
}

#[tonic::async_trait]
impl Registry for FakeRegistry {
    async fn register_relay(
        &self,
        _: Request<pb::RegisterRelayRequest>,
    ) -> Result<tonic::Response<pb::RegisterRelayResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn heartbeat(
        &self,
        _: Request<pb::HeartbeatRequest>,
    ) -> Result<tonic::Response<pb::HeartbeatResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn deregister_relay(
        &self,
        _: Request<pb::DeregisterRelayRequest>,
    ) -> Result<tonic::Response<pb::DeregisterRelayResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn place_peer(
        &self,
        request: Request<pb::PlacePeerRequest>,
    ) -> Result<tonic::Response<pb::PlacePeerResponse>, Status> {
        self.stall_if_told().await;
        let request = request.into_inner();
        assert_eq!(request.session, SESSION);
        let exclude: Vec<Id> = request
            .exclude_relays
            .iter()
            .map(|bytes| Id::from_slice(bytes).unwrap())
            .collect();
        let mut state = self.state();
        state.placements.push(exclude.clone());
        if let Some(message) = &state.exhausted {
            return Err(Status::resource_exhausted(message.clone()));
        }
        let relay = state
            .relays
            .iter()
            .find(|relay| !exclude.contains(relay))
            .ok_or_else(|| Status::resource_exhausted("every relay is excluded"))?;
        Ok(tonic::Response::new(pb::PlacePeerResponse {
            relay: Some(pb::RelayInfo {
                relay_id: relay.0.to_vec(),
                capacity: 100,
                ..Default::default()
            }),
        }))
    }

    async fn lookup_peer(
        &self,
        request: Request<pb::LookupPeerRequest>,
    ) -> Result<tonic::Response<pb::PeerRecord>, Status> {
        self.stall_if_told().await;
        let request = request.into_inner();
        let peer = Id::from_slice(&request.peer_id).unwrap();
        let mut state = self.state();
        state.lookups.push((request.session.clone(), peer));
        state
            .records
            .iter()
            .find(|r| r.session == request.session && r.peer_id == peer.0)
            .cloned()
            .map(tonic::Response::new)
            .ok_or_else(|| Status::not_found("no such peer"))
    }

    async fn list_peers(
        &self,
        request: Request<pb::ListPeersRequest>,
    ) -> Result<tonic::Response<pb::ListPeersResponse>, Status> {
        self.stall_if_told().await;
        let session = request.into_inner().session;
        let peers = self
            .state()
            .records
            .iter()
            .filter(|r| r.session == session)
            .cloned()
            .collect();
        Ok(tonic::Response::new(pb::ListPeersResponse { peers }))
    }

    async fn list_relays(
        &self,
        _: Request<pb::ListRelaysRequest>,
    ) -> Result<tonic::Response<pb::ListRelaysResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchSessionStream = tokio_stream::Empty<Result<pb::MembershipEvent, Status>>;

    async fn watch_session(
        &self,
        _: Request<pb::WatchSessionRequest>,
    ) -> Result<tonic::Response<Self::WatchSessionStream>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

// ---------------------------------------------------------------- fake relays

/// One request a fake relay got: what it was and its `traceparent` header.
type Seen = (relay_request::Request, Option<String>);

/// A relay answering on its control subject with a scripted reply; `None`
/// means it never answers.
struct FakeRelay {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRelay {
    async fn start(
        nats: &async_nats::Client,
        id: Id,
        script: impl Fn(&relay_request::Request) -> Option<relay_reply::Reply> + Send + 'static,
    ) -> FakeRelay {
        let mut subscriber = nats.subscribe(relay_control_subject(id)).await.unwrap();
        subscribed(nats).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let nats = nats.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let request = pb::RelayRequest::decode(message.payload)
                    .unwrap()
                    .request
                    .unwrap();
                let traceparent = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("traceparent"))
                    .map(|value| value.as_str().to_owned());
                let reply = script(&request);
                log.lock().unwrap().push((request, traceparent));
                if let (Some(reply), Some(to)) = (reply, message.reply) {
                    let payload = pb::RelayReply { reply: Some(reply) }.encode_to_vec();
                    nats.publish(to, payload.into()).await.unwrap();
                }
            }
        });
        FakeRelay { seen, task }
    }

    /// A relay that answers offers with peer [`PEER`] and everything else
    /// with `Done`.
    async fn healthy(nats: &async_nats::Client, id: Id) -> FakeRelay {
        FakeRelay::start(nats, id, |request| {
            Some(match request {
                relay_request::Request::Offer(_) => relay_reply::Reply::Answer(pb::OfferAnswer {
                    peer_id: PEER.0.to_vec(),
                    answer_sdp: ANSWER.to_owned(),
                    ice_ufrag: "relayufrag".to_owned(),
                }),
                _ => relay_reply::Reply::Done(pb::Done {}),
            })
        })
        .await
    }

    /// A relay that answers every request with this failure.
    async fn failing(
        nats: &async_nats::Client,
        id: Id,
        code: pb::RelayFailureCode,
        limit: u32,
    ) -> FakeRelay {
        FakeRelay::start(nats, id, move |_| {
            Some(relay_reply::Reply::Failure(pb::RelayFailure {
                code: code.into(),
                detail: "scripted failure".to_owned(),
                limit,
            }))
        })
        .await
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns once the server has every subscription `nats` made so far: it
/// handles a connection's operations in order, so once a message published
/// after them comes back (NATS echoes to the sender), they are in place.
async fn subscribed(nats: &async_nats::Client) {
    let probe = nats.new_inbox();
    let mut echo = nats.subscribe(probe.clone()).await.unwrap();
    nats.publish(probe, "probe".into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), echo.next())
        .await
        .expect("no echo from the server")
        .unwrap();
}

// ---------------------------------------------------------------- the harness

/// nats-server, the fake registry and signal over a [`FleetNetwork`].
struct Fleet {
    nats_server: NatsServer,
    /// A NATS client for the fake relays.
    nats: async_nats::Client,
    registry: FakeRegistry,
    network: Arc<FleetNetwork>,
    base: String,
    client: reqwest::Client,
    _stops: Vec<oneshot::Sender<()>>,
}

impl Fleet {
    async fn start() -> Fleet {
        Fleet::start_with(FleetTimeouts::default()).await
    }

    async fn start_with(timeouts: FleetTimeouts) -> Fleet {
        let registry = FakeRegistry::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = registry.serve(listener);
        let mut fleet = Fleet::start_with_registry_at(address, registry, timeouts).await;
        fleet._stops.push(stop);
        fleet
    }

    /// Signal in front of a registry expected at `address` (which may not
    /// be up).
    async fn start_with_registry_at(
        address: SocketAddr,
        registry: FakeRegistry,
        timeouts: FleetTimeouts,
    ) -> Fleet {
        let nats_server = NatsServer::start();
        let nats = async_nats::connect(nats_server.url()).await.unwrap();
        let signal_nats = async_nats::connect(nats_server.url()).await.unwrap();
        let network = Arc::new(
            FleetNetwork::new(signal_nats, &format!("http://{address}"), None, timeouts).unwrap(),
        );
        let mut metrics = Metrics::default();
        let signal_metrics = SignalMetrics::register(&mut metrics);
        let app = router(
            Arc::clone(&network),
            SignalConfig::new(TOKEN),
            signal_metrics,
            Arc::new(metrics),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, async {
            let _ = stopped.await;
        }));
        Fleet {
            nats_server,
            nats,
            registry,
            network,
            base,
            client: reqwest::Client::new(),
            _stops: vec![stop],
        }
    }

    fn api(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
    }

    async fn post_offer(&self) -> Response {
        self.api(Method::POST, &format!("/v1/sessions/{SESSION}/peers"))
            .header("content-type", "application/sdp")
            .header("traceparent", TRACEPARENT)
            .body(OFFER)
            .send()
            .await
            .unwrap()
    }

    async fn patch(&self, peer: Id) -> Response {
        self.api(Method::PATCH, &peer_path(peer))
            .header("content-type", "application/trickle-ice-sdpfrag")
            .header("if-match", "\"relayufrag\"")
            .body(CANDIDATE)
            .send()
            .await
            .unwrap()
    }

    /// An ICE restart of `peer` (`If-Match: *`) with [`RESTART_FRAG`].
    async fn restart(&self, peer: Id) -> Response {
        self.api(Method::PATCH, &peer_path(peer))
            .header("content-type", "application/trickle-ice-sdpfrag")
            .header("if-match", "*")
            .body(RESTART_FRAG)
            .send()
            .await
            .unwrap()
    }

    async fn delete(&self, peer: Id) -> Response {
        self.api(Method::DELETE, &peer_path(peer))
            .send()
            .await
            .unwrap()
    }

    fn places_on(&self, relays: &[Id]) {
        self.registry.state().relays = relays.to_vec();
    }

    fn knows(&self, records: Vec<pb::PeerRecord>) {
        self.registry.state().records = records;
    }

    fn placements(&self) -> Vec<Vec<Id>> {
        self.registry.state().placements.clone()
    }
}

fn peer_path(peer: Id) -> String {
    format!("/v1/sessions/{SESSION}/peers/{peer}")
}

fn header(response: &Response, name: &str) -> String {
    let value = response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"));
    value.to_str().unwrap().to_owned()
}

/// Checks `response` is a problem with `status` and returns its JSON.
async fn problem(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let content_type = header(&response, "content-type");
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(actual, status, "{body}");
    assert_eq!(content_type, "application/problem+json");
    body
}

fn problem_type(body: &Value) -> &str {
    body["type"].as_str().unwrap()
}

fn detail(body: &Value) -> &str {
    body["detail"].as_str().unwrap()
}

// ---------------------------------------------------------------- offers

#[tokio::test]
async fn an_offer_is_placed_and_answered_by_the_relay() {
    let fleet = Fleet::start().await;
    fleet.places_on(&[RELAY_A]);
    let relay = FakeRelay::healthy(&fleet.nats, RELAY_A).await;

    let response = fleet.post_offer().await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "location"), peer_path(PEER));
    assert_eq!(header(&response, "etag"), "\"relayufrag\"");
    assert_eq!(response.text().await.unwrap(), ANSWER);

    assert_eq!(fleet.placements(), [Vec::<Id>::new()]);
    let seen = relay.seen();
    assert_eq!(seen.len(), 1);
    let (relay_request::Request::Offer(offer), traceparent) = &seen[0] else {
        panic!("not an offer: {seen:?}");
    };
    assert_eq!(offer.session, SESSION);
    assert_eq!(offer.identity, DEV_SUBJECT);
    assert_eq!(offer.grants, Some(Grants::ALL.into()));
    assert_eq!(offer.offer_sdp, OFFER);
    assert_eq!(traceparent.as_deref(), Some(TRACEPARENT));
}

#[tokio::test]
async fn connect_returns_the_relay_and_sends_no_traceparent_when_there_is_none() {
    let fleet = Fleet::start().await;
    fleet.places_on(&[RELAY_B]);
    let relay = FakeRelay::healthy(&fleet.nats, RELAY_B).await;

    let connected = fleet
        .network
        .connect(deltamesh_signal::ConnectRequest {
            session: SESSION.to_owned(),
            identity: "alice".to_owned(),
            grants: Grants::ALL,
            offer_sdp: OFFER.to_owned(),
            trace: opentelemetry::Context::new(),
        })
        .await
        .unwrap();
    assert_eq!(connected.peer_id, PEER);
    assert_eq!(connected.relay_id, RELAY_B);
    assert_eq!(connected.answer_sdp, ANSWER);
    assert_eq!(connected.ice_ufrag, "relayufrag");
    assert_eq!(relay.seen()[0].1, None);
}

#[tokio::test]
async fn a_placed_relay_without_responders_is_excluded_and_the_next_one_answers() {
    let fleet = Fleet::start().await;
    // RELAY_A is listed but nobody listens on its subject.
    fleet.places_on(&[RELAY_A, RELAY_B]);
    let relay = FakeRelay::healthy(&fleet.nats, RELAY_B).await;

    let response = fleet.post_offer().await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.text().await.unwrap(), ANSWER);
    assert_eq!(fleet.placements(), [vec![], vec![RELAY_A]]);
    assert_eq!(relay.seen().len(), 1);
}

#[tokio::test]
async fn when_every_placed_relay_is_gone_the_offer_fails_503_after_three_placements() {
    let fleet = Fleet::start().await;
    fleet.places_on(&[RELAY_A, RELAY_B, RELAY_C, RELAY_D]);
    let relay = FakeRelay::healthy(&fleet.nats, RELAY_D).await;

    let response = fleet.post_offer().await;
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        problem_type(&body),
        "urn:deltamesh:problem:network-unavailable"
    );
    assert!(detail(&body).contains("3 relays"), "{body}");
    assert_eq!(
        fleet.placements(),
        [vec![], vec![RELAY_A], vec![RELAY_A, RELAY_B]]
    );
    assert!(relay.seen().is_empty(), "a fourth placement was made");
}

#[tokio::test]
async fn when_the_registry_runs_out_of_relays_after_exclusions_it_is_no_capacity() {
    let fleet = Fleet::start().await;
    fleet.places_on(&[RELAY_A]);

    let response = fleet.post_offer().await;
    assert_eq!(header(&response, "retry-after"), "2");
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(problem_type(&body), "urn:deltamesh:problem:no-capacity");
    assert_eq!(fleet.placements(), [vec![], vec![RELAY_A]]);
}

#[tokio::test]
async fn a_relay_that_never_answers_is_a_504_within_the_timeout() {
    let fleet = Fleet::start_with(SHORT_TIMEOUTS).await;
    fleet.places_on(&[RELAY_A]);
    let relay = FakeRelay::start(&fleet.nats, RELAY_A, |_| None).await;

    let started = Instant::now();
    let response = fleet.post_offer().await;
    let elapsed = started.elapsed();
    let body = problem(response, StatusCode::GATEWAY_TIMEOUT).await;
    assert!(detail(&body).contains("the relay's answer"), "{body}");
    assert!(elapsed >= SHORT_TIMEOUTS.relay, "{elapsed:?}");
    assert!(
        elapsed < SHORT_TIMEOUTS.relay + Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(relay.seen().len(), 1);
}

#[tokio::test]
async fn a_registry_that_is_down_is_a_503_and_signal_recovers_when_it_is_up() {
    // The registry's address is bound but not listening: connecting to it
    // is refused, as to a registry that is down, and no other process can
    // take the port before the registry comes up on it.
    let reserved = TcpSocket::new_v4().expect("a socket");
    reserved
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("a free port");
    let address = reserved.local_addr().expect("the reserved address");
    let registry = FakeRegistry::default();
    let fleet =
        Fleet::start_with_registry_at(address, registry.clone(), FleetTimeouts::default()).await;
    // Signal starts and is ready while the registry is down.
    assert_eq!(fleet.network.readiness(), Ok(()));

    let response = fleet.post_offer().await;
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(
        problem_type(&body),
        "urn:deltamesh:problem:network-unavailable"
    );
    assert!(detail(&body).contains("registry unreachable"), "{body}");

    // The registry comes up on its address: the lazy channel reconnects.
    let _stop = registry.serve(reserved.listen(128).expect("the registry listens"));
    fleet.places_on(&[RELAY_A]);
    let _relay = FakeRelay::healthy(&fleet.nats, RELAY_A).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = fleet.post_offer().await;
        if response.status() == StatusCode::CREATED {
            break;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "the registry was never reached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_registry_that_does_not_answer_is_a_504() {
    let fleet = Fleet::start_with(SHORT_TIMEOUTS).await;
    fleet.registry.state().stalled = true;

    let started = Instant::now();
    let response = fleet.post_offer().await;
    let elapsed = started.elapsed();
    let body = problem(response, StatusCode::GATEWAY_TIMEOUT).await;
    assert!(detail(&body).contains("the registry"), "{body}");
    assert!(
        elapsed < SHORT_TIMEOUTS.registry + Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_registry_without_capacity_is_a_503_with_retry_after() {
    let fleet = Fleet::start().await;
    fleet.registry.state().exhausted = Some("every relay is full or draining".to_owned());

    let response = fleet.post_offer().await;
    assert_eq!(header(&response, "retry-after"), "2");
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(problem_type(&body), "urn:deltamesh:problem:no-capacity");
    assert!(
        detail(&body).contains("every relay is full or draining"),
        "{body}"
    );
}

#[tokio::test]
async fn relay_failures_map_to_http_statuses() {
    use pb::RelayFailureCode as Code;
    let cases: [(Code, u32, StatusCode, &str, Option<&str>); 5] = [
        (
            Code::SessionFull,
            8,
            StatusCode::SERVICE_UNAVAILABLE,
            "session-full",
            Some("2"),
        ),
        (
            Code::BadOffer,
            0,
            StatusCode::BAD_REQUEST,
            "offer-refused",
            None,
        ),
        (
            Code::Full,
            0,
            StatusCode::SERVICE_UNAVAILABLE,
            "no-capacity",
            Some("2"),
        ),
        (
            Code::TooManyPending,
            0,
            StatusCode::SERVICE_UNAVAILABLE,
            "no-capacity",
            Some("1"),
        ),
        (
            Code::ShuttingDown,
            0,
            StatusCode::SERVICE_UNAVAILABLE,
            "network-unavailable",
            None,
        ),
    ];
    let fleet = Fleet::start().await;
    for (n, (code, limit, status, kind, retry_after)) in cases.into_iter().enumerate() {
        // A relay of its own for each case.
        let id = Id([n as u8 + 1; 16]);
        fleet.places_on(&[id]);
        let _relay = FakeRelay::failing(&fleet.nats, id, code, limit).await;
        let response = fleet.post_offer().await;
        if let Some(seconds) = retry_after {
            assert_eq!(header(&response, "retry-after"), seconds, "{code:?}");
        }
        let body = problem(response, status).await;
        assert_eq!(
            problem_type(&body),
            format!("urn:deltamesh:problem:{kind}"),
            "{code:?}"
        );
        if code == Code::SessionFull {
            assert!(detail(&body).contains('8'), "{body}");
        }
    }
}

#[tokio::test]
async fn an_undecodable_relay_reply_is_a_503() {
    let fleet = Fleet::start().await;
    fleet.places_on(&[RELAY_A]);
    let mut subscriber = fleet
        .nats
        .subscribe(relay_control_subject(RELAY_A))
        .await
        .unwrap();
    subscribed(&fleet.nats).await;
    let nats = fleet.nats.clone();
    let _relay = tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            let to = message.reply.unwrap();
            nats.publish(to, vec![0xff, 0xff, 0xff].into())
                .await
                .unwrap();
        }
    });

    let body = problem(fleet.post_offer().await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(detail(&body).contains("undecodable reply"), "{body}");
}

// ---------------------------------------------------------------- trickle and delete

#[tokio::test]
async fn trickle_and_delete_go_to_the_relay_the_registry_names() {
    let fleet = Fleet::start().await;
    fleet.knows(vec![record(
        PEER,
        RELAY_B,
        DEV_SUBJECT,
        pb::PeerState::Connected,
        1,
    )]);
    let other = FakeRelay::healthy(&fleet.nats, RELAY_A).await;
    let host = FakeRelay::healthy(&fleet.nats, RELAY_B).await;

    assert_eq!(fleet.patch(PEER).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(fleet.delete(PEER).await.status(), StatusCode::NO_CONTENT);

    assert!(other.seen().is_empty());
    let seen = host.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let relay_request::Request::Trickle(trickle) = &seen[0].0 else {
        panic!("not a trickle: {seen:?}");
    };
    assert_eq!(trickle.session, SESSION);
    assert_eq!(trickle.peer_id, PEER.0);
    assert_eq!(trickle.identity, DEV_SUBJECT);
    assert_eq!(trickle.if_match.as_deref(), Some("relayufrag"));
    assert_eq!(trickle.candidates, [CANDIDATE.trim_end()]);
    let relay_request::Request::Disconnect(disconnect) = &seen[1].0 else {
        panic!("not a disconnect: {seen:?}");
    };
    assert_eq!(disconnect.session, SESSION);
    assert_eq!(disconnect.peer_id, PEER.0);
    assert_eq!(disconnect.identity, DEV_SUBJECT);
    assert_eq!(
        fleet.registry.state().lookups,
        [(SESSION.to_owned(), PEER), (SESSION.to_owned(), PEER)]
    );
}

#[tokio::test]
async fn an_unknown_peer_is_a_404() {
    let fleet = Fleet::start().await;
    let relay = FakeRelay::healthy(&fleet.nats, RELAY_A).await;

    let body = problem(fleet.delete(UNKNOWN_PEER).await, StatusCode::NOT_FOUND).await;
    assert_eq!(problem_type(&body), "urn:deltamesh:problem:unknown-peer");
    problem(fleet.patch(UNKNOWN_PEER).await, StatusCode::NOT_FOUND).await;
    assert!(relay.seen().is_empty());
}

#[tokio::test]
async fn a_peer_whose_relay_is_gone_is_a_404() {
    let fleet = Fleet::start().await;
    fleet.knows(vec![record(
        PEER,
        RELAY_C,
        DEV_SUBJECT,
        pb::PeerState::Connected,
        1,
    )]);
    problem(fleet.delete(PEER).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn a_peer_of_another_identity_is_a_403_and_its_relay_is_not_asked() {
    let fleet = Fleet::start().await;
    fleet.knows(vec![record(
        PEER,
        RELAY_A,
        "someone-else",
        pb::PeerState::Connected,
        1,
    )]);
    let relay = FakeRelay::healthy(&fleet.nats, RELAY_A).await;

    let body = problem(fleet.delete(PEER).await, StatusCode::FORBIDDEN).await;
    assert_eq!(problem_type(&body), "urn:deltamesh:problem:forbidden");
    problem(fleet.patch(PEER).await, StatusCode::FORBIDDEN).await;
    assert!(relay.seen().is_empty());
}

#[tokio::test]
async fn relay_failures_on_trickle_are_passed_on() {
    let fleet = Fleet::start().await;
    fleet.knows(vec![record(
        PEER,
        RELAY_A,
        DEV_SUBJECT,
        pb::PeerState::Connected,
        1,
    )]);
    let _relay =
        FakeRelay::failing(&fleet.nats, RELAY_A, pb::RelayFailureCode::EtagMismatch, 0).await;
    problem(fleet.patch(PEER).await, StatusCode::PRECONDITION_FAILED).await;
}

// ---------------------------------------------------------------- ICE restart

/// A relay that answers an ICE restart with new credentials and a candidate.
async fn restarting(nats: &async_nats::Client, id: Id) -> FakeRelay {
    FakeRelay::start(nats, id, |request| {
        Some(match request {
            relay_request::Request::IceRestart(_) => {
                relay_reply::Reply::Restarted(pb::IceRestarted {
                    ice_ufrag: "relaynew".into(),
                    ice_pwd: "relaypasswordrelaypassword".into(),
                    candidates: vec!["candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host".into()],
                })
            }
            _ => relay_reply::Reply::Done(pb::Done {}),
        })
    })
    .await
}

#[tokio::test]
async fn an_ice_restart_goes_to_the_relay_the_registry_names_and_answers_its_sdpfrag() {
    let fleet = Fleet::start().await;
    fleet.knows(vec![record(
        PEER,
        RELAY_B,
        DEV_SUBJECT,
        pb::PeerState::Connected,
        1,
    )]);
    let other = restarting(&fleet.nats, RELAY_A).await;
    let host = restarting(&fleet.nats, RELAY_B).await;

    let response = fleet.restart(PEER).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "etag"), "\"relaynew\"");
    assert_eq!(
        header(&response, "content-type"),
        "application/trickle-ice-sdpfrag"
    );
    assert_eq!(
        response.text().await.unwrap(),
        "a=ice-ufrag:relaynew\r\na=ice-pwd:relaypasswordrelaypassword\r\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host\r\n"
    );

    assert!(other.seen().is_empty());
    let seen = host.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let relay_request::Request::IceRestart(restart) = &seen[0].0 else {
        panic!("not an ICE restart: {seen:?}");
    };
    assert_eq!(restart.session, SESSION);
    assert_eq!(restart.peer_id, PEER.0);
    assert_eq!(restart.identity, DEV_SUBJECT);
    assert_eq!(restart.ufrag, "new1");
    assert_eq!(restart.pwd, "newpasswordnewpassword12");
    assert_eq!(
        restart.candidates,
        ["a=candidate:7 1 udp 2130706431 127.0.0.2 5000 typ host"]
    );
}

#[tokio::test]
async fn an_ice_restart_of_an_unknown_or_foreign_peer_reaches_no_relay() {
    let fleet = Fleet::start().await;
    fleet.knows(vec![record(
        PEER,
        RELAY_A,
        "someone-else",
        pb::PeerState::Connected,
        1,
    )]);
    let relay = restarting(&fleet.nats, RELAY_A).await;
    let body = problem(fleet.restart(UNKNOWN_PEER).await, StatusCode::NOT_FOUND).await;
    assert_eq!(problem_type(&body), "urn:deltamesh:problem:unknown-peer");
    let body = problem(fleet.restart(PEER).await, StatusCode::FORBIDDEN).await;
    assert_eq!(problem_type(&body), "urn:deltamesh:problem:forbidden");
    assert!(relay.seen().is_empty());
}

#[tokio::test]
async fn relay_failures_on_an_ice_restart_are_passed_on() {
    use pb::RelayFailureCode as Code;
    // A peer on the WebSocket lane has no ICE to restart: the relay says
    // BAD_OFFER, as in one process.
    let cases = [
        (Code::BadOffer, StatusCode::BAD_REQUEST),
        (Code::UnknownPeer, StatusCode::NOT_FOUND),
        (Code::NotOwner, StatusCode::FORBIDDEN),
        (Code::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
    ];
    let fleet = Fleet::start().await;
    fleet.knows(vec![record(
        PEER,
        RELAY_A,
        DEV_SUBJECT,
        pb::PeerState::Connected,
        1,
    )]);
    for (code, status) in cases {
        let relay = FakeRelay::failing(&fleet.nats, RELAY_A, code, 0).await;
        problem(fleet.restart(PEER).await, status).await;
        assert_eq!(relay.seen().len(), 1, "{code:?}");
    }
}

#[tokio::test]
async fn an_ice_restart_whose_relay_is_gone_is_a_404_and_one_never_answered_a_504() {
    let fleet = Fleet::start_with(SHORT_TIMEOUTS).await;
    fleet.knows(vec![
        record(PEER, RELAY_A, DEV_SUBJECT, pb::PeerState::Connected, 1),
        record(
            UNKNOWN_PEER,
            RELAY_C,
            DEV_SUBJECT,
            pb::PeerState::Connected,
            2,
        ),
    ]);
    problem(fleet.restart(UNKNOWN_PEER).await, StatusCode::NOT_FOUND).await;
    let relay = FakeRelay::start(&fleet.nats, RELAY_A, |_| None).await;
    let started = Instant::now();
    let body = problem(fleet.restart(PEER).await, StatusCode::GATEWAY_TIMEOUT).await;
    assert!(detail(&body).contains("the relay"), "{body}");
    assert!(started.elapsed() >= SHORT_TIMEOUTS.relay);
    assert_eq!(relay.seen().len(), 1);
}

#[tokio::test]
async fn a_relay_answering_a_restart_with_something_else_is_a_503() {
    let fleet = Fleet::start().await;
    fleet.knows(vec![record(
        PEER,
        RELAY_A,
        DEV_SUBJECT,
        pb::PeerState::Connected,
        1,
    )]);
    let _relay = FakeRelay::healthy(&fleet.nats, RELAY_A).await;
    let body = problem(fleet.restart(PEER).await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        detail(&body).contains("did not answer the ICE restart"),
        "{body}"
    );
}

#[tokio::test]
async fn a_trickle_naming_an_ice_restart_is_refused_without_asking_anyone() {
    let fleet = Fleet::start().await;
    let error = fleet
        .network
        .trickle(SESSION, PEER, DEV_SUBJECT, Some("*"), vec![])
        .await
        .unwrap_err();
    assert_eq!(
        error,
        NetworkError::Unsupported("ICE restart; reconnect with a new offer")
    );
    assert!(fleet.registry.state().lookups.is_empty());
}

// ---------------------------------------------------------------- listing and readiness

#[tokio::test]
async fn the_peer_list_maps_the_registry_records_and_skips_malformed_ones() {
    let fleet = Fleet::start().await;
    let mut malformed = record(PEER, RELAY_A, "x", pb::PeerState::Connected, 3);
    malformed.relay_id = vec![1, 2, 3];
    fleet.knows(vec![
        record(
            PEER,
            RELAY_A,
            "alice",
            pb::PeerState::Connecting,
            1_700_000_000_001,
        ),
        record(
            UNKNOWN_PEER,
            RELAY_B,
            "bob",
            pb::PeerState::Connected,
            1_700_000_000_002,
        ),
        malformed,
    ]);

    let response = fleet
        .api(Method::GET, &format!("/v1/sessions/{SESSION}/peers"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!([
            {
                "peer_id": PEER.to_string(),
                "relay_id": RELAY_A.to_string(),
                "state": "connecting",
                "joined_at": "2023-11-14T22:13:20.001Z",
            },
            {
                "peer_id": UNKNOWN_PEER.to_string(),
                "relay_id": RELAY_B.to_string(),
                "state": "connected",
                "joined_at": "2023-11-14T22:13:20.002Z",
            },
        ])
    );
    let peers = fleet.network.peers(SESSION).await.unwrap();
    assert_eq!(peers[1].state, PeerState::Connected);
}

#[tokio::test]
async fn readiness_follows_the_nats_connection() {
    let mut fleet = Fleet::start().await;
    assert_eq!(fleet.network.readiness(), Ok(()));
    fleet.nats_server.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet.network.readiness().is_ok() {
        assert!(Instant::now() < deadline, "still ready without NATS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fleet.network.readiness(),
        Err("NATS is unreachable".to_owned())
    );
    let response = fleet
        .client
        .get(format!("{}/readyz", fleet.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

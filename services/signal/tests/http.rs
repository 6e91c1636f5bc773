//! The HTTP contract of PROTOCOL.md §1, spoken over real sockets to a signal
//! service in front of a fake network that records what it was asked.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use deltamesh_proto::{Grants, Id};
use deltamesh_signal::token::{Claims, TokenSigner, TokenVerifier, unix_now};
use deltamesh_signal::{
    BODY_LIMIT, ConnectRequest, Connected, DEV_SUBJECT, IceRestartAnswer, IceRestartRequest,
    Network, NetworkError, PeerInfo, PeerState, RateLimit, SignalConfig, SignalMetrics, router,
    serve,
};
use prometheus_client::registry::Registry;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

const TOKEN: &str = "dev-token-for-tests";
const SESSION: &str = "doc-1";

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

// ---------------------------------------------------------------- the fake

/// What the fake network was asked.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Connect {
        session: String,
        identity: String,
        grants: Grants,
        offer_sdp: String,
        traceparent: Option<String>,
    },
    Trickle {
        session: String,
        peer: Id,
        identity: String,
        if_match: Option<String>,
        candidates: Vec<String>,
    },
    Disconnect {
        session: String,
        peer: Id,
        identity: String,
    },
    RestartIce {
        session: String,
        peer: Id,
        identity: String,
        restart: IceRestartRequest,
    },
    Peers {
        session: String,
    },
}

#[derive(Default)]
struct FakeState {
    calls: Vec<Call>,
    /// Peers it placed: (session, info, ice ufrag, identity).
    peers: Vec<(String, PeerInfo, String, String)>,
    /// When set, every call fails with it.
    failure: Option<NetworkError>,
    /// When set, `readiness` fails with it.
    not_ready: Option<String>,
    /// When set, the ufrag of the next answers.
    ufrag: Option<String>,
    /// Whether ICE restarts are supported (answered with ufrag `restarted`).
    restarts: bool,
}

/// A network that places every peer on relay 0xee…, numbers peers 1, 2, …
/// and gives peer n the ufrag `ufragn`.
#[derive(Default)]
struct FakeNetwork {
    state: Mutex<FakeState>,
}

impl FakeNetwork {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    fn fail_with(&self, error: NetworkError) {
        self.state().failure = Some(error);
    }

    /// Records `call`, then fails if told to.
    fn record(&self, call: Call) -> Result<MutexGuard<'_, FakeState>, NetworkError> {
        let mut state = self.state();
        state.calls.push(call);
        match state.failure.clone() {
            Some(error) => Err(error),
            None => Ok(state),
        }
    }
}

const RELAY: Id = Id([0xee; 16]);

impl Network for FakeNetwork {
    async fn connect(&self, request: ConnectRequest) -> Result<Connected, NetworkError> {
        let mut state = self.record(Call::Connect {
            session: request.session.clone(),
            identity: request.identity.clone(),
            grants: request.grants,
            offer_sdp: request.offer_sdp,
            traceparent: deltamesh_proto::trace::inject(&request.trace)
                .into_iter()
                .find_map(|(name, value)| (name == "traceparent").then_some(value)),
        })?;
        let n = state.peers.len() as u8 + 1;
        let peer_id = Id([n; 16]);
        let ice_ufrag = state.ufrag.clone().unwrap_or(format!("ufrag{n}"));
        let joined_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + u64::from(n));
        let info = PeerInfo {
            peer_id,
            relay_id: RELAY,
            state: PeerState::Connecting,
            joined_at,
        };
        state
            .peers
            .push((request.session, info, ice_ufrag.clone(), request.identity));
        Ok(Connected {
            peer_id,
            relay_id: RELAY,
            answer_sdp: ANSWER.to_owned(),
            ice_ufrag,
        })
    }

    async fn trickle(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        if_match: Option<&str>,
        candidates: Vec<String>,
    ) -> Result<(), NetworkError> {
        let state = self.record(Call::Trickle {
            session: session.to_owned(),
            peer,
            identity: identity.to_owned(),
            if_match: if_match.map(str::to_owned),
            candidates,
        })?;
        let (_, _, ufrag, owner) = state
            .peers
            .iter()
            .find(|(s, info, ..)| s == session && info.peer_id == peer)
            .ok_or(NetworkError::UnknownPeer)?;
        if owner != identity {
            return Err(NetworkError::NotOwner);
        }
        match if_match {
            Some("*") => Err(NetworkError::Unsupported("ICE restart")),
            Some(tag) if tag == ufrag => Ok(()),
            _ => Err(NetworkError::EtagMismatch),
        }
    }

    async fn disconnect(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
    ) -> Result<(), NetworkError> {
        let mut state = self.record(Call::Disconnect {
            session: session.to_owned(),
            peer,
            identity: identity.to_owned(),
        })?;
        let at = state
            .peers
            .iter()
            .position(|(s, info, ..)| s == session && info.peer_id == peer)
            .ok_or(NetworkError::UnknownPeer)?;
        if state.peers[at].3 != identity {
            return Err(NetworkError::NotOwner);
        }
        state.peers.remove(at);
        Ok(())
    }

    async fn restart_ice(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        restart: IceRestartRequest,
    ) -> Result<IceRestartAnswer, NetworkError> {
        let state = self.record(Call::RestartIce {
            session: session.to_owned(),
            peer,
            identity: identity.to_owned(),
            restart,
        })?;
        if !state.restarts {
            return Err(NetworkError::Unsupported("ICE restart"));
        }
        Ok(IceRestartAnswer {
            ufrag: "restarted".into(),
            pwd: "restartedpasswordrestarted".into(),
            candidates: vec!["candidate:1 1 udp 2130706431 192.0.2.9 4000 typ host".into()],
        })
    }

    async fn peers(&self, session: &str) -> Result<Vec<PeerInfo>, NetworkError> {
        let state = self.record(Call::Peers {
            session: session.to_owned(),
        })?;
        Ok(state
            .peers
            .iter()
            .filter(|(s, ..)| s == session)
            .map(|(_, info, ..)| info.clone())
            .collect())
    }

    fn readiness(&self) -> Result<(), String> {
        match &self.state().not_ready {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------- the harness

/// A signal service on 127.0.0.1:0 in front of a [`FakeNetwork`].
struct Signal {
    base: String,
    client: reqwest::Client,
    network: Arc<FakeNetwork>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Signal {
    async fn start() -> Signal {
        let mut config = SignalConfig::new(TOKEN);
        config.home_page = "<!doctype html><title>test home</title>".to_owned();
        config.retry_after = Duration::from_secs(7);
        Signal::start_with(config).await
    }

    async fn start_with(config: SignalConfig) -> Signal {
        let network = Arc::new(FakeNetwork::default());
        let mut registry = Registry::default();
        let metrics = SignalMetrics::register(&mut registry);
        let app = router(network.clone(), config, metrics, Arc::new(registry));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, async {
            let _ = stopped.await;
        }));
        Signal {
            base,
            client: reqwest::Client::new(),
            network,
            stop: Some(stop),
            server,
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// An authorized request.
    fn api(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path).bearer_auth(TOKEN)
    }

    async fn post_offer(&self, session: &str, body: impl Into<reqwest::Body>) -> Response {
        self.api(Method::POST, &format!("/v1/sessions/{session}/peers"))
            .header("content-type", "application/sdp")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// A peer made by a successful offer: its resource path and ETag.
    async fn join(&self) -> (String, String) {
        let response = self.post_offer(SESSION, OFFER).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        (header(&response, "location"), header(&response, "etag"))
    }

    async fn patch(&self, path: &str, if_match: Option<&str>, body: &str) -> Response {
        let mut request = self
            .api(Method::PATCH, path)
            .header("content-type", "application/trickle-ice-sdpfrag")
            .body(body.to_owned());
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        request.send().await.unwrap()
    }

    /// Fails unless the service still answers.
    async fn assert_alive(&self) {
        let response = self.request(Method::GET, "/healthz").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn metrics(&self) -> String {
        let response = self.request(Method::GET, "/metrics").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }
}

fn header(response: &Response, name: &str) -> String {
    let value = response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"));
    value.to_str().unwrap().to_owned()
}

/// Checks `response` is an RFC 9457 problem with `status`, readable from any
/// origin, and returns its detail.
async fn problem(response: Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(
        header(&response, "content-type"),
        "application/problem+json"
    );
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    let body = json(response).await;
    let object = body.as_object().unwrap();
    let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["detail", "status", "title", "type"], "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:deltamesh:problem:"),
        "{body}"
    );
    assert!(!body["title"].as_str().unwrap().is_empty());
    body["detail"].as_str().unwrap().to_owned()
}

async fn json(response: Response) -> Value {
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

fn peer_path(peer: &str) -> String {
    format!("/v1/sessions/{SESSION}/peers/{peer}")
}

const UNKNOWN_PEER: &str = "0badc0de-0000-4000-8000-000000000000";

// ---------------------------------------------------------------- offers

#[tokio::test]
async fn an_offer_is_answered_201_with_location_etag_and_the_sdp_answer() {
    let signal = Signal::start().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = signal
        .api(Method::POST, "/v1/sessions/doc-1/peers")
        .header("content-type", "application/sdp")
        .header("traceparent", traceparent)
        .body(OFFER)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(header(&response, "content-type"), "application/sdp");
    assert_eq!(
        header(&response, "location"),
        "/v1/sessions/doc-1/peers/01010101-0101-0101-0101-010101010101"
    );
    assert_eq!(header(&response, "etag"), "\"ufrag1\"");
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    let exposed = header(&response, "access-control-expose-headers");
    for name in ["Location", "ETag", "Retry-After", "Accept-Post"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    assert_eq!(response.text().await.unwrap(), ANSWER);
    assert_eq!(
        signal.network.calls(),
        [Call::Connect {
            session: "doc-1".to_owned(),
            identity: DEV_SUBJECT.to_owned(),
            grants: Grants::ALL,
            offer_sdp: OFFER.to_owned(),
            traceparent: Some(traceparent.to_owned()),
        }]
    );
}

#[tokio::test]
async fn an_offer_with_a_malformed_traceparent_is_served_and_traced_by_nobody() {
    let signal = Signal::start().await;
    for bad in [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        let response = signal
            .api(Method::POST, "/v1/sessions/doc-1/peers")
            .header("content-type", "application/sdp")
            .header("traceparent", bad)
            .body(OFFER)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{bad}");
    }
    let calls = signal.network.calls();
    assert_eq!(calls.len(), 5);
    for call in calls {
        assert!(
            matches!(
                call,
                Call::Connect {
                    traceparent: None,
                    ..
                }
            ),
            "a malformed traceparent is not passed on: {call:?}"
        );
    }
}

#[tokio::test]
async fn an_offer_without_traceparent_reaches_the_network_without_one() {
    let signal = Signal::start().await;
    signal.join().await;
    assert!(matches!(
        &signal.network.calls()[..],
        [Call::Connect {
            traceparent: None,
            ..
        }]
    ));
}

#[tokio::test]
async fn an_offer_with_content_type_parameters_is_accepted() {
    let signal = Signal::start().await;
    for content_type in ["application/sdp; charset=utf-8", "Application/SDP"] {
        let response = signal
            .api(Method::POST, "/v1/sessions/doc-1/peers")
            .header("content-type", content_type)
            .body(OFFER)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{content_type}");
    }
}

#[tokio::test]
async fn an_offer_of_exactly_64_kib_is_accepted() {
    let signal = Signal::start().await;
    let mut offer = OFFER.to_owned();
    let pad = BODY_LIMIT - offer.len() - "a=x-pad:\r\n".len();
    offer.push_str(&format!("a=x-pad:{}\r\n", "p".repeat(pad)));
    assert_eq!(offer.len(), 64 * 1024);
    let response = signal.post_offer(SESSION, offer).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn an_offer_over_64_kib_is_a_413_problem() {
    let signal = Signal::start().await;
    let mut offer = OFFER.to_owned();
    offer.push_str(&format!("a=x-pad:{}\r\n", "p".repeat(BODY_LIMIT)));
    let detail = problem(
        signal.post_offer(SESSION, offer).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(detail.contains("65536"), "{detail}");
    assert!(signal.network.calls().is_empty());
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_malformed_offer_is_a_400() {
    let signal = Signal::start().await;
    for body in [
        "hello, relay",
        "o=- 1 2 IN IP4 0.0.0.0\r\nv=0\r\n",
        "v=0\r\n\r\nm=application 9 UDP/DTLS/SCTP x\r\n",
    ] {
        let detail = problem(
            signal.post_offer(SESSION, body).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(!detail.is_empty(), "{body}");
    }
    assert!(signal.network.calls().is_empty());
    signal.assert_alive().await;
}

#[tokio::test]
async fn an_empty_offer_is_a_400() {
    let signal = Signal::start().await;
    let detail = problem(
        signal.post_offer(SESSION, "").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(detail.contains("empty"), "{detail}");
    signal.assert_alive().await;
}

#[tokio::test]
async fn an_offer_that_is_not_utf8_is_a_400() {
    let signal = Signal::start().await;
    let detail = problem(
        signal
            .post_offer(SESSION, b"v=0\r\n\xff\xfe\r\n".to_vec())
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(detail.contains("UTF-8"), "{detail}");
    signal.assert_alive().await;
}

#[tokio::test]
async fn an_offer_without_an_sctp_m_line_is_a_400() {
    let signal = Signal::start().await;
    let audio_only = OFFER.replace(
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    );
    let detail = problem(
        signal.post_offer(SESSION, audio_only).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        detail.contains("three data channels need an SCTP application m-line"),
        "{detail}"
    );
    assert!(signal.network.calls().is_empty());
    signal.assert_alive().await;
}

#[tokio::test]
async fn an_offer_with_the_wrong_content_type_is_a_415() {
    let signal = Signal::start().await;
    for content_type in [
        Some("text/plain"),
        Some("application/sdpx"),
        Some("application/json"),
        None,
    ] {
        let mut request = signal
            .api(Method::POST, "/v1/sessions/doc-1/peers")
            .body(OFFER);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let detail = problem(
            request.send().await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await;
        assert!(detail.contains("application/sdp"), "{detail}");
    }
    assert!(signal.network.calls().is_empty());
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_session_id_of_128_characters_is_accepted_and_129_is_a_400() {
    let signal = Signal::start().await;
    let longest = "s".repeat(128);
    assert_eq!(
        signal.post_offer(&longest, OFFER).await.status(),
        StatusCode::CREATED
    );
    let too_long = "s".repeat(129);
    let detail = problem(
        signal.post_offer(&too_long, OFFER).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(detail.contains("session"), "{detail}");
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_session_id_with_bad_characters_is_a_400() {
    let signal = Signal::start().await;
    for session in [
        "a%20b",
        "a%2Fb",
        "caf%C3%A9",
        "a%00",
        "a%FF",
        "a:b",
        "%2E%2E%2F",
    ] {
        let response = signal.post_offer(session, OFFER).await;
        problem(response, StatusCode::BAD_REQUEST).await;
        let response = signal
            .api(Method::GET, &format!("/v1/sessions/{session}/peers"))
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::BAD_REQUEST).await;
    }
    assert!(signal.network.calls().is_empty());
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_percent_encoded_session_id_is_decoded_before_the_check() {
    let signal = Signal::start().await;
    let response = signal.post_offer("doc%2D1", OFFER).await;
    assert_eq!(
        header(&response, "location"),
        "/v1/sessions/doc-1/peers/01010101-0101-0101-0101-010101010101"
    );
}

// ---------------------------------------------------------------- auth

#[tokio::test]
async fn a_request_without_a_token_is_a_401_with_www_authenticate() {
    let signal = Signal::start().await;
    let requests = [
        signal
            .request(Method::POST, "/v1/sessions/doc-1/peers")
            .header("content-type", "application/sdp")
            .body(OFFER),
        signal.request(Method::GET, "/v1/sessions/doc-1/peers"),
        signal.request(Method::DELETE, &peer_path(UNKNOWN_PEER)),
        signal
            .request(Method::PATCH, &peer_path(UNKNOWN_PEER))
            .header("content-type", "application/trickle-ice-sdpfrag")
            .header("if-match", "\"x\"")
            .body("a=end-of-candidates\r\n"),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        assert_eq!(header(&response, "www-authenticate"), "Bearer");
        problem(response, StatusCode::UNAUTHORIZED).await;
    }
    assert!(signal.network.calls().is_empty());
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_wrong_or_malformed_token_is_a_401() {
    let signal = Signal::start().await;
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    for authorization in [wrong.as_str(), basic.as_str(), "Bearer", "Bearer ", TOKEN] {
        let response = signal
            .request(Method::GET, "/v1/sessions/doc-1/peers")
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(
            header(&response, "www-authenticate"),
            "Bearer error=\"invalid_token\""
        );
        problem(response, StatusCode::UNAUTHORIZED).await;
    }
    assert!(signal.network.calls().is_empty());
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_failed_token_check_counts_as_a_failed_offer() {
    let signal = Signal::start().await;
    let response = signal
        .request(Method::POST, "/v1/sessions/doc-1/peers")
        .header("content-type", "application/sdp")
        .body(OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let metrics = signal.metrics().await;
    assert!(
        metrics.contains("signal_offers_failed_total{reason=\"unauthorized\"} 1"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------- trickle

#[tokio::test]
async fn trickled_candidates_reach_the_network_and_answer_204() {
    let signal = Signal::start().await;
    let (location, etag) = signal.join().await;
    let frag = "a=ice-ufrag:offr\r\na=ice-pwd:offerpasswordoffer123456\r\na=mid:0\r\n\
        a=candidate:1 1 UDP 2130706431 192.0.2.1 50000 typ host\r\n\
        a=candidate:2 1 UDP 1694498815 198.51.100.7 50001 typ srflx raddr 192.0.2.1 rport 50000\r\n\
        a=end-of-candidates\r\n";
    let response = signal.patch(&location, Some(&etag), frag).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    assert_eq!(
        signal.network.calls()[1],
        Call::Trickle {
            session: SESSION.to_owned(),
            peer: Id([1; 16]),
            identity: DEV_SUBJECT.to_owned(),
            if_match: Some("ufrag1".to_owned()),
            candidates: vec![
                "a=candidate:1 1 UDP 2130706431 192.0.2.1 50000 typ host".to_owned(),
                "a=candidate:2 1 UDP 1694498815 198.51.100.7 50001 typ srflx raddr 192.0.2.1 rport 50000".to_owned(),
            ],
        }
    );
}

#[tokio::test]
async fn a_patch_without_if_match_is_a_428() {
    let signal = Signal::start().await;
    let (location, _) = signal.join().await;
    let detail = problem(
        signal
            .patch(&location, None, "a=end-of-candidates\r\n")
            .await,
        StatusCode::PRECONDITION_REQUIRED,
    )
    .await;
    assert!(detail.contains("If-Match"), "{detail}");
    assert_eq!(signal.network.calls().len(), 1);
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_patch_with_a_stale_etag_is_a_412() {
    let signal = Signal::start().await;
    let (location, _) = signal.join().await;
    problem(
        signal
            .patch(&location, Some("\"ufrag-old\""), "a=end-of-candidates\r\n")
            .await,
        StatusCode::PRECONDITION_FAILED,
    )
    .await;
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_patch_with_a_malformed_if_match_is_a_400() {
    let signal = Signal::start().await;
    let (location, _) = signal.join().await;
    for if_match in ["ufrag1", "W/\"ufrag1\"", "\"a\", \"b\""] {
        problem(
            signal
                .patch(&location, Some(if_match), "a=end-of-candidates\r\n")
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    assert_eq!(signal.network.calls().len(), 1);
    signal.assert_alive().await;
}

#[tokio::test]
async fn an_ice_restart_the_network_does_not_support_is_a_501() {
    let signal = Signal::start().await;
    let (location, _) = signal.join().await;
    let frag = "a=ice-ufrag:new1\r\na=ice-pwd:newpasswordnewpassword12\r\n";
    for star in ["*", "\"*\""] {
        problem(
            signal.patch(&location, Some(star), frag).await,
            StatusCode::NOT_IMPLEMENTED,
        )
        .await;
    }
    // Asked as a restart with the new credentials, never as a trickle.
    let expected = IceRestartRequest {
        ufrag: "new1".into(),
        pwd: "newpasswordnewpassword12".into(),
        candidates: vec![],
    };
    assert!(
        matches!(&signal.network.calls()[1], Call::RestartIce { restart, .. } if *restart == expected)
    );
    signal.assert_alive().await;
}

#[tokio::test]
async fn an_ice_restart_answers_200_with_the_relays_sdpfrag_and_a_new_etag() {
    let signal = Signal::start().await;
    signal.network.state().restarts = true;
    let (location, _) = signal.join().await;
    let frag = "a=ice-ufrag:new1\r\na=ice-pwd:newpasswordnewpassword12\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:dc\r\n\
        a=candidate:7 1 udp 2130706431 127.0.0.2 5000 typ host\r\n";
    let response = signal.patch(&location, Some("*"), frag).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "etag"), "\"restarted\"");
    assert_eq!(
        header(&response, "content-type"),
        "application/trickle-ice-sdpfrag"
    );
    assert_eq!(
        response.text().await.unwrap(),
        "a=ice-ufrag:restarted\r\na=ice-pwd:restartedpasswordrestarted\r\n\
         m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:dc\r\n\
         a=candidate:1 1 udp 2130706431 192.0.2.9 4000 typ host\r\n"
    );
    assert!(matches!(
        &signal.network.calls()[1],
        Call::RestartIce { restart, identity, .. }
            if restart.candidates == ["a=candidate:7 1 udp 2130706431 127.0.0.2 5000 typ host"]
                && identity == DEV_SUBJECT
    ));
}

#[tokio::test]
async fn an_ice_restart_without_new_credentials_is_a_400_and_reaches_no_relay() {
    let signal = Signal::start().await;
    signal.network.state().restarts = true;
    let (location, _) = signal.join().await;
    for frag in [
        "a=candidate:7 1 udp 2130706431 127.0.0.2 5000 typ host\r\n",
        "a=ice-ufrag:new1\r\n",
        "a=ice-ufrag:new1\r\na=ice-pwd:short\r\n",
        "a=ice-ufrag:n w1\r\na=ice-pwd:newpasswordnewpassword12\r\n",
    ] {
        let detail = problem(
            signal.patch(&location, Some("*"), frag).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(detail.contains("ice-ufrag"), "{frag}: {detail}");
    }
    assert_eq!(signal.network.calls().len(), 1);
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_patch_with_the_wrong_content_type_is_a_415() {
    let signal = Signal::start().await;
    let (location, etag) = signal.join().await;
    let response = signal
        .api(Method::PATCH, &location)
        .header("content-type", "application/sdp")
        .header("if-match", etag)
        .body("a=end-of-candidates\r\n")
        .send()
        .await
        .unwrap();
    let detail = problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert!(
        detail.contains("application/trickle-ice-sdpfrag"),
        "{detail}"
    );
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_patch_that_is_not_an_sdpfrag_or_is_too_big_is_refused() {
    let signal = Signal::start().await;
    let (location, etag) = signal.join().await;
    problem(
        signal
            .patch(&location, Some(&etag), "candidate 1 2 3")
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        signal.patch(&location, Some(&etag), "").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let huge = format!("a=candidate:{}\r\n", "1".repeat(BODY_LIMIT));
    problem(
        signal.patch(&location, Some(&etag), &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(signal.network.calls().len(), 1);
    signal.assert_alive().await;
}

// ---------------------------------------------------------------- peers

#[tokio::test]
async fn a_bad_peer_id_is_a_400() {
    let signal = Signal::start().await;
    for peer in [
        "42",
        "not-a-uuid",
        "01010101-0101-0101-0101-01010101010g",
        "01010101010101010101010101010101",
    ] {
        let response = signal
            .api(Method::DELETE, &peer_path(peer))
            .send()
            .await
            .unwrap();
        let detail = problem(response, StatusCode::BAD_REQUEST).await;
        assert!(detail.contains("peer id"), "{detail}");
        problem(
            signal
                .patch(&peer_path(peer), Some("\"x\""), "a=end-of-candidates\r\n")
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    assert!(signal.network.calls().is_empty());
    signal.assert_alive().await;
}

#[tokio::test]
async fn patch_and_delete_of_an_unknown_peer_are_404() {
    let signal = Signal::start().await;
    signal.join().await;
    problem(
        signal
            .patch(
                &peer_path(UNKNOWN_PEER),
                Some("\"ufrag1\""),
                "a=end-of-candidates\r\n",
            )
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let response = signal
        .api(Method::DELETE, &peer_path(UNKNOWN_PEER))
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::NOT_FOUND).await;
    signal.assert_alive().await;
}

#[tokio::test]
async fn deleting_a_peer_answers_204_and_a_second_delete_is_a_404() {
    let signal = Signal::start().await;
    let (location, _) = signal.join().await;
    let response = signal.api(Method::DELETE, &location).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.bytes().await.unwrap().len(), 0);
    let response = signal.api(Method::DELETE, &location).send().await.unwrap();
    problem(response, StatusCode::NOT_FOUND).await;
    assert_eq!(
        signal.network.calls()[1],
        Call::Disconnect {
            session: SESSION.to_owned(),
            peer: Id([1; 16]),
            identity: DEV_SUBJECT.to_owned(),
        }
    );
}

#[tokio::test]
async fn the_peer_list_is_json_with_uuid_ids_state_and_rfc3339_join_times() {
    let signal = Signal::start().await;
    signal.join().await;
    signal.join().await;
    let response = signal
        .api(Method::GET, "/v1/sessions/doc-1/peers")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), "application/json");
    let peers = json(response).await;
    assert_eq!(
        peers,
        serde_json::json!([
            {
                "peer_id": "01010101-0101-0101-0101-010101010101",
                "relay_id": "eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee",
                "state": "connecting",
                "joined_at": "2023-11-14T22:13:20.001Z",
            },
            {
                "peer_id": "02020202-0202-0202-0202-020202020202",
                "relay_id": "eeeeeeee-eeee-eeee-eeee-eeeeeeeeeeee",
                "state": "connecting",
                "joined_at": "2023-11-14T22:13:20.002Z",
            },
        ])
    );
    let response = signal
        .api(Method::GET, "/v1/sessions/other/peers")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "[]");
}

// ---------------------------------------------------------------- network failures

#[tokio::test]
async fn no_relay_capacity_is_a_503_with_retry_after_rounded_up() {
    let signal = Signal::start().await;
    signal.network.fail_with(NetworkError::NoCapacity {
        reason: "every relay is full".to_owned(),
        retry_after: Duration::from_millis(2500),
    });
    let response = signal.post_offer(SESSION, OFFER).await;
    assert_eq!(header(&response, "retry-after"), "3");
    problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    signal.assert_alive().await;
}

#[tokio::test]
async fn an_unavailable_network_is_a_503_with_the_configured_retry_after() {
    let signal = Signal::start().await;
    signal
        .network
        .fail_with(NetworkError::Unavailable("registry unreachable".to_owned()));
    let response = signal.post_offer(SESSION, OFFER).await;
    assert_eq!(header(&response, "retry-after"), "7");
    let detail = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(detail.contains("registry unreachable"), "{detail}");
    signal.assert_alive().await;
}

#[tokio::test]
async fn each_network_error_has_its_status() {
    let cases = [
        (
            NetworkError::BadOffer("no fingerprint".to_owned()),
            StatusCode::BAD_REQUEST,
        ),
        (NetworkError::UnknownPeer, StatusCode::NOT_FOUND),
        (NetworkError::EtagMismatch, StatusCode::PRECONDITION_FAILED),
        (
            NetworkError::Unsupported("that"),
            StatusCode::NOT_IMPLEMENTED,
        ),
        (
            NetworkError::Timeout("the relay"),
            StatusCode::GATEWAY_TIMEOUT,
        ),
    ];
    let signal = Signal::start().await;
    for (error, status) in cases {
        signal.network.fail_with(error.clone());
        let response = signal.post_offer(SESSION, OFFER).await;
        assert!(response.headers().get("retry-after").is_none(), "{error:?}");
        let detail = problem(response, status).await;
        assert_eq!(detail, error.to_string());
        let response = signal
            .api(Method::GET, "/v1/sessions/doc-1/peers")
            .send()
            .await
            .unwrap();
        problem(response, status).await;
    }
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_ufrag_that_cannot_be_an_etag_is_a_500_not_a_crash() {
    let signal = Signal::start().await;
    signal.network.state().ufrag = Some("bad\"ufrag".to_owned());
    problem(
        signal.post_offer(SESSION, OFFER).await,
        StatusCode::INTERNAL_SERVER_ERROR,
    )
    .await;
    signal.assert_alive().await;
}

// ---------------------------------------------------------------- CORS, ops, routing

#[tokio::test]
async fn preflight_options_answer_204_with_cors_and_accept_post() {
    let signal = Signal::start().await;
    for (path, methods) in [
        ("/v1/sessions/doc-1/peers", "GET, POST, OPTIONS"),
        (
            "/v1/sessions/doc-1/peers/01010101-0101-0101-0101-010101010101",
            "PATCH, DELETE, OPTIONS",
        ),
    ] {
        let response = signal
            .request(Method::OPTIONS, path)
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{path}");
        assert_eq!(header(&response, "access-control-allow-origin"), "*");
        assert_eq!(header(&response, "access-control-allow-methods"), methods);
        assert_eq!(
            header(&response, "access-control-allow-headers"),
            "Authorization, Content-Type, If-Match, traceparent, tracestate"
        );
        assert_eq!(
            header(&response, "access-control-expose-headers"),
            "Location, ETag, Retry-After, Accept-Post, Link"
        );
        assert_eq!(header(&response, "accept-post"), "application/sdp");
    }
    assert!(signal.network.calls().is_empty());
}

#[tokio::test]
async fn healthz_is_200_and_readyz_follows_the_network() {
    let signal = Signal::start().await;
    let response = signal.request(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    signal.network.state().not_ready = Some("no relay registered".to_owned());
    let response = signal.request(Method::GET, "/readyz").send().await.unwrap();
    let detail = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(detail.contains("no relay registered"), "{detail}");
    signal.assert_alive().await;

    signal.network.state().not_ready = None;
    let response = signal.request(Method::GET, "/readyz").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_home_page_is_the_configured_html() {
    let signal = Signal::start().await;
    let response = signal.request(Method::GET, "/").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type"),
        "text/html; charset=utf-8"
    );
    assert_eq!(
        response.text().await.unwrap(),
        "<!doctype html><title>test home</title>"
    );
}

/// A web bundle in a fresh directory: `index.html` with the token
/// placeholder, `pkg/app.js`, and a secret beside `pkg/` that must never
/// be served.
fn web_bundle(with_index: bool) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "deltamesh-web-test-{}-{}",
        std::process::id(),
        UNIX_EPOCH.elapsed().unwrap().as_nanos()
    ));
    std::fs::create_dir_all(dir.join("pkg")).unwrap();
    if with_index {
        std::fs::write(
            dir.join("index.html"),
            r#"<meta name="deltamesh-dev-token" content="__DELTAMESH_DEV_TOKEN__">"#,
        )
        .unwrap();
    }
    std::fs::write(dir.join("pkg/app.js"), "export {};").unwrap();
    std::fs::write(dir.join("secret.txt"), "do-not-serve").unwrap();
    dir
}

/// Sends `path` as written (no URL normalisation) and returns the response.
async fn raw_get(signal: &Signal, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = signal.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn the_web_bundle_is_served_with_the_dev_token_and_nothing_outside_pkg() {
    let dir = web_bundle(true);
    let mut config = SignalConfig::new(r#"tok"en"#);
    config.web_dir = Some(dir.clone());
    let signal = Signal::start_with(config).await;
    let page = signal.request(Method::GET, "/").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(
        page.text().await.unwrap(),
        r#"<meta name="deltamesh-dev-token" content="tok&quot;en">"#
    );
    let script = signal
        .request(Method::GET, "/pkg/app.js")
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert_eq!(header(&script, "content-type"), "text/javascript");
    let missing = signal
        .request(Method::GET, "/pkg/nope.js")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // A name too long for the file system (found by the fuzzer: it was a 500).
    let too_long = format!("/pkg/{}", "a".repeat(256));
    let response = signal.request(Method::GET, &too_long).send().await.unwrap();
    problem(response, StatusCode::NOT_FOUND).await;
    for path in [
        "/pkg/../secret.txt",
        "/pkg/..%2fsecret.txt",
        "/pkg/%2e%2e/secret.txt",
        "/pkg//etc/passwd",
    ] {
        let response = raw_get(&signal, path).await;
        assert!(!response.starts_with("HTTP/1.1 200"), "{path}: {response}");
        assert!(!response.contains("do-not-serve"), "{path}: {response}");
        assert!(!response.contains("root:"), "{path}: {response}");
    }
    signal.assert_alive().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn without_a_built_page_the_home_page_is_served() {
    let dir = web_bundle(false);
    let mut config = SignalConfig::new(TOKEN);
    config.home_page = "<!doctype html><title>test home</title>".to_owned();
    config.web_dir = Some(dir.clone());
    let signal = Signal::start_with(config).await;
    let response = signal.request(Method::GET, "/").send().await.unwrap();
    assert_eq!(
        response.text().await.unwrap(),
        "<!doctype html><title>test home</title>"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn unknown_routes_are_a_404_problem() {
    let signal = Signal::start().await;
    for path in [
        "/nope",
        "/v1/sessions",
        "/v1/sessions/doc-1/peers/x/y",
        "/v2/sessions/doc-1/peers",
    ] {
        let detail = problem(
            signal.api(Method::GET, path).send().await.unwrap(),
            StatusCode::NOT_FOUND,
        )
        .await;
        assert!(detail.contains(path), "{detail}");
    }
    signal.assert_alive().await;
}

#[tokio::test]
async fn a_wrong_method_is_a_405_problem_with_allow() {
    let signal = Signal::start().await;
    let response = signal
        .api(Method::PUT, "/v1/sessions/doc-1/peers")
        .send()
        .await
        .unwrap();
    let allow = header(&response, "allow");
    for method in ["GET", "POST", "OPTIONS"] {
        assert!(allow.contains(method), "{allow}");
    }
    problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    let response = signal
        .api(Method::POST, &peer_path(UNKNOWN_PEER))
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    let response = signal
        .request(Method::POST, "/healthz")
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    signal.assert_alive().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_requests_and_offers() {
    let signal = Signal::start().await;
    signal.join().await;
    signal.post_offer(SESSION, "garbage").await;
    signal
        .request(Method::GET, "/healthz")
        .send()
        .await
        .unwrap();

    let response = signal
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type"),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let samples = parse_exposition(&text);
    let value = |name: &str, labels: &str| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| *v)
    };
    assert_eq!(
        value("signal_offers_accepted_total", ""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value("signal_offers_failed_total", "reason=\"bad-sdp\""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "signal_http_requests_total",
            "method=\"POST\",route=\"/v1/sessions/{session}/peers\",status=\"201\""
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "signal_http_requests_total",
            "method=\"GET\",route=\"/healthz\",status=\"200\""
        ),
        Some(1.0),
        "{text}"
    );

    signal
        .request(Method::GET, "/no/such/thing")
        .send()
        .await
        .unwrap();
    let text = signal.metrics().await;
    assert!(
        text.contains("route=\"unmatched\",status=\"404\"} 1"),
        "{text}"
    );
}

/// The samples of an OpenMetrics / Prometheus text exposition as
/// `(name, labels, value)`; panics on any line that is neither a comment nor a
/// sample.
fn parse_exposition(text: &str) -> Vec<(String, String, f64)> {
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with("# HELP ")
            || line.starts_with("# TYPE ")
            || line.starts_with("# UNIT ")
            || line == "# EOF"
        {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a value: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("labels: {line:?}")),
            ),
            None => (series, ""),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name: {line:?}"
        );
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    samples
}

#[tokio::test]
async fn the_server_stops_when_shutdown_resolves() {
    let mut signal = Signal::start().await;
    signal.assert_alive().await;
    let _ = signal.stop.take().unwrap().send(());
    let stopped = tokio::time::timeout(Duration::from_secs(10), &mut signal.server).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
}

#[tokio::test]
async fn an_empty_dev_token_lets_no_one_in() {
    let signal = Signal::start_with(SignalConfig::new("")).await;
    let response = signal
        .request(Method::GET, "/v1/sessions/doc-1/peers")
        .header("authorization", "Bearer anything")
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::UNAUTHORIZED).await;
}

// ---------------------------------------------------------------- signed tokens and rate limits

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A signal service accepting HS256 tokens of key `k1` (and the dev token).
async fn signal_with_keys(tweak: impl FnOnce(&mut SignalConfig)) -> Signal {
    let mut verifier = TokenVerifier::default();
    verifier.add_hs256("k1", SECRET).unwrap();
    let mut config = SignalConfig::new(TOKEN);
    config.tokens = Arc::new(verifier);
    tweak(&mut config);
    Signal::start_with(config).await
}

fn signed(subject: &str, session: &str, grants: Grants, exp: u64) -> String {
    TokenSigner::hs256("k1", SECRET).unwrap().sign(&Claims {
        iss: None,
        sub: subject.to_owned(),
        session: session.to_owned(),
        grants: grants.into(),
        exp,
        nbf: None,
        iat: None,
    })
}

fn in_an_hour() -> u64 {
    unix_now() + 3600
}

#[tokio::test]
async fn a_signed_token_opens_its_session_with_its_identity_and_grants() {
    let signal = signal_with_keys(|_| {}).await;
    let grants = Grants {
        publish: false,
        subscribe: true,
        signal: false,
    };
    let token = signed("alice", SESSION, grants, in_an_hour());
    let response = signal
        .request(Method::POST, &format!("/v1/sessions/{SESSION}/peers"))
        .bearer_auth(&token)
        .header("content-type", "application/sdp")
        .body(OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(matches!(
        &signal.network.calls()[..],
        [Call::Connect { identity, grants: g, .. }] if identity == "alice" && *g == grants
    ));
    let list = signal
        .request(Method::GET, &format!("/v1/sessions/{SESSION}/peers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_token_for_another_session_is_a_403_on_every_route() {
    let signal = signal_with_keys(|_| {}).await;
    let (location, etag) = signal.join().await;
    let token = signed("alice", "another-session", Grants::ALL, in_an_hour());
    let requests = [
        signal
            .request(Method::POST, &format!("/v1/sessions/{SESSION}/peers"))
            .header("content-type", "application/sdp")
            .body(OFFER),
        signal.request(Method::GET, &format!("/v1/sessions/{SESSION}/peers")),
        signal.request(Method::DELETE, &location),
        signal
            .request(Method::PATCH, &location)
            .header("content-type", "application/trickle-ice-sdpfrag")
            .header("if-match", etag.as_str())
            .body("a=end-of-candidates\r\n"),
    ];
    for request in requests {
        let response = request.bearer_auth(&token).send().await.unwrap();
        let detail = problem(response, StatusCode::FORBIDDEN).await;
        assert!(detail.contains("another session"), "{detail}");
    }
    assert_eq!(
        signal.network.calls().len(),
        1,
        "only the dev join got through"
    );
}

#[tokio::test]
async fn an_expired_token_is_a_401_that_says_so() {
    let signal = signal_with_keys(|_| {}).await;
    let token = signed("alice", SESSION, Grants::ALL, unix_now() - 3600);
    let response = signal
        .request(Method::GET, &format!("/v1/sessions/{SESSION}/peers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "www-authenticate"),
        "Bearer error=\"invalid_token\""
    );
    let detail = problem(response, StatusCode::UNAUTHORIZED).await;
    assert!(detail.contains("expired"), "{detail}");
    assert!(signal.network.calls().is_empty());
}

#[tokio::test]
async fn only_the_identity_that_made_a_peer_may_trickle_to_or_delete_it() {
    let signal = signal_with_keys(|_| {}).await;
    let alice = signed("alice", SESSION, Grants::ALL, in_an_hour());
    let mallory = signed("mallory", SESSION, Grants::ALL, in_an_hour());
    let response = signal
        .request(Method::POST, &format!("/v1/sessions/{SESSION}/peers"))
        .bearer_auth(&alice)
        .header("content-type", "application/sdp")
        .body(OFFER)
        .send()
        .await
        .unwrap();
    let location = header(&response, "location");
    let etag = header(&response, "etag");
    let patch = |token: &str| {
        signal
            .request(Method::PATCH, &location)
            .bearer_auth(token)
            .header("content-type", "application/trickle-ice-sdpfrag")
            .header("if-match", etag.as_str())
            .body("a=end-of-candidates\r\n")
            .send()
    };
    problem(patch(&mallory).await.unwrap(), StatusCode::FORBIDDEN).await;
    let delete = |token: &str| {
        signal
            .request(Method::DELETE, &location)
            .bearer_auth(token)
            .send()
    };
    problem(delete(&mallory).await.unwrap(), StatusCode::FORBIDDEN).await;
    assert_eq!(
        patch(&alice).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        delete(&alice).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn the_per_address_limit_trips_exactly_at_its_burst_with_retry_after() {
    let signal = signal_with_keys(|config| {
        config.address_rate = RateLimit {
            per_second: 1,
            burst: 5,
        };
    })
    .await;
    let list = || {
        signal
            .api(Method::GET, &format!("/v1/sessions/{SESSION}/peers"))
            .send()
    };
    for n in 1..=5 {
        assert_eq!(
            list().await.unwrap().status(),
            StatusCode::OK,
            "request {n}"
        );
    }
    let refused = list().await.unwrap();
    assert_eq!(header(&refused, "retry-after"), "1");
    let detail = problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(detail.contains("client address"), "{detail}");
    // Requests without a token count too: a flood of bad tokens is limited.
    let anonymous = signal
        .request(Method::GET, &format!("/v1/sessions/{SESSION}/peers"))
        .send()
        .await
        .unwrap();
    problem(anonymous, StatusCode::TOO_MANY_REQUESTS).await;
    // Health and metrics are not limited.
    signal.assert_alive().await;
    let metrics = signal.metrics().await;
    assert!(
        metrics.contains("signal_rate_limited_total{limit=\"client address\"} 2"),
        "{metrics}"
    );
    assert_eq!(signal.network.calls().len(), 5);
}

#[tokio::test]
async fn the_per_token_limit_counts_each_token_on_its_own() {
    let signal = signal_with_keys(|config| {
        config.token_rate = RateLimit {
            per_second: 1,
            burst: 3,
        };
    })
    .await;
    let alice = signed("alice", SESSION, Grants::ALL, in_an_hour());
    let bob = signed("bob", SESSION, Grants::ALL, in_an_hour());
    let list = |token: &str| {
        signal
            .request(Method::GET, &format!("/v1/sessions/{SESSION}/peers"))
            .bearer_auth(token)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(list(&alice).await.unwrap().status(), StatusCode::OK);
    }
    let detail = problem(list(&alice).await.unwrap(), StatusCode::TOO_MANY_REQUESTS).await;
    assert!(detail.contains("token"), "{detail}");
    assert_eq!(list(&bob).await.unwrap().status(), StatusCode::OK);
}

// ---------------------------------------------------------------- slow bodies

/// Sends a request whose body is written slowly, well after the headers,
/// as a client on a slow link does; returns the status it got. A server
/// that answers before reading the body and closes makes the kernel reset
/// the connection, and then the client sees no status at all.
async fn slow_post(base: &str, path: &str, headers: &str, body: &[u8]) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n{headers}content-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for part in body.chunks(body.len().div_ceil(4).max(1)) {
        stream.write_all(part).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {answer:?}")))?;
    Ok(status)
}

#[tokio::test]
async fn every_early_error_reaches_a_client_still_writing_its_body() {
    let signal = Signal::start().await;
    let auth = format!("authorization: Bearer {TOKEN}\r\n");
    let sdp = "content-type: application/sdp\r\n";
    let peers = format!("/v1/sessions/{SESSION}/peers");
    let oversize = vec![b'a'; BODY_LIMIT + 40 * 1024];
    let text = format!("{auth}content-type: text/plain\r\n");
    let cases: [(&str, &str, String, &[u8], u16); 4] = [
        (
            "bad id",
            "/v1/sessions/bad!id/peers",
            format!("{auth}{sdp}"),
            OFFER.as_bytes(),
            400,
        ),
        ("no token", &peers, sdp.to_owned(), OFFER.as_bytes(), 401),
        ("content type", &peers, text, OFFER.as_bytes(), 415),
        ("oversize", &peers, format!("{auth}{sdp}"), &oversize, 413),
    ];
    for (name, path, headers, body, status) in cases {
        let got = slow_post(&signal.base, path, &headers, body).await;
        assert_eq!(got.ok(), Some(status), "{name}");
    }
    assert!(signal.network.calls().is_empty(), "none of them went on");
}

#[tokio::test]
async fn a_rate_limited_client_still_writing_its_body_sees_its_429() {
    let mut config = SignalConfig::new(TOKEN);
    config.address_rate = RateLimit {
        per_second: 1,
        burst: 1,
    };
    let signal = Signal::start_with(config).await;
    // The one request of the burst, then (well within a second) another.
    assert_eq!(
        signal.post_offer(SESSION, OFFER).await.status(),
        StatusCode::CREATED
    );
    let headers = format!("authorization: Bearer {TOKEN}\r\ncontent-type: application/sdp\r\n");
    let path = format!("/v1/sessions/{SESSION}/peers");
    let got = slow_post(&signal.base, &path, &headers, OFFER.as_bytes()).await;
    assert_eq!(got.ok(), Some(429));
}

// ---------------------------------------------------------------- ICE servers (§10)

const TURN_SECRET: &[u8] = b"turn-shared-secret";

/// A signal service with a STUN and two TURN servers, and signed tokens.
async fn signal_with_ice_servers() -> Signal {
    signal_with_keys(|config| {
        config.ice_servers = deltamesh_signal::IceServers::new(
            vec!["stun:stun.example.net:3478".into()],
            vec![
                "turn:turn.example.net:3478?transport=udp".into(),
                "turn:turn.example.net:3478?transport=tcp".into(),
            ],
            Some(TURN_SECRET),
            Duration::from_secs(600),
        )
        .unwrap();
    })
    .await
}

fn links(response: &Response) -> Vec<String> {
    response
        .headers()
        .get_all("link")
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect()
}

/// The TURN REST credential for `username`, computed here on its own.
fn turn_password(username: &str) -> String {
    use aws_lc_rs::hmac;
    use base64::Engine;
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, TURN_SECRET);
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, username.as_bytes()))
}

/// The `username` of a TURN `link`, split into expiry and identity.
fn turn_username(link: &str) -> (u64, String) {
    let start = link.find("username=\"").expect("a username") + "username=\"".len();
    let username = &link[start..start + link[start..].find('"').unwrap()];
    let (expiry, identity) = username.split_once(':').unwrap();
    (expiry.parse().unwrap(), identity.to_owned())
}

fn assert_turn_links(links: &[String], identity: &str, latest_expiry: u64) {
    assert_eq!(links.len(), 3, "{links:?}");
    assert_eq!(links[0], "<stun:stun.example.net:3478>; rel=\"ice-server\"");
    for (link, transport) in links[1..].iter().zip(["udp", "tcp"]) {
        let (expiry, who) = turn_username(link);
        assert_eq!(who, identity, "{link}");
        assert!(
            expiry <= latest_expiry && expiry + 60 > latest_expiry,
            "{link}"
        );
        let username = format!("{expiry}:{identity}");
        assert_eq!(
            *link,
            format!(
                "<turn:turn.example.net:3478?transport={transport}>; rel=\"ice-server\"; \
                 username=\"{username}\"; credential=\"{}\"; credential-type=\"password\"",
                turn_password(&username)
            )
        );
    }
}

#[tokio::test]
async fn the_201_and_an_authenticated_options_list_the_same_ice_servers() {
    let signal = signal_with_ice_servers().await;
    // The token expires before the lifetime ends: the credential with it.
    let token_expiry = unix_now() + 120;
    let token = signed("alice", SESSION, Grants::ALL, token_expiry);
    let created = signal
        .request(Method::POST, &format!("/v1/sessions/{SESSION}/peers"))
        .bearer_auth(&token)
        .header("content-type", "application/sdp")
        .body(OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_turn_links(&links(&created), "alice", token_expiry);
    assert!(header(&created, "access-control-expose-headers").contains("Link"));

    let options = signal
        .request(Method::OPTIONS, &format!("/v1/sessions/{SESSION}/peers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), StatusCode::NO_CONTENT);
    assert_eq!(links(&options), links(&created));
    assert_eq!(header(&options, "accept-post"), "application/sdp");
}

#[tokio::test]
async fn the_development_token_gets_credentials_for_dev_within_the_lifetime() {
    let signal = signal_with_ice_servers().await;
    let response = signal
        .api(Method::OPTIONS, &format!("/v1/sessions/{SESSION}/peers"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_turn_links(&links(&response), DEV_SUBJECT, unix_now() + 600);
}

#[tokio::test]
async fn a_preflight_lists_stun_but_never_turn_credentials() {
    let signal = signal_with_ice_servers().await;
    let response = signal
        .request(Method::OPTIONS, &format!("/v1/sessions/{SESSION}/peers"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "OPTIONS")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        links(&response),
        ["<stun:stun.example.net:3478>; rel=\"ice-server\""]
    );
    assert!(signal.network.calls().is_empty());
}

#[tokio::test]
async fn an_options_with_a_bad_token_is_refused_and_hands_out_nothing() {
    let signal = signal_with_ice_servers().await;
    let path = format!("/v1/sessions/{SESSION}/peers");
    let forged = signal
        .request(Method::OPTIONS, &path)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert!(links(&forged).is_empty());
    problem(forged, StatusCode::UNAUTHORIZED).await;
    let other = signed("alice", "another-session", Grants::ALL, in_an_hour());
    let elsewhere = signal
        .request(Method::OPTIONS, &path)
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert!(links(&elsewhere).is_empty());
    problem(elsewhere, StatusCode::FORBIDDEN).await;
}

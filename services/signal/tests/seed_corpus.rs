//! The signal fuzzer's seed corpus
//! (`services/signal/fuzz/corpus/signal_request/seed-*`, which `scripts/fuzz`
//! starts from): HTTP/1.1 requests for every route and the common refusals,
//! each checked here against a real signal server for the status it is meant
//! to get.
//!
//! Regenerate after an API change with
//! `UPDATE_SEEDS=1 cargo test -p deltamesh-signal --test seed_corpus`.

use std::fs;
use std::path::PathBuf;

use deltamesh_proto::Grants;
use deltamesh_signal::serve;
use deltamesh_signal::token::{Claims, TokenSigner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "../fuzz/fuzzed_signal.rs"]
mod fuzzed_signal;

const SESSION: &str = "/v1/sessions/doc-1/peers";
const PEER: &str = "/v1/sessions/doc-1/peers/01010101-0101-0101-0101-010101010101";

const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
    a=ice-ufrag:offr\r\na=ice-pwd:offerpasswordoffer123456\r\na=setup:actpass\r\n\
    a=mid:0\r\na=sctp-port:5000\r\n";

const SDPFRAG: &str = "a=ice-ufrag:offr\r\na=ice-pwd:offerpasswordoffer123456\r\n\
    m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n\
    a=candidate:1 1 UDP 2130706431 10.0.0.1 5000 typ host\r\na=end-of-candidates\r\n";

const BEARER: (&str, &str) = ("Authorization", "Bearer dev-token");
const SDP: (&str, &str) = ("Content-Type", "application/sdp");
const TRICKLE: (&str, &str) = ("Content-Type", "application/trickle-ice-sdpfrag");
const TRACEPARENT: (&str, &str) = (
    "traceparent",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
);

/// One seed: its file name, the status signal answers it with, and its bytes.
struct Seed {
    name: &'static str,
    status: u16,
    bytes: Vec<u8>,
}

/// A seed of `method target` with `headers` and `body`, in HTTP/1.1 framing.
fn seed(
    name: &'static str,
    status: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Seed {
    let mut text = format!("{method} {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    Seed {
        name,
        status,
        bytes: text.into_bytes(),
    }
}

/// `Bearer <token>` for a signed token of the fuzz key opening `session`
/// until 2100 (HS256 is deterministic, so the seed is stable).
fn signed_bearer(session: &str) -> String {
    let signer = TokenSigner::hs256(fuzzed_signal::KEY_ID, fuzzed_signal::SECRET).unwrap();
    let token = signer.sign(&Claims {
        iss: None,
        sub: "fuzzer".to_owned(),
        session: session.to_owned(),
        grants: Grants::ALL.into(),
        exp: 4_102_444_800,
        nbf: None,
        iat: None,
    });
    format!("Bearer {token}")
}

fn seeds() -> Vec<Seed> {
    let signed = signed_bearer("doc-1");
    let other_session = signed_bearer("doc-2");
    vec![
        seed(
            "seed-offer-signed-token",
            201,
            "POST",
            SESSION,
            &[("Authorization", &signed), SDP],
            OFFER,
        ),
        seed(
            "seed-list-token-of-another-session",
            403,
            "GET",
            SESSION,
            &[("Authorization", &other_session)],
            "",
        ),
        seed(
            "seed-offer",
            201,
            "POST",
            SESSION,
            &[BEARER, SDP, TRACEPARENT],
            OFFER,
        ),
        seed("seed-offer-no-token", 401, "POST", SESSION, &[SDP], OFFER),
        seed(
            "seed-offer-not-sdp",
            400,
            "POST",
            SESSION,
            &[BEARER, ("Content-Type", "application/sdp; charset=utf-8")],
            "hello",
        ),
        seed(
            "seed-offer-wrong-type",
            415,
            "POST",
            SESSION,
            &[BEARER, ("Content-Type", "text/plain")],
            OFFER,
        ),
        seed(
            "seed-offer-bad-session",
            400,
            "POST",
            "/v1/sessions/a%2Fb/peers",
            &[BEARER, SDP],
            OFFER,
        ),
        seed("seed-list", 200, "GET", SESSION, &[BEARER], ""),
        seed(
            "seed-trickle",
            204,
            "PATCH",
            PEER,
            &[BEARER, TRICKLE, ("If-Match", "\"fuzz\"")],
            SDPFRAG,
        ),
        seed(
            "seed-ice-restart",
            200,
            "PATCH",
            PEER,
            &[BEARER, TRICKLE, ("If-Match", "*")],
            SDPFRAG,
        ),
        seed(
            "seed-trickle-no-if-match",
            428,
            "PATCH",
            PEER,
            &[BEARER, TRICKLE],
            SDPFRAG,
        ),
        seed("seed-delete", 204, "DELETE", PEER, &[BEARER], ""),
        seed(
            "seed-delete-bad-peer",
            400,
            "DELETE",
            "/v1/sessions/doc-1/peers/not-a-uuid",
            &[BEARER],
            "",
        ),
        seed("seed-preflight-session", 204, "OPTIONS", SESSION, &[], ""),
        seed("seed-preflight-peer", 204, "OPTIONS", PEER, &[], ""),
        seed("seed-home", 200, "GET", "/?session=demo", &[], ""),
        seed("seed-healthz", 200, "GET", "/healthz", &[], ""),
        seed("seed-readyz", 200, "GET", "/readyz", &[], ""),
        seed("seed-metrics", 200, "GET", "/metrics", &[], ""),
        seed("seed-pkg", 200, "GET", "/pkg/deltamesh_worker.js", &[], ""),
        seed(
            "seed-pkg-traversal",
            404,
            "GET",
            "/pkg/../index.html",
            &[],
            "",
        ),
        seed("seed-not-found", 404, "GET", "/v2/sessions", &[], ""),
        seed("seed-wrong-method", 405, "PUT", "/healthz", &[], ""),
    ]
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/signal_request")
}

/// The status line's code of the answer to `request`, sent alone on a new
/// connection to `address`.
async fn status_of(address: std::net::SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0; 1024];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before the response head");
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    head.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {head}"))
}

#[tokio::test]
async fn every_seed_gets_its_status_from_a_real_server() {
    let fuzz_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let app = fuzzed_signal::signal(&fuzz_dir);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, app, std::future::pending()));
    for seed in seeds() {
        assert_eq!(
            status_of(address, &seed.bytes).await,
            seed.status,
            "{}",
            seed.name
        );
    }
}

/// With `UPDATE_SEEDS=1` the corpus is rewritten first (after an API
/// change); without it a stale corpus fails the test.
#[test]
fn committed_seed_corpus_is_what_the_generator_writes() {
    let dir = corpus_dir();
    if std::env::var_os("UPDATE_SEEDS").is_some() {
        write_seed_corpus();
    }
    let mut committed: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("seed-"))
        .collect();
    committed.sort();
    let seeds = seeds();
    let mut expected: Vec<&str> = seeds.iter().map(|seed| seed.name).collect();
    expected.sort();
    assert_eq!(committed, expected, "seed files in {}", dir.display());
    for seed in &seeds {
        let on_disk = fs::read(dir.join(seed.name)).unwrap();
        assert_eq!(on_disk, seed.bytes, "{} is stale", seed.name);
    }
}

/// Replaces the committed seeds with the generator's.
fn write_seed_corpus() {
    let dir = corpus_dir();
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
        {
            fs::remove_file(path).unwrap();
        }
    }
    for seed in seeds() {
        fs::write(dir.join(seed.name), seed.bytes).unwrap();
    }
}

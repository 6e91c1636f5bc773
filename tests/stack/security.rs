//! Who may do what, and how much: signed tokens through the whole stack,
//! grants enforced by the relay, sessions that never leak into each other,
//! limits that trip exactly where configured, a flood that leaves
//! well-behaved peers served, and deltas signed by the relay.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltamesh::{RunningStack, StackConfig, start};
use deltamesh_proto::channel::Channel;
use deltamesh_proto::frame::FRAME_HEADER_LEN;
use deltamesh_proto::pb::{ErrorCode, RejectReason};
use deltamesh_proto::security::SECURITY_HEADER_LEN;
use deltamesh_proto::{Grants, Id};
use deltamesh_relay::{DeltaSigner, Rate, RelayConfig};
use deltamesh_signal::token::{Claims, TokenSigner, TokenVerifier, unix_now};
use deltamesh_signal::{RateLimit, SignalConfig};
use deltamesh_worker::{
    ConnectError, ConnectOptions, LaneChoice, NativePeer, PeerEvent, VerifyError, verify_relayed,
};
use futures_util::StreamExt;

use crate::common::{TOKEN, next_matching};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A stack that takes HS256 tokens of key `k1` (and the dev token), with
/// `relay` tweaks applied and signal's request limits off.
async fn secured_stack(relay: impl FnOnce(&mut RelayConfig)) -> RunningStack {
    let mut relay_config = RelayConfig::default();
    relay(&mut relay_config);
    let mut verifier = TokenVerifier::default();
    verifier.add_hs256("k1", SECRET).unwrap();
    start(StackConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        relay: relay_config,
        signal: SignalConfig {
            tokens: Arc::new(verifier),
            address_rate: RateLimit::OFF,
            token_rate: RateLimit::OFF,
            ..SignalConfig::new(TOKEN)
        },
    })
    .await
    .expect("stack starts")
}

fn token(subject: &str, session: &str, grants: Grants) -> String {
    TokenSigner::hs256("k1", SECRET).unwrap().sign(&Claims {
        iss: None,
        sub: subject.to_owned(),
        session: session.to_owned(),
        grants: grants.into(),
        exp: unix_now() + 600,
        nbf: None,
        iat: None,
    })
}

async fn join_as(
    stack: &RunningStack,
    session: &str,
    subject: &str,
    grants: Grants,
) -> Result<NativePeer, ConnectError> {
    let token = token(subject, session, grants);
    NativePeer::connect(
        ConnectOptions::new(&stack.signal_url(), session, &token).with_lane(LaneChoice::WebRtc),
    )
    .await
}

const PUBLISH: Grants = Grants {
    publish: true,
    subscribe: false,
    signal: false,
};
const SUBSCRIBE: Grants = Grants {
    publish: false,
    subscribe: true,
    signal: false,
};

/// The next delta `peer` receives: (seq, payload).
async fn next_delta(peer: &mut NativePeer) -> (u64, Vec<u8>) {
    next_matching(peer, Duration::from_secs(10), |e| match e {
        PeerEvent::Delta(d) => Some((d.seq, d.payload().to_vec())),
        _ => None,
    })
    .await
}

/// Fails if a delta reaches `peer` within `quiet`.
async fn assert_no_delta(peer: &mut NativePeer, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, peer.next_event()).await {
        assert!(
            !matches!(event, PeerEvent::Delta(_)),
            "unexpected {event:?}"
        );
    }
}

async fn next_reject(peer: &mut NativePeer) -> deltamesh_proto::pb::Reject {
    next_matching(peer, Duration::from_secs(10), |e| match e {
        PeerEvent::Rejected(r) => Some(r),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_decide_who_may_publish_and_who_receives() {
    let stack = secured_stack(|_| {}).await;
    let mut full = join_as(&stack, "g", "full", Grants::ALL).await.unwrap();
    let mut reader = join_as(&stack, "g", "reader", SUBSCRIBE).await.unwrap();
    let mut writer = join_as(&stack, "g", "writer", PUBLISH).await.unwrap();

    // A subscribe-only peer's delta is refused, stored nowhere.
    let _ = reader
        .send(1, Id::default(), b"not mine to send".to_vec())
        .await;
    let reject = next_reject(&mut reader).await;
    assert_eq!(reject.reason(), RejectReason::NotPermitted);
    assert!(reject.detail.contains("publish"), "{}", reject.detail);

    // A publish-only peer's delta is stored and reaches the subscribers.
    writer
        .send(1, Id::default(), b"from writer".to_vec())
        .await
        .unwrap();
    assert_eq!(next_delta(&mut full).await, (1, b"from writer".to_vec()));
    assert_eq!(next_delta(&mut reader).await, (1, b"from writer".to_vec()));

    // ...but it receives nothing itself.
    full.send(1, Id::default(), b"from full".to_vec())
        .await
        .unwrap();
    assert_eq!(next_delta(&mut reader).await, (2, b"from full".to_vec()));
    assert_no_delta(&mut writer, Duration::from_millis(500)).await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_crosses_from_one_session_to_another() {
    let stack = secured_stack(|_| {}).await;
    let a1 = join_as(&stack, "session-a", "a1", Grants::ALL)
        .await
        .unwrap();
    let mut a2 = join_as(&stack, "session-a", "a2", Grants::ALL)
        .await
        .unwrap();
    let b1 = join_as(&stack, "session-b", "b1", Grants::ALL)
        .await
        .unwrap();
    // b1 sees no member of session a, in its Welcome or later.
    assert!(b1.welcome().peers.is_empty());
    let mut b2 = join_as(&stack, "session-b", "b2", Grants::ALL)
        .await
        .unwrap();
    assert_eq!(b2.welcome().peers, vec![b1.peer_id().0.to_vec()]);
    let a_ids: HashSet<Id> = [a1.peer_id(), a2.peer_id()].into();

    for n in 0..20u8 {
        a1.send(1, Id::default(), vec![b'a', n]).await.unwrap();
        b1.send(1, Id::default(), vec![b'b', n]).await.unwrap();
    }
    for n in 0..20u8 {
        assert_eq!(next_delta(&mut a2).await, (u64::from(n) + 1, vec![b'a', n]));
        assert_eq!(next_delta(&mut b2).await, (u64::from(n) + 1, vec![b'b', n]));
    }
    // Each session has its own sequence, and no delta of the other.
    let client = reqwest::Client::new();
    for (session, expected) in [
        ("session-a", [a1.peer_id(), a2.peer_id()]),
        ("session-b", [b1.peer_id(), b2.peer_id()]),
    ] {
        let listed: serde_json::Value = client
            .get(format!(
                "{}/v1/sessions/{session}/peers",
                stack.signal_url()
            ))
            .bearer_auth(token("lister", session, Grants::default()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .map(|text| serde_json::from_str(&text).unwrap())
            .unwrap();
        let mut ids: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        let mut want: Vec<String> = expected.iter().map(ToString::to_string).collect();
        want.sort();
        assert_eq!(ids, want, "{session}");
    }
    // Session a's comings and goings never reach session b.
    a2.close().await;
    let _a3 = join_as(&stack, "session-a", "a3", Grants::ALL)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, b2.next_event()).await {
        match event {
            PeerEvent::PeerJoined(id) | PeerEvent::PeerLeft(id) => {
                assert!(!a_ids.contains(&id), "session b heard of {id}");
                panic!("unexpected membership event in session b: {id}");
            }
            PeerEvent::Delta(d) => panic!("unexpected delta {}", d.seq),
            _ => {}
        }
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delta_rate_trips_exactly_at_its_burst() {
    let stack = secured_stack(|relay| {
        relay.delta_rate = Rate {
            per_second: 2,
            burst: 5,
        };
    })
    .await;
    let mut peer = join_as(&stack, "rate", "p", Grants::ALL).await.unwrap();
    let mut outcomes = Vec::new();
    for n in 0..8u8 {
        peer.send(1, Id::default(), vec![n]).await.unwrap();
    }
    while outcomes.len() < 8 {
        let outcome = next_matching(&mut peer, Duration::from_secs(10), |e| match e {
            PeerEvent::Acked { client_seq, .. } => Some((client_seq, None)),
            PeerEvent::Rejected(r) => Some((r.client_seq, Some(r.reason()))),
            _ => None,
        })
        .await;
        outcomes.push(outcome);
    }
    outcomes.sort_by_key(|(client_seq, _)| *client_seq);
    let reasons: Vec<_> = outcomes.iter().map(|(_, reason)| *reason).collect();
    let rate = Some(RejectReason::Rate);
    assert_eq!(
        reasons,
        [None, None, None, None, None, rate, rate, rate],
        "five pass, the rest are over the rate"
    );
    let metrics = reqwest::get(format!("{}/metrics", stack.signal_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("relay_limit_hits_total{limit=\"delta_rate\"} 3"),
        "{metrics}"
    );
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_is_a_503_with_retry_after() {
    let stack = secured_stack(|relay| relay.max_peers_per_session = 2).await;
    let _first = join_as(&stack, "small", "one", Grants::ALL).await.unwrap();
    let _second = join_as(&stack, "small", "two", Grants::ALL).await.unwrap();
    match join_as(&stack, "small", "three", Grants::ALL).await {
        Err(ConnectError::Refused { status, body }) => {
            assert_eq!(status, 503);
            assert!(body.contains("session is full (2 peers)"), "{body}");
        }
        other => panic!("expected a 503, got {:?}", other.map(|p| p.peer_id())),
    }
    // Other sessions are not affected.
    join_as(&stack, "other", "three", Grants::ALL)
        .await
        .unwrap();
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_relay_is_a_503_with_retry_after() {
    let stack = secured_stack(|relay| relay.max_peers = 1).await;
    let _only = join_as(&stack, "any", "one", Grants::ALL).await.unwrap();
    let client = reqwest::Client::new();
    let refused = post_offer(&client, &stack.signal_url(), "other", &offer_sdp()).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "2");
    let body = refused.text().await.unwrap();
    assert!(body.contains("no-capacity"), "{body}");
    stack.shutdown().await.unwrap();
}

/// An SDP offer as a browser makes it, for offers that never connect.
fn offer_sdp() -> String {
    let mut rtc = str0m::Rtc::new(Instant::now());
    let mut changes = rtc.sdp_api();
    changes.add_channel("command".to_owned());
    let (offer, _pending) = changes.apply().expect("an offer");
    offer.to_sdp_string()
}

/// POSTs `sdp` to `session` of the signal at `signal_url` with the dev token.
async fn post_offer(
    client: &reqwest::Client,
    signal_url: &str,
    session: &str,
    sdp: &str,
) -> reqwest::Response {
    client
        .post(format!("{signal_url}/v1/sessions/{session}/peers"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/sdp")
        .body(sdp.to_owned())
        .send()
        .await
        .expect("signal answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_limited_and_reaped() {
    let stack = secured_stack(|relay| {
        relay.max_pending = 3;
        relay.connect_timeout = Duration::from_secs(1);
    })
    .await;
    let client = reqwest::Client::new();
    let sdp = offer_sdp();
    for _ in 0..3 {
        assert_eq!(
            post_offer(&client, &stack.signal_url(), "flood", &sdp)
                .await
                .status(),
            201
        );
    }
    let refused = post_offer(&client, &stack.signal_url(), "flood", &sdp).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = refused.text().await.unwrap();
    assert!(body.contains("being set up"), "{body}");
    // Once the half-open ones time out, peers get in again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    join_as(&stack, "flood", "late", Grants::ALL).await.unwrap();
    stack.shutdown().await.unwrap();
}

/// Resident memory of this process (the stack runs in it).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_offers_and_garbage_leaves_well_behaved_peers_served() {
    const OFFERS: usize = 2_000;
    // Within the rate every peer has here (a burst of 100).
    const DELTAS: u64 = 100;
    let stack = secured_stack(|relay| {
        relay.delta_rate = Rate {
            per_second: 100,
            burst: 100,
        };
        relay.max_rate_violations = 500;
        relay.connect_timeout = Duration::from_secs(3);
    })
    .await;
    let sender = join_as(&stack, "calm", "sender", Grants::ALL)
        .await
        .unwrap();
    let mut receiver = join_as(&stack, "calm", "receiver", Grants::ALL)
        .await
        .unwrap();
    let vandal = join_as(&stack, "calm", "vandal", Grants::ALL)
        .await
        .unwrap();
    let rss_before = rss_bytes();

    // 2,000 offers at once, 200 in flight at a time.
    let sdp = offer_sdp();
    let client = reqwest::Client::new();
    let offers = tokio::spawn({
        let signal_url = stack.signal_url();
        async move {
            futures_util::stream::iter(0..OFFERS)
                .map(|_| post_offer(&client, &signal_url, "flood", &sdp))
                .buffer_unordered(200)
                .map(|response| response.status().as_u16())
                .collect::<Vec<u16>>()
                .await
        }
    });
    // Garbage at full rate until the relay cuts the vandal off.
    let garbage = tokio::spawn(async move {
        let mut vandal = vandal;
        let started = Instant::now();
        let mut sent = 0u64;
        loop {
            let mut noise = vec![0u8; 1024];
            fastrand::fill(&mut noise);
            vandal.send_raw(Channel::Send, noise).await;
            sent += 1;
            while let Ok(Some(event)) =
                tokio::time::timeout(Duration::ZERO, vandal.next_event()).await
            {
                if let PeerEvent::RelayError(e) = event
                    && e.code() == ErrorCode::RateLimited
                {
                    return (sent, started.elapsed());
                }
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never cut off");
            if sent.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
        }
    });
    // Meanwhile the well-behaved pair exchanges deltas, all of them in order.
    let exchange_started = Instant::now();
    for n in 0..DELTAS {
        sender
            .send(1, Id::default(), n.to_le_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut last_seq = 0;
    for n in 0..DELTAS {
        let (seq, payload) = next_delta(&mut receiver).await;
        assert!(seq > last_seq);
        last_seq = seq;
        assert_eq!(payload, n.to_le_bytes());
    }
    let exchange = exchange_started.elapsed();
    let statuses = offers.await.unwrap();
    let (garbage_sent, cut_off_after) = garbage.await.unwrap();
    let accepted = statuses.iter().filter(|&&s| s == 201).count();
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    let rss_after = rss_bytes();
    println!(
        "flood: {accepted} offers accepted, {refused} refused 503; vandal cut off after \
         {garbage_sent} messages in {cut_off_after:?}; {DELTAS} deltas delivered in {exchange:?}; \
         RSS {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert_eq!(
        accepted + refused,
        OFFERS,
        "every offer answered 201 or 503"
    );
    assert!(
        accepted <= RelayConfig::default().max_pending,
        "no more than max_pending half-open connections at once"
    );
    assert!(
        rss_after < rss_before + (256 << 20),
        "memory stays bounded: {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    // The pair is still served once the half-open peers are reaped.
    tokio::time::sleep(Duration::from_secs(4)).await;
    sender
        .send(1, Id::default(), b"after".to_vec())
        .await
        .unwrap();
    assert_eq!(next_delta(&mut receiver).await.1, b"after");
    join_as(&stack, "flood", "late", Grants::ALL).await.unwrap();
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deltas_verify_with_the_relay_key_and_tampered_ones_do_not() {
    let signer = DeltaSigner::from_pem(include_bytes!(
        "../../services/signal/tests/keys/ed25519-a.pem"
    ))
    .unwrap();
    let stack = secured_stack(|relay| relay.signer = Some(Arc::new(signer))).await;
    let relay_key = stack.relays[0].public_key().expect("the relay signs");
    let sender = join_as(&stack, "signed", "s", Grants::ALL).await.unwrap();
    let mut receiver = join_as(&stack, "signed", "r", Grants::ALL).await.unwrap();
    sender
        .send(7, Id([9; 16]), b"signed payload".to_vec())
        .await
        .unwrap();
    let message = next_matching(&mut receiver, Duration::from_secs(10), |e| match e {
        PeerEvent::Delta(d) => Some(d.message),
        _ => None,
    })
    .await;
    assert_eq!(verify_relayed(&message, &relay_key), Ok(()));

    // Another seq under the same signature.
    let mut renumbered = message.clone();
    renumbered[8] ^= 1;
    assert_eq!(
        verify_relayed(&renumbered, &relay_key),
        Err(VerifyError::BadSignature)
    );
    // Another payload, with its checksum fixed so the frame itself is valid.
    let mut rewritten = message.clone();
    let payload_at = SECURITY_HEADER_LEN + FRAME_HEADER_LEN;
    rewritten[payload_at] ^= 1;
    let crc = crc32c::crc32c(&rewritten[payload_at..]);
    rewritten[SECURITY_HEADER_LEN + 48..SECURITY_HEADER_LEN + 52]
        .copy_from_slice(&crc.to_le_bytes());
    assert_eq!(
        verify_relayed(&rewritten, &relay_key),
        Err(VerifyError::BadSignature)
    );
    // Another origin, and another relay's key.
    let mut reattributed = message.clone();
    reattributed[16] ^= 1;
    assert_eq!(
        verify_relayed(&reattributed, &relay_key),
        Err(VerifyError::BadSignature)
    );
    let other = DeltaSigner::from_pem(include_bytes!(
        "../../services/signal/tests/keys/ed25519-b.pem"
    ))
    .unwrap();
    assert_eq!(
        verify_relayed(&message, &other.public_key()),
        Err(VerifyError::BadSignature)
    );
    stack.shutdown().await.unwrap();

    // A relay without a key sends unsigned deltas, which say so.
    let stack = secured_stack(|_| {}).await;
    assert_eq!(stack.relays[0].public_key(), None);
    let sender = join_as(&stack, "plain", "s", Grants::ALL).await.unwrap();
    let mut receiver = join_as(&stack, "plain", "r", Grants::ALL).await.unwrap();
    sender.send(1, Id::default(), b"x".to_vec()).await.unwrap();
    let message = next_matching(&mut receiver, Duration::from_secs(10), |e| match e {
        PeerEvent::Delta(d) => Some(d.message),
        _ => None,
    })
    .await;
    assert_eq!(
        verify_relayed(&message, &relay_key),
        Err(VerifyError::Unsigned)
    );
    stack.shutdown().await.unwrap();
}

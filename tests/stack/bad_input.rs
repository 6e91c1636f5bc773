//! Every broken delta frame and command gets its clear answer on the
//! `command` channel, nothing is stored or forwarded, and the connection
//! keeps working.

use std::time::Duration;

use crate::common::{join, next_matching, stack};
use deltamesh_proto::channel::Channel;
use deltamesh_proto::pb::{ErrorCode, RejectReason};
use deltamesh_proto::{FrameHeader, Id};
use deltamesh_worker::{PeerEvent, SendError};

fn valid_frame(client_seq: u64, payload: &[u8]) -> Vec<u8> {
    FrameHeader {
        kind: 1,
        flags: 0,
        doc_id: Id([1; 16]),
        client_seq,
        timestamp_us: 1,
    }
    .encode(payload)
    .unwrap()
}

/// One broken frame per header rule, with the reason the relay must give.
fn broken_frames() -> Vec<(&'static str, Vec<u8>, RejectReason)> {
    let mut cases = Vec::new();
    let mut bad = |name, edit: fn(&mut Vec<u8>), reason| {
        let mut frame = valid_frame(1, b"payload");
        edit(&mut frame);
        cases.push((name, frame, reason));
    };
    bad("magic", |f| f[0] = b'X', RejectReason::BadMagic);
    bad("version", |f| f[4] = 2, RejectReason::BadVersion);
    bad(
        "reserved flag bit",
        |f| f[9] |= 0x80,
        RejectReason::ReservedFlags,
    );
    bad("reserved u16", |f| f[10] = 1, RejectReason::ReservedNonzero);
    bad("reserved u32", |f| f[53] = 1, RejectReason::ReservedNonzero);
    bad("payload_len", |f| f[12] += 1, RejectReason::LengthMismatch);
    bad("checksum", |f| f[48] ^= 1, RejectReason::BadChecksum);
    bad("payload byte", |f| f[60] ^= 1, RejectReason::BadChecksum);
    bad("truncated", |f| f.truncate(30), RejectReason::Truncated);
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_header_rule_is_rejected_and_nothing_is_forwarded() {
    let stack = stack().await;
    let mut sender = join(&stack, "rules").await;
    let mut watcher = join(&stack, "rules").await;
    for (name, frame, reason) in broken_frames() {
        sender.send_raw(Channel::Send, frame).await;
        let reject = next_matching(&mut sender, Duration::from_secs(5), |e| match e {
            PeerEvent::Rejected(r) => Some(r),
            _ => None,
        })
        .await;
        assert_eq!(reject.reason(), reason, "{name}: {}", reject.detail);
        assert!(!reject.detail.is_empty(), "{name}: the reason is explained");
        if name != "truncated" {
            assert_eq!(reject.client_seq, 1, "{name}: names the frame");
        }
    }
    // A gap in client_seq is refused too.
    sender.send_raw(Channel::Send, valid_frame(5, b"gap")).await;
    let reject = next_matching(&mut sender, Duration::from_secs(5), |e| match e {
        PeerEvent::Rejected(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(reject.reason(), RejectReason::SequenceGap);

    // The connection still works: a good frame goes through as seq 1, the
    // first and only delta the watcher sees.
    sender
        .send_raw(Channel::Send, valid_frame(1, b"good"))
        .await;
    let (client_seq, seq) = next_matching(&mut sender, Duration::from_secs(5), |e| match e {
        PeerEvent::Acked { client_seq, seq } => Some((client_seq, seq)),
        PeerEvent::Rejected(r) => panic!("good frame rejected: {r:?}"),
        _ => None,
    })
    .await;
    assert_eq!((client_seq, seq), (1, 1));
    let delta = next_matching(&mut watcher, Duration::from_secs(5), |e| match e {
        PeerEvent::Delta(d) => Some(d),
        _ => None,
    })
    .await;
    assert_eq!((delta.seq, delta.payload()), (1, &b"good"[..]));
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_kib_frame_is_rejected_as_too_large_with_the_limit() {
    let stack = stack().await;
    let mut peer = join(&stack, "big").await;
    let limit = peer.welcome().max_frame_size;
    assert_eq!(limit, 64 * 1024, "Welcome tells the limit");
    let too_large = peer.send(1, Id::default(), vec![0xAB; 300 * 1024]).await;
    assert!(
        matches!(too_large, Err(SendError::TooLarge { .. })),
        "the peer library refuses it up front: {too_large:?}"
    );
    // Sent anyway, the relay rejects it with the limit.
    peer.send_raw(Channel::Send, valid_frame(1, &vec![0xAB; 300 * 1024]))
        .await;
    let reject = next_matching(&mut peer, Duration::from_secs(10), |e| match e {
        PeerEvent::Rejected(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(reject.reason(), RejectReason::TooLarge);
    assert_eq!(reject.client_seq, 1);
    assert!(
        reject.detail.contains(&limit.to_string()),
        "{}",
        reject.detail
    );
    // Still connected: a small delta is accepted next.
    peer.send(1, Id::default(), b"small".to_vec())
        .await
        .unwrap();
    let ack = next_matching(&mut peer, Duration::from_secs(5), |e| match e {
        PeerEvent::Acked { client_seq, seq } => Some((client_seq, seq)),
        _ => None,
    })
    .await;
    // The rejected frame was never stored, so client_seq 1 is free again.
    assert_eq!(ack, (1, 1));
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_on_command_get_an_error_and_the_connection_stays_up() {
    let stack = stack().await;
    let mut peer = join(&stack, "noise").await;
    let mut noise = vec![0u8; 512];
    fastrand::fill(&mut noise);
    noise[0] = 0xff; // never a valid protobuf tag
    peer.send_raw(Channel::Command, noise).await;
    let error = next_matching(&mut peer, Duration::from_secs(5), |e| match e {
        PeerEvent::RelayError(e) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!(error.code(), ErrorCode::MalformedCommand);
    peer.send_raw(Channel::Receive, b"wrong way".to_vec()).await;
    let error = next_matching(&mut peer, Duration::from_secs(5), |e| match e {
        PeerEvent::RelayError(e) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!(error.code(), ErrorCode::WrongChannel);
    peer.ping(42).await;
    let pong = next_matching(&mut peer, Duration::from_secs(5), |e| match e {
        PeerEvent::Pong(n) => Some(n),
        _ => None,
    })
    .await;
    assert_eq!(pong, 42);
    stack.shutdown().await.unwrap();
}

//! Broken frames, oversized frames, garbage commands and floods: each gets
//! its clear answer, nothing is stored or forwarded, and the connection
//! keeps working until a peer abuses it.

use deltamesh_proto::channel::Channel;
use deltamesh_proto::pb::{ErrorCode, RejectReason};
use deltamesh_proto::{FrameHeader, Id};
use deltamesh_relay::{Rate, RelayConfig};

use super::WAIT;
use crate::harness::{Net, all_grants};

fn frame(client_seq: u64, payload: &[u8]) -> Vec<u8> {
    FrameHeader {
        kind: 1,
        doc_id: Id([1; 16]),
        client_seq,
        timestamp_us: 1,
        ..FrameHeader::default()
    }
    .encode(payload)
    .expect("a frame")
}

/// One broken frame per header rule (PROTOCOL §3), with the reason the
/// relay must give.
fn broken_frames() -> Vec<(&'static str, Vec<u8>, RejectReason)> {
    let mut cases = Vec::new();
    let mut bad = |name, edit: fn(&mut Vec<u8>), reason| {
        let mut frame = frame(1, b"payload");
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

#[test]
fn each_broken_header_rule_is_rejected_and_nothing_is_forwarded() {
    let mut net = Net::new(RelayConfig::default());
    let sender = net.join("s", 0, all_grants());
    let watcher = net.join("s", 0, all_grants());
    let cases = broken_frames();
    for (count, (name, frame, reason)) in cases.iter().enumerate() {
        net.peers[sender].write_raw(Channel::Send, frame);
        net.run_until(WAIT, |net| net.peers[sender].rejects().len() == count + 1);
        let reject = net.peers[sender].rejects().pop().expect("a reject");
        assert_eq!(reject.reason(), *reason, "{name}: {}", reject.detail);
        assert!(!reject.detail.is_empty(), "{name}: the reason is explained");
        let named = if *name == "truncated" { 0 } else { 1 };
        assert_eq!(reject.client_seq, named, "{name}: names the frame");
    }
    // A gap in client_seq is refused too.
    net.peers[sender].write_raw(Channel::Send, &frame(5, b"gap"));
    net.run_until(WAIT, |net| {
        net.peers[sender].rejects().len() == cases.len() + 1
    });
    let gap = net.peers[sender].rejects().pop().expect("a reject");
    assert_eq!(gap.reason(), RejectReason::SequenceGap);
    // The connection still works: a good frame is seq 1, the first and
    // only delta the watcher sees.
    net.peers[sender].write_raw(Channel::Send, &frame(1, b"good"));
    net.run_until(WAIT, |net| !net.peers[sender].acks().is_empty());
    assert_eq!(net.peers[sender].acks(), vec![(1, 1)]);
    net.run_until(WAIT, |net| !net.peers[watcher].seqs().is_empty());
    net.run_for(std::time::Duration::from_millis(100));
    assert_eq!(net.peers[watcher].seqs(), vec![1]);
}

#[test]
fn a_frame_over_the_size_limit_is_rejected_with_the_limit_and_frees_its_client_seq() {
    let mut net = Net::new(RelayConfig {
        max_frame_size: 200,
        ..RelayConfig::default()
    });
    let peer = net.join("s", 0, all_grants());
    let welcome = net.peers[peer].core.welcome().cloned().expect("welcomed");
    assert_eq!(welcome.max_frame_size, 200, "Welcome tells the limit");
    net.peers[peer].write_raw(Channel::Send, &frame(1, &[0xAB; 145]));
    net.run_until(WAIT, |net| !net.peers[peer].rejects().is_empty());
    let reject = net.peers[peer].rejects().pop().expect("a reject");
    assert_eq!(reject.reason(), RejectReason::TooLarge);
    assert_eq!(reject.client_seq, 1);
    assert!(reject.detail.contains("200"), "{}", reject.detail);
    // Exactly at the limit is fine, and client_seq 1 was never used.
    net.peers[peer].write_raw(Channel::Send, &frame(1, &[0xAB; 144]));
    net.run_until(WAIT, |net| !net.peers[peer].acks().is_empty());
    assert_eq!(net.peers[peer].acks(), vec![(1, 1)]);
}

#[test]
fn the_byte_rate_trips_exactly_at_its_burst() {
    // Frames of 56 + 144 = 200 bytes: five fit in 1,000 bytes, six do not.
    let mut net = Net::new(RelayConfig {
        byte_rate: Rate {
            per_second: 1,
            burst: 1000,
        },
        ..RelayConfig::default()
    });
    let peer = net.join("s", 0, all_grants());
    for client_seq in 1..=6 {
        net.peers[peer].write_raw(Channel::Send, &frame(client_seq, &[7; 144]));
    }
    net.run_until(WAIT, |net| {
        net.peers[peer].acks().len() + net.peers[peer].rejects().len() == 6
    });
    let acked: Vec<u64> = net.peers[peer].acks().iter().map(|a| a.0).collect();
    assert_eq!(acked, vec![1, 2, 3, 4, 5]);
    let reject = net.peers[peer].rejects().pop().expect("the sixth");
    assert_eq!(
        (reject.client_seq, reject.reason()),
        (6, RejectReason::Rate)
    );
}

#[test]
fn garbage_on_command_and_data_on_receive_get_errors_and_the_connection_stays_up() {
    let mut net = Net::new(RelayConfig::default());
    let peer = net.join("s", 0, all_grants());
    // Bytes that are no protobuf: 0xff is never a valid tag.
    let noise: Vec<u8> = (0..512u32).map(|i| (i * 197 + 0xff) as u8).collect();
    net.peers[peer].write_raw(Channel::Command, &noise);
    net.run_until(WAIT, |net| net.peers[peer].relay_errors().len() == 1);
    net.peers[peer].write_raw(Channel::Receive, b"wrong way");
    net.run_until(WAIT, |net| net.peers[peer].relay_errors().len() == 2);
    let codes: Vec<ErrorCode> = net.peers[peer]
        .relay_errors()
        .iter()
        .map(|e| e.code())
        .collect();
    assert_eq!(
        codes,
        [ErrorCode::MalformedCommand, ErrorCode::WrongChannel]
    );
    net.peers[peer].write_raw(Channel::Send, &frame(1, b"still here"));
    net.run_until(WAIT, |net| net.peers[peer].acks() == vec![(1, 1)]);
    assert!(!net.peers[peer].disconnected());
}

#[test]
fn a_peer_that_keeps_going_over_its_delta_rate_is_disconnected() {
    let mut net = Net::new(RelayConfig {
        delta_rate: Rate {
            per_second: 1,
            burst: 1,
        },
        max_rate_violations: 20,
        ..RelayConfig::default()
    });
    let peer = net.join("s", 0, all_grants());
    let other = net.join("s", 0, all_grants());
    for _ in 0..30 {
        net.peers[peer].write_raw(Channel::Send, b"garbage, fast");
    }
    net.run_until(WAIT, |net| net.peers[peer].disconnected());
    let error = net.peers[peer].relay_errors().pop().expect("told why");
    assert_eq!(error.code(), ErrorCode::RateLimited);
    assert!(error.detail.contains("20"), "{}", error.detail);
    assert!(!net.peers[other].disconnected(), "the others stay");
}

#[test]
fn a_peer_that_floods_the_command_channel_is_disconnected() {
    let mut net = Net::new(RelayConfig {
        command_rate: Rate {
            per_second: 5,
            burst: 5,
        },
        max_rate_violations: 10,
        ..RelayConfig::default()
    });
    let peer = net.join("s", 0, all_grants());
    let ping = deltamesh_proto::command::encode(deltamesh_proto::pb::command::Body::Ping(
        deltamesh_proto::pb::Ping { nonce: 9 },
    ));
    // Within the burst every ping is answered.
    for _ in 0..5 {
        net.peers[peer].write_raw(Channel::Command, &ping);
    }
    net.run_for(std::time::Duration::from_millis(100));
    let pongs = |net: &Net| {
        net.peers[peer]
            .events
            .iter()
            .filter(|e| matches!(e, deltamesh_worker::PeerEvent::Pong(9)))
            .count()
    };
    assert_eq!(pongs(&net), 5);
    assert!(!net.peers[peer].disconnected());
    // Far past it, the peer is cut off, and told why.
    for _ in 0..30 {
        net.peers[peer].write_raw(Channel::Command, &ping);
    }
    net.run_until(WAIT, |net| net.peers[peer].disconnected());
    assert!(pongs(&net) < 5 + 30, "pings over the rate go unanswered");
    let error = net.peers[peer].relay_errors().pop().expect("told why");
    assert_eq!(error.code(), ErrorCode::RateLimited);
}

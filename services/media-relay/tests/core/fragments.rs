//! Large deltas as fragments (PROTOCOL §6): reassembled into one delta
//! (one seq, one ack, stored once), delivered as fragments that
//! reassemble byte for byte; every broken frame gets exactly one `Reject`
//! and costs nothing, and reassembly memory stays within its bounds.

use std::time::{Duration, Instant};

use deltamesh_proto::channel::Channel;
use deltamesh_proto::fragment::{FRAGMENT_BODY, FragmentHeader, fragments};
use deltamesh_proto::pb::RejectReason;
use deltamesh_proto::{FrameHeader, RelayedFrame};
use deltamesh_relay::{Rate, RelayConfig};

use crate::harness::{Net, all_grants};

const WAIT: Duration = Duration::from_secs(5);
const MIB: usize = 1 << 20;

/// A frame numbered `client_seq` with `payload_len` bytes of a pattern.
pub(crate) fn frame_of(client_seq: u64, payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len)
        .map(|i| (i as u64 * 31 + client_seq) as u8)
        .collect();
    FrameHeader {
        client_seq,
        kind: 3,
        ..FrameHeader::default()
    }
    .encode(&payload)
    .expect("a frame")
}

/// `frame` cut into about-16 KiB fragments.
pub(crate) fn cut(frame: &[u8]) -> Vec<Vec<u8>> {
    fragments(frame, FRAGMENT_BODY, FRAGMENT_BODY).collect()
}

/// The relayed frames `peer` got on `receive`, reassembled from fragments
/// and split out of batches, in order.
pub(crate) fn relayed_frames(net: &Net, peer: usize) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut partial: Option<Vec<u8>> = None;
    for message in net.peers[peer].received_on(Channel::Receive) {
        if FragmentHeader::is_fragment(message) {
            let (header, body) = FragmentHeader::parse(message).expect("a good fragment");
            let buffer = partial.get_or_insert_with(Vec::new);
            assert_eq!(header.offset as usize, buffer.len(), "fragments in order");
            buffer.extend_from_slice(body);
            if buffer.len() == header.total_len as usize {
                frames.extend(partial.take());
            }
        } else {
            assert!(partial.is_none(), "nothing between a frame's fragments");
            for frame in deltamesh_proto::batch::Batch::relayed(message) {
                frames.push(frame.expect("whole relayed frames").to_vec());
            }
        }
    }
    frames
}

/// (seq, delta frame) of every relayed frame `peer` got.
pub(crate) fn deliveries(net: &Net, peer: usize) -> Vec<(u64, Vec<u8>)> {
    relayed_frames(net, peer)
        .iter()
        .map(|bytes| {
            let relayed = RelayedFrame::parse(bytes).expect("a valid relayed frame");
            (relayed.seq(), relayed.frame().as_bytes().to_vec())
        })
        .collect()
}

fn queue_all(net: &mut Net, peer: usize, messages: impl IntoIterator<Item = Vec<u8>>) {
    for message in messages {
        net.peers[peer].queue_raw(Channel::Send, message);
    }
}

fn rejects(net: &Net, peer: usize) -> Vec<(u64, RejectReason, String)> {
    net.peers[peer]
        .rejects()
        .into_iter()
        .map(|r| (r.client_seq, r.reason(), r.detail))
        .collect()
}

/// A relay with no rate limits in the way of large frames.
fn roomy() -> RelayConfig {
    RelayConfig {
        byte_rate: Rate {
            per_second: 1 << 30,
            burst: 1 << 30,
        },
        ..RelayConfig::default()
    }
}

#[test]
fn a_16_mib_delta_is_reassembled_stored_once_acked_once_and_delivered_as_fragments() {
    let started = Instant::now();
    let mut net = Net::new(RelayConfig::default());
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 0, all_grants());
    assert_eq!(
        net.peers[a]
            .core
            .welcome()
            .expect("welcomed")
            .max_delta_size as usize,
        16 * MIB
    );
    let big = frame_of(1, 16 * MIB - 56);
    queue_all(&mut net, a, cut(&big));
    net.run_until(Duration::from_secs(120), |net| {
        !net.peers[a].acks().is_empty() && !relayed_frames(net, b).is_empty()
    });
    assert_eq!(net.peers[a].acks(), vec![(1, 1)], "one ack, one seq");
    assert!(net.peers[a].rejects().is_empty());
    assert_eq!(net.shared.reassembly_bytes(), 0, "memory given back");
    let max = RelayConfig::default().max_frame_size;
    let messages: Vec<&[u8]> = net.peers[b].received_on(Channel::Receive).collect();
    assert!(messages.len() > 1000, "{} messages", messages.len());
    assert!(messages.iter().all(|m| m.len() <= max));
    let (first, first_body) = FragmentHeader::parse(messages[0]).expect("a fragment");
    assert_eq!(first.offset, 0);
    assert_eq!(first.total_len as usize, 120 + big.len());
    assert!(first_body.len() >= 176);
    assert_eq!(deliveries(&net, b), vec![(1, big)], "byte for byte");
    // Stored once: the next delta takes the next seq.
    queue_all(&mut net, a, [frame_of(2, 10)]);
    net.run_until(WAIT, |net| net.peers[a].acks().len() == 2);
    assert_eq!(net.peers[a].acks()[1], (2, 2));
    eprintln!("16 MiB through the harness: {:?}", started.elapsed());
}

#[test]
fn a_17_mib_delta_is_too_large_on_its_first_fragment_and_the_rest_is_skipped() {
    let mut net = Net::new(roomy());
    let a = net.join("s", 0, all_grants());
    let big = frame_of(1, 17 * MIB);
    let parts = cut(&big);
    // The first fragments and then the next frame: the rest of the large
    // one is skipped, and its client_seq is used up.
    queue_all(&mut net, a, parts.into_iter().take(8));
    queue_all(&mut net, a, [frame_of(2, 10)]);
    net.run_until(WAIT, |net| !net.peers[a].acks().is_empty());
    let rejected = rejects(&net, a);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, 1);
    assert_eq!(rejected[0].1, RejectReason::TooLarge);
    assert_eq!(net.peers[a].acks(), vec![(2, 1)]);
}

/// A 100 KiB frame's fragments broken by `breaking`, then a good frame 2:
/// exactly the rejects expected, nothing of frame 1 stored, and the
/// connection still takes deltas.
fn broken_frame_case(
    name: &str,
    breaking: impl FnOnce(&mut Vec<Vec<u8>>),
    expected: &[(u64, RejectReason)],
) {
    let mut net = Net::new(roomy());
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 0, all_grants());
    let mut parts = cut(&frame_of(1, 100_000));
    breaking(&mut parts);
    queue_all(&mut net, a, parts);
    let next = frame_of(2, 10);
    queue_all(&mut net, a, [next.clone()]);
    net.run_until(WAIT, |net| !net.peers[a].acks().is_empty());
    net.run_for(Duration::from_millis(50));
    let got: Vec<(u64, RejectReason)> = rejects(&net, a).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got, expected, "{name}: {:?}", rejects(&net, a));
    assert_eq!(
        net.peers[a].acks(),
        vec![(2, 1)],
        "{name}: nothing else stored"
    );
    net.run_until(WAIT, |net| !relayed_frames(net, b).is_empty());
    assert_eq!(deliveries(&net, b), vec![(1, next)], "{name}");
    assert_eq!(net.shared.reassembly_bytes(), 0, "{name}");
}

fn with_header(part: &[u8], total_len: u32, offset: u32) -> Vec<u8> {
    let mut out = Vec::new();
    FragmentHeader { total_len, offset }.encode_into(&mut out);
    out.extend_from_slice(&part[16..]);
    out
}

#[test]
fn a_gap_between_fragments_is_one_fragment_reject() {
    broken_frame_case(
        "gap",
        |parts| {
            parts.remove(2);
        },
        &[(1, RejectReason::Fragment)],
    );
}

#[test]
fn an_overlapping_fragment_is_one_fragment_reject() {
    broken_frame_case(
        "overlap",
        |parts| {
            let total = FragmentHeader::parse(&parts[2]).unwrap().0.total_len;
            parts[2] = with_header(&parts[2], total, 2 * FRAGMENT_BODY as u32 - 100);
        },
        &[(1, RejectReason::Fragment)],
    );
}

#[test]
fn a_whole_frame_between_fragments_breaks_the_frame_and_is_judged_alone() {
    let mut net = Net::new(roomy());
    let a = net.join("s", 0, all_grants());
    let mut parts = cut(&frame_of(1, 100_000));
    parts.insert(2, frame_of(2, 10));
    queue_all(&mut net, a, parts);
    queue_all(&mut net, a, [frame_of(3, 10)]);
    net.run_until(WAIT, |net| net.peers[a].acks().len() == 2);
    net.run_for(Duration::from_millis(50));
    let got: Vec<(u64, RejectReason)> = rejects(&net, a).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got, vec![(1, RejectReason::Fragment)]);
    assert_eq!(net.peers[a].acks(), vec![(2, 1), (3, 2)]);
}

#[test]
fn garbage_between_fragments_breaks_the_frame_and_gets_its_own_reject() {
    broken_frame_case(
        "bad magic inside",
        |parts| {
            let mut garbage = vec![0; 100];
            garbage[..4].copy_from_slice(b"XXXX");
            parts.insert(3, garbage);
        },
        &[(1, RejectReason::Fragment), (0, RejectReason::BadMagic)],
    );
}

#[test]
fn a_first_fragment_with_a_broken_header_is_rejected_for_that_rule() {
    broken_frame_case(
        "bad magic in the header",
        |parts| parts[0][16] = b'X',
        &[(1, RejectReason::BadMagic)],
    );
    broken_frame_case(
        "length mismatch",
        |parts| {
            // payload_len one short of what total_len says.
            parts[0][16 + 12] = parts[0][16 + 12].wrapping_sub(1);
        },
        &[(1, RejectReason::LengthMismatch)],
    );
}

#[test]
fn reserved_bytes_in_a_fragment_are_one_fragment_reject() {
    broken_frame_case(
        "reserved bytes",
        |parts| parts[2][12] = 1,
        &[(1, RejectReason::Fragment)],
    );
}

#[test]
fn an_empty_fragment_is_one_fragment_reject() {
    broken_frame_case(
        "empty fragment",
        |parts| {
            let empty = parts[2][..16].to_vec();
            parts.insert(2, empty);
        },
        &[(1, RejectReason::Fragment)],
    );
}

#[test]
fn a_total_len_that_changes_is_one_fragment_reject() {
    broken_frame_case(
        "total_len change",
        |parts| {
            let (header, _) = FragmentHeader::parse(&parts[2]).unwrap();
            parts[2] = with_header(&parts[2], header.total_len + 1, header.offset);
        },
        &[(1, RejectReason::Fragment)],
    );
}

#[test]
fn a_first_fragment_shorter_than_the_header_uses_up_nothing() {
    let mut net = Net::new(roomy());
    let a = net.join("s", 0, all_grants());
    let whole = frame_of(1, 100);
    let parts: Vec<Vec<u8>> = fragments(&whole, 40, 40).collect();
    queue_all(&mut net, a, parts);
    // Its header never arrived: client_seq 1 is still the next one.
    queue_all(&mut net, a, [frame_of(1, 10)]);
    net.run_until(WAIT, |net| !net.peers[a].acks().is_empty());
    net.run_for(Duration::from_millis(50));
    let got: Vec<(u64, RejectReason)> = rejects(&net, a).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got, vec![(0, RejectReason::Fragment)]);
    assert_eq!(net.peers[a].acks(), vec![(1, 1)]);
}

#[test]
fn a_stray_fragment_is_rejected_once_with_client_seq_0() {
    let mut net = Net::new(roomy());
    let a = net.join("s", 0, all_grants());
    let parts = cut(&frame_of(1, 100_000));
    queue_all(&mut net, a, parts.into_iter().skip(2));
    queue_all(&mut net, a, [frame_of(1, 10)]);
    net.run_until(WAIT, |net| !net.peers[a].acks().is_empty());
    net.run_for(Duration::from_millis(50));
    let got: Vec<(u64, RejectReason)> = rejects(&net, a).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got, vec![(0, RejectReason::Fragment)]);
    assert_eq!(net.peers[a].acks(), vec![(1, 1)]);
}

#[test]
fn a_frame_with_no_fragment_for_30_s_is_dropped_as_incomplete() {
    let mut net = Net::new(roomy());
    let a = net.join("s", 0, all_grants());
    let parts = cut(&frame_of(1, 100_000));
    queue_all(&mut net, a, parts[..3].to_vec());
    net.run_until(WAIT, |net| {
        net.peers[a].raw_sent() && net.shared.reassembly_bytes() > 0
    });
    net.run_for(Duration::from_secs(29));
    assert!(net.peers[a].rejects().is_empty(), "not before 30 s");
    assert!(net.shared.reassembly_bytes() > 0);
    net.run_until(Duration::from_secs(2), |net| {
        !net.peers[a].rejects().is_empty()
    });
    let got = rejects(&net, a);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].0, got[0].1, got[0].2.as_str()),
        (1, RejectReason::Fragment, "incomplete")
    );
    assert_eq!(net.shared.reassembly_bytes(), 0);
    // The late rest is skipped; the connection goes on.
    queue_all(&mut net, a, parts[3..].to_vec());
    queue_all(&mut net, a, [frame_of(2, 10)]);
    net.run_until(WAIT, |net| !net.peers[a].acks().is_empty());
    assert_eq!(net.peers[a].acks(), vec![(2, 1)]);
    assert_eq!(net.peers[a].rejects().len(), 1);
}

#[test]
fn a_connection_that_closes_mid_frame_frees_its_memory() {
    let mut net = Net::new(roomy());
    let a = net.join("s", 0, all_grants());
    let parts = cut(&frame_of(1, 100_000));
    queue_all(&mut net, a, parts[..3].to_vec());
    net.run_until(WAIT, |net| net.shared.reassembly_bytes() > 0);
    let peer_id = net.peers[a].peer_id;
    net.shards[0].close(peer_id, "test").expect("closed");
    assert_eq!(net.shared.reassembly_bytes(), 0);
}

#[test]
fn half_finished_frames_cannot_grow_memory_past_the_bounds() {
    let per_connection = 512 * 1024;
    let per_relay = MIB;
    let mut net = Net::new(RelayConfig {
        max_reassembly_per_connection: per_connection,
        max_reassembly_per_relay: per_relay,
        ..roomy()
    });
    // One peer restarting large frames over and over: each new first
    // fragment breaks the previous frame and frees it.
    let a = net.join("s", 0, all_grants());
    for client_seq in 1..=20 {
        let parts = cut(&frame_of(client_seq, 4 * MIB));
        queue_all(&mut net, a, parts.into_iter().take(3));
    }
    let mut peak = 0;
    net.run_until(WAIT, |net| {
        peak = peak.max(net.shared.reassembly_bytes());
        net.peers[a].raw_sent() && net.peers[a].rejects().len() == 19
    });
    assert!(peak <= per_connection, "one peer held {peak}");
    assert!(
        rejects(&net, a)
            .iter()
            .all(|r| r.1 == RejectReason::Fragment)
    );
    // One frame larger than a connection may hold: UNAVAILABLE once it
    // passes the bound, and that frame's memory is given back.
    let b = net.join("s", 0, all_grants());
    queue_all(&mut net, b, cut(&frame_of(1, MIB)));
    net.run_until(WAIT, |net| !net.peers[b].rejects().is_empty());
    assert_eq!(rejects(&net, b)[0].1, RejectReason::Unavailable);
    // Many peers with half-finished frames: the relay's bound holds, and
    // the frames that do not fit are told UNAVAILABLE.
    let many: Vec<usize> = (0..6).map(|_| net.join("s", 0, all_grants())).collect();
    for &peer in &many {
        let parts = cut(&frame_of(1, 4 * MIB));
        queue_all(&mut net, peer, parts.into_iter().take(25));
    }
    let unavailable = |net: &Net, peer: usize| {
        rejects(net, peer)
            .iter()
            .any(|r| r.1 == RejectReason::Unavailable)
    };
    net.run_until(WAIT, |net| {
        peak = peak.max(net.shared.reassembly_bytes());
        many.iter().any(|&p| unavailable(net, p))
    });
    net.run_for(Duration::from_millis(500));
    assert!(peak <= per_relay, "the relay held {peak}");
    assert!(net.shared.reassembly_bytes() <= per_relay);
    // Their stall drops them all.
    net.run_for(Duration::from_secs(31));
    assert_eq!(net.shared.reassembly_bytes(), 0);
}

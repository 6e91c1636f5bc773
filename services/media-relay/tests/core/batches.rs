//! Batches (PROTOCOL §7): with `batch` in force, several whole frames per
//! message each way and `Acks`; each frame of a batch judged alone, and
//! a peer without `batch` sees no difference.

use std::time::Duration;

use deltamesh_proto::channel::Channel;
use deltamesh_proto::command;
use deltamesh_proto::pb::{self, RejectReason, command::Body};

use crate::fragments::{cut, deliveries, frame_of};
use crate::harness::{Net, all_grants};
use deltamesh_relay::RelayConfig;

const WAIT: Duration = Duration::from_secs(5);

/// The commands `peer` got, decoded.
fn commands(net: &Net, peer: usize) -> Vec<Body> {
    net.peers[peer]
        .received_on(Channel::Command)
        .filter_map(|bytes| command::decode(bytes).ok())
        .collect()
}

/// Asks for `batch` and waits for the relay's answer saying it is in force.
fn turn_on_batch(net: &mut Net, peer: usize) {
    let options = command::encode(Body::Options(pb::Options {
        batch: true,
        ..pb::Options::default()
    }));
    net.peers[peer].queue_raw(Channel::Command, options);
    net.run_until(WAIT, |net| {
        commands(net, peer)
            .iter()
            .any(|c| matches!(c, Body::Options(o) if o.batch))
    });
}

fn batch_of(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}

#[test]
fn batched_and_unbatched_peers_see_the_same_seqs_and_payloads() {
    let mut net = Net::new(RelayConfig::default());
    let sender = net.join("s", 0, all_grants());
    let plain = net.join("s", 0, all_grants());
    let batched = net.join("s", 0, all_grants());
    turn_on_batch(&mut net, sender);
    turn_on_batch(&mut net, batched);
    let frames: Vec<Vec<u8>> = (1..=40).map(|seq| frame_of(seq, 300)).collect();
    let large = frame_of(41, 100_000);
    let after: Vec<Vec<u8>> = (42..=45).map(|seq| frame_of(seq, 10)).collect();
    for chunk in frames.chunks(10) {
        net.peers[sender].queue_raw(Channel::Send, batch_of(chunk));
    }
    for part in cut(&large) {
        net.peers[sender].queue_raw(Channel::Send, part);
    }
    net.peers[sender].queue_raw(Channel::Send, batch_of(&after));
    net.run_until(WAIT, |net| {
        deliveries(net, plain).len() == 45 && deliveries(net, batched).len() == 45
    });
    let expected: Vec<(u64, Vec<u8>)> = frames
        .iter()
        .chain([&large])
        .chain(&after)
        .enumerate()
        .map(|(i, f)| (i as u64 + 1, f.clone()))
        .collect();
    assert_eq!(deliveries(&net, plain), expected);
    assert_eq!(deliveries(&net, batched), expected);
    // The unbatched peer got one relayed frame (or fragment) per message,
    // the batched one fewer messages than frames.
    let plain_messages = net.peers[plain].received_on(Channel::Receive).count();
    let batched_messages = net.peers[batched].received_on(Channel::Receive).count();
    let fragments = cut(&large).len() + 1;
    assert!(plain_messages >= 44 + fragments - 1, "{plain_messages}");
    assert!(batched_messages < plain_messages, "{batched_messages}");
    // The sender's acks came as `Acks`, in client_seq order, all 45.
    let mut acked = Vec::new();
    let mut acks_messages = 0;
    for body in commands(&net, sender) {
        match body {
            Body::Acks(acks) => {
                acks_messages += 1;
                acked.extend(acks.acks.iter().map(|a| (a.client_seq, a.seq)));
            }
            Body::Ack(ack) => acked.push((ack.client_seq, ack.seq)),
            _ => {}
        }
    }
    assert!(acks_messages >= 1);
    assert_eq!(acked, (1..=45).map(|s| (s, s)).collect::<Vec<_>>());
}

#[test]
fn a_peer_without_batch_only_gets_single_acks_and_a_batch_is_one_bad_frame() {
    let mut net = Net::new(RelayConfig::default());
    let a = net.join("s", 0, all_grants());
    net.peers[a].queue_raw(Channel::Send, batch_of(&[frame_of(1, 10), frame_of(2, 10)]));
    for seq in 1..=5 {
        net.peers[a].queue_raw(Channel::Send, frame_of(seq, 10));
    }
    net.run_until(WAIT, |net| net.peers[a].acks().len() == 5);
    assert!(!commands(&net, a).iter().any(|c| matches!(c, Body::Acks(_))));
    let rejects = net.peers[a].rejects();
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].reason(), RejectReason::LengthMismatch);
    // Without batch, two frames in one message are one frame whose length
    // does not match; the frames sent alone are stored.
    assert_eq!(
        net.peers[a].acks(),
        vec![(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    );
}

#[test]
fn a_bad_frame_in_a_batch_keeps_the_frames_before_and_after_it() {
    let mut net = Net::new(RelayConfig::default());
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 0, all_grants());
    turn_on_batch(&mut net, a);
    let mut bad = frame_of(2, 10);
    bad[60] ^= 1;
    net.peers[a].queue_raw(
        Channel::Send,
        batch_of(&[frame_of(1, 10), bad, frame_of(3, 10)]),
    );
    // A rest too short for a header, and a frame that runs past the end.
    let mut truncated = frame_of(4, 10);
    truncated.extend([0; 20]);
    net.peers[a].queue_raw(Channel::Send, truncated);
    let mut past_end = frame_of(5, 10);
    past_end.extend_from_slice(&frame_of(6, 10)[..60]);
    net.peers[a].queue_raw(Channel::Send, past_end);
    net.peers[a].queue_raw(Channel::Send, frame_of(7, 10));
    net.run_until(WAIT, |net| net.peers[a].acks().len() == 5);
    net.run_for(Duration::from_millis(50));
    let rejects: Vec<(u64, RejectReason)> = net.peers[a]
        .rejects()
        .iter()
        .map(|r| (r.client_seq, r.reason()))
        .collect();
    assert_eq!(
        rejects,
        vec![
            (2, RejectReason::BadChecksum),
            (0, RejectReason::Truncated),
            (6, RejectReason::LengthMismatch),
        ]
    );
    assert_eq!(
        net.peers[a].acks(),
        vec![(1, 1), (3, 2), (4, 3), (5, 4), (7, 5)]
    );
    net.run_until(WAIT, |net| deliveries(net, b).len() == 5);
    let payload_seqs: Vec<(u64, Vec<u8>)> = [1, 3, 4, 5, 7]
        .iter()
        .enumerate()
        .map(|(i, &c)| (i as u64 + 1, frame_of(c, 10)))
        .collect();
    assert_eq!(deliveries(&net, b), payload_seqs);
}

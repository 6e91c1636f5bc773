//! A peer whose connection drops reconnects and resumes: nothing lost,
//! nothing duplicated, unacknowledged frames stored once.

use std::collections::BTreeSet;
use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;
use deltamesh_proto::command;
use deltamesh_proto::pb::{self, ErrorCode, command::Body};
use deltamesh_worker::{NativePeer, PeerEvent};

use crate::common::{join, next_matching, stack};

const WAIT: Duration = Duration::from_secs(20);

/// What one peer has seen so far.
#[derive(Default)]
struct Seen {
    deltas: Vec<u64>,
    acked: BTreeSet<u64>,
    ack_seqs: Vec<u64>,
    welcomes: usize,
}

impl Seen {
    /// Reads events until `done` holds.
    async fn until(&mut self, peer: &mut NativePeer, done: impl Fn(&Seen) -> bool) {
        while !done(self) {
            match next_matching(peer, WAIT, Some).await {
                PeerEvent::Delta(d) => self.deltas.push(d.seq),
                PeerEvent::Acked { client_seq, seq } => {
                    self.acked.insert(client_seq);
                    self.ack_seqs.push(seq);
                }
                PeerEvent::Welcomed(_) => self.welcomes += 1,
                PeerEvent::Rejected(r) => panic!("rejected: {r:?}"),
                _ => {}
            }
        }
    }
}

async fn send_range(peer: &NativePeer, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        peer.send(1, Id::default(), i.to_le_bytes().to_vec())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_whose_connections_are_killed_mid_stream_resume_with_nothing_lost_or_doubled() {
    let stack = stack().await;
    let relay = stack.relays[0].clone();
    let mut sender = join(&stack, "resume").await;
    let mut receiver = join(&stack, "resume").await;
    let (sender_id, receiver_id) = (sender.peer_id(), receiver.peer_id());
    let (mut sent, mut received) = (Seen::default(), Seen::default());

    // The receiver is cut off after 100 deltas and more arrive meanwhile.
    send_range(&sender, 1..=100).await;
    received
        .until(&mut receiver, |s| s.deltas.len() == 100)
        .await;
    relay
        .disconnect("resume", receiver_id, "test")
        .await
        .unwrap();
    send_range(&sender, 101..=150).await;
    received.until(&mut receiver, |s| s.welcomes == 1).await;

    // The sender is cut off with frames in flight, and sends on regardless.
    relay.disconnect("resume", sender_id, "test").await.unwrap();
    send_range(&sender, 151..=300).await;
    sent.until(&mut sender, |s| s.welcomes == 1 && s.acked.len() == 300)
        .await;
    received
        .until(&mut receiver, |s| s.deltas.len() >= 300)
        .await;

    let mut ack_seqs = sent.ack_seqs.clone();
    ack_seqs.sort_unstable();
    ack_seqs.dedup();
    assert_eq!(
        ack_seqs,
        (1..=300).collect::<Vec<_>>(),
        "every frame stored once, gap-free"
    );
    assert_eq!(
        received.deltas,
        (1..=300).collect::<Vec<_>>(),
        "received once each, in order"
    );
    // Nothing more is on its way: no duplicate trails behind.
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(PeerEvent::Delta(d)) = receiver.next_event().await {
                return d.seq;
            }
        }
    })
    .await;
    assert!(extra.is_err(), "a duplicate arrived: {extra:?}");
    sender.close().await;
    receiver.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_a_wrong_token_is_refused_and_cannot_take_over_an_origin() {
    let stack = stack().await;
    let mut victim = join(&stack, "guarded").await;
    let mut intruder = join(&stack, "guarded").await;
    let forged = command::encode(Body::Resume(pb::Resume {
        last_seq: 0,
        previous_peer_id: victim.peer_id().0.to_vec(),
        resume_token: vec![0; 16],
    }));
    intruder.send_raw(Channel::Command, forged).await;
    let error = next_matching(&mut intruder, WAIT, |e| match e {
        PeerEvent::RelayError(e) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!(error.code(), ErrorCode::ResumeRefused);
    // The intruder's deltas still carry its own id, and the victim is untouched.
    intruder
        .send(1, Id::default(), b"mine".to_vec())
        .await
        .unwrap();
    let delta = next_matching(&mut victim, WAIT, |e| match e {
        PeerEvent::Delta(d) => Some(d),
        _ => None,
    })
    .await;
    assert_eq!(delta.origin, intruder.peer_id());
    victim.ping(3).await;
    let pong = next_matching(&mut victim, WAIT, |e| match e {
        PeerEvent::Pong(n) => Some(n),
        _ => None,
    })
    .await;
    assert_eq!(pong, 3, "the victim's connection was not replaced");
    stack.shutdown().await.unwrap();
}

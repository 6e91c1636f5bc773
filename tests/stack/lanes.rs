//! The native peer's lanes: the WebSocket lane forced, resuming on one lane
//! what began on the other (nothing lost or doubled), and falling back by
//! itself when WebRTC cannot connect.

use std::time::Duration;

use deltamesh::RunningStack;
use deltamesh_proto::Id;
use deltamesh_worker::{ConnectOptions, Lane, LaneChoice, NativePeer, PeerEvent};

use crate::common::{TOKEN, join, next_matching, stack, stack_with};

const WAIT: Duration = Duration::from_secs(20);

async fn join_over(stack: &RunningStack, session: &str, lane: LaneChoice) -> NativePeer {
    let mut options = ConnectOptions::new(&stack.signal_url(), session, TOKEN);
    options.lane = lane;
    NativePeer::connect(options).await.expect("peer connects")
}

/// What one peer has seen so far.
#[derive(Default)]
struct Seen {
    deltas: Vec<u64>,
    acks: Vec<u64>,
    /// The peer id of each welcome after the first.
    welcomes: Vec<Id>,
}

impl Seen {
    async fn until(&mut self, peer: &mut NativePeer, done: impl Fn(&Seen) -> bool) {
        while !done(self) {
            match next_matching(peer, WAIT, Some).await {
                PeerEvent::Delta(d) => self.deltas.push(d.seq),
                PeerEvent::Acked { seq, .. } => self.acks.push(seq),
                PeerEvent::Welcomed(w) => self.welcomes.push(Id::from_slice(&w.peer_id).unwrap()),
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
async fn a_native_peer_on_the_websocket_lane_shares_the_order_of_webrtc_peers() {
    let stack = stack().await;
    let mut lane = join_over(&stack, "native-lane", LaneChoice::WebSocket).await;
    let mut rtc = join(&stack, "native-lane").await;
    assert_eq!(lane.lane(), Lane::WebSocket);
    assert_eq!(rtc.lane(), Lane::WebRtcUdp);
    send_range(&lane, 1..=100).await;
    send_range(&rtc, 101..=200).await;
    let (mut on_lane, mut on_rtc) = (Seen::default(), Seen::default());
    on_lane
        .until(&mut lane, |s| s.deltas.len() == 100 && s.acks.len() == 100)
        .await;
    on_rtc
        .until(&mut rtc, |s| s.deltas.len() == 100 && s.acks.len() == 100)
        .await;
    let mut all: Vec<u64> = on_lane
        .deltas
        .iter()
        .chain(&on_lane.acks)
        .copied()
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<_>>(), "one order, gap-free");
    assert_eq!(
        on_lane.deltas, on_rtc.acks,
        "each sees the other's at the seqs they were acked"
    );
    assert_eq!(on_rtc.deltas, on_lane.acks);
    stack.shutdown().await.unwrap();
}

/// A sender begins on `from`, is cut off mid-stream with frames in flight,
/// and resumes on `to`: every delta stored once, received once, in order.
async fn resume_across(from: LaneChoice, to: LaneChoice, to_lane: Lane) {
    let stack = stack().await;
    let relay = stack.relays[0].clone();
    let session = format!("cross-{from:?}-{to:?}");
    let mut sender = join_over(&stack, &session, from).await;
    let mut receiver = join(&stack, &session).await;
    let (mut sent, mut received) = (Seen::default(), Seen::default());
    send_range(&sender, 1..=100).await;
    sent.until(&mut sender, |s| s.acks.len() == 100).await;

    sender.set_lane(to);
    relay
        .disconnect(&session, sender.peer_id(), "test")
        .await
        .unwrap();
    send_range(&sender, 101..=300).await;
    sent.until(&mut sender, |s| {
        !s.welcomes.is_empty() && s.acks.len() >= 300
    })
    .await;
    assert_eq!(sender.lane(), to_lane, "resumed on the other lane");
    received
        .until(&mut receiver, |s| s.deltas.len() >= 300)
        .await;

    let mut acks = sent.acks.clone();
    acks.sort_unstable();
    acks.dedup();
    assert_eq!(
        acks,
        (1..=300).collect::<Vec<_>>(),
        "stored once each, gap-free"
    );
    assert_eq!(
        received.deltas,
        (1..=300).collect::<Vec<_>>(),
        "received once each, in order"
    );
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(PeerEvent::Delta(d)) = receiver.next_event().await {
                return d.seq;
            }
        }
    })
    .await;
    assert!(extra.is_err(), "a duplicate arrived: {extra:?}");

    // The receiver, too, resumes across lanes without a gap.
    receiver.set_lane(from);
    let receiver_id = *received.welcomes.last().unwrap_or(&receiver.peer_id());
    relay
        .disconnect(&session, receiver_id, "test")
        .await
        .unwrap();
    send_range(&sender, 301..=350).await;
    received
        .until(&mut receiver, |s| s.deltas.len() >= 350)
        .await;
    assert_eq!(received.deltas, (1..=350).collect::<Vec<_>>());
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_began_on_the_websocket_lane_resumes_on_webrtc_with_nothing_lost_or_doubled() {
    resume_across(LaneChoice::WebSocket, LaneChoice::WebRtc, Lane::WebRtcUdp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_began_on_webrtc_resumes_on_the_websocket_lane_with_nothing_lost_or_doubled() {
    resume_across(LaneChoice::WebRtc, LaneChoice::WebSocket, Lane::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_webrtc_cannot_connect_falls_back_to_the_websocket_lane_by_itself() {
    // The relay advertises an address nothing answers on: offers are
    // answered, ICE never completes.
    let stack = stack_with(|relay| {
        relay.advertised_ip = "192.0.2.1".parse().unwrap();
    })
    .await;
    let mut options = ConnectOptions::new(&stack.signal_url(), "fallback", TOKEN);
    options.lane_times.webrtc_fallback = Duration::from_millis(800);
    let started = std::time::Instant::now();
    let mut peer = NativePeer::connect(options).await.expect("connects");
    assert_eq!(peer.lane(), Lane::WebSocket);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    peer.send(1, Id::default(), b"over the socket".to_vec())
        .await
        .unwrap();
    next_matching(&mut peer, WAIT, |e| match e {
        PeerEvent::Acked { seq: 1, .. } => Some(()),
        _ => None,
    })
    .await;
    stack.shutdown().await.unwrap();
}

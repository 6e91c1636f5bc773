//! A peer that stops taking deltas is cut off once it has stalled, and never
//! holds the rest of the session back.

use std::time::{Duration, Instant};

use crate::common::{TOKEN, join, next_matching, stack_with};
use deltamesh_proto::Id;
use deltamesh_worker::{ConnectOptions, LaneChoice, NativePeer, PeerEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_is_disconnected_and_never_stalls_the_others() {
    let stack = stack_with(|relay| {
        relay.stall_timeout = Duration::from_secs(2);
        // Long enough that only the stall rule can explain the disconnect.
        relay.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut sender = join(&stack, "busy").await;
    let mut reader = join(&stack, "busy").await;
    let frozen = join(&stack, "busy").await;
    let frozen_id = frozen.peer_id();
    frozen.vanish().await;

    let started = Instant::now();
    for i in 0..500u32 {
        sender
            .send(1, Id::default(), i.to_le_bytes().repeat(64))
            .await
            .unwrap();
    }
    let mut seqs = Vec::new();
    let mut frozen_left = false;
    while seqs.len() < 500 || !frozen_left {
        match next_matching(&mut reader, Duration::from_secs(10), Some).await {
            PeerEvent::Delta(d) => seqs.push(d.seq),
            PeerEvent::PeerLeft(id) if id == frozen_id => frozen_left = true,
            _ => {}
        }
    }
    assert_eq!(
        seqs,
        (1..=500).collect::<Vec<_>>(),
        "the reader got everything in order"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the frozen peer was cut off as stalled, not by the idle timeout"
    );
    assert_eq!(stack.relays[0].peer_count(), 2);
    let _ = next_matching(&mut sender, Duration::from_secs(5), |e| match e {
        PeerEvent::Acked { seq: 500, .. } => Some(()),
        _ => None,
    })
    .await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_resumes_further_behind_than_the_limit_catches_up_instead_of_being_dropped() {
    let stack = stack_with(|relay| relay.slow_consumer_limit = 1_000).await;
    let mut sender = join(&stack, "backlog").await;
    // The reader stays away for 3 s (± 20%) after it is dropped, long
    // after the burst below is stored, so it comes back to the whole
    // backlog at once rather than racing a burst still under way.
    let mut options =
        ConnectOptions::new(&stack.signal_url(), "backlog", TOKEN).with_lane(LaneChoice::WebRtc);
    options.reconnect.first_retry = Duration::from_secs(3);
    let mut reader = NativePeer::connect(options).await.unwrap();
    stack.relays[0]
        .disconnect("backlog", reader.peer_id(), "test")
        .await
        .unwrap();
    // While the reader is away the session moves 3 limits ahead.
    let burst = Instant::now();
    for i in 0..3_000u32 {
        sender
            .send(1, Id::default(), i.to_le_bytes().to_vec())
            .await
            .unwrap();
    }
    next_matching(&mut sender, Duration::from_secs(15), |e| match e {
        PeerEvent::Acked { seq: 3_000, .. } => Some(()),
        _ => None,
    })
    .await;
    assert!(
        burst.elapsed() < Duration::from_millis(2_400),
        "the burst was stored before the reader could return ({:?})",
        burst.elapsed()
    );
    let mut seqs = Vec::new();
    while seqs.len() < 3_000 {
        match next_matching(&mut reader, Duration::from_secs(15), Some).await {
            PeerEvent::Delta(d) => seqs.push(d.seq),
            PeerEvent::RelayError(e) => panic!("the catching-up reader was refused: {e:?}"),
            _ => {}
        }
    }
    assert_eq!(
        seqs,
        (1..=3_000).collect::<Vec<_>>(),
        "all of the backlog, in order"
    );
    stack.shutdown().await.unwrap();
}

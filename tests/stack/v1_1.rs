//! NEEDS THE RELAY BRANCHES (fragments/batches and presence/direct
//! messages): v1.1 end to end through the one-process stack, native peers.
//! To use after the merge: copy to tests/stack/v1_1.rs and add `mod v1_1;`
//! to tests/stack/main.rs. Against today's relay they fail (it answers
//! batch/presence false and has no PeerSignal).

use std::time::Duration;

use crate::common::{join, next_matching, stack};
use deltamesh_proto::Id;
use deltamesh_proto::pb::ErrorCode;
use deltamesh_worker::PeerEvent;

async fn options_in_force(peer: &mut deltamesh_worker::NativePeer) -> deltamesh_proto::pb::Options {
    next_matching(peer, Duration::from_secs(5), |e| match e {
        PeerEvent::OptionsInForce(o) => Some(o),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_1_relay_answers_batch_and_presence_in_force() {
    let stack = stack().await;
    let mut a = join(&stack, "v11-options").await;
    let options = options_in_force(&mut a).await;
    assert!(options.batch && options.presence, "{options:?}");
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_delta_arrives_whole_through_fragments() {
    let stack = stack().await;
    let a = join(&stack, "v11-big").await;
    let mut b = join(&stack, "v11-big").await;
    let payload: Vec<u8> = (0..1_048_576u32).map(|i| (i * 31 % 251) as u8).collect();
    a.send(1, Id([3; 16]), payload.clone())
        .await
        .expect("queued");
    let delta = next_matching(&mut b, Duration::from_secs(20), |e| match e {
        PeerEvent::Delta(d) => Some(d),
        _ => None,
    })
    .await;
    assert_eq!(delta.payload(), &payload[..]);
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_deltas_are_batched_and_all_acknowledged_in_order() {
    let stack = stack().await;
    let mut a = join(&stack, "v11-batch").await;
    let mut b = join(&stack, "v11-batch").await;
    let _ = options_in_force(&mut a).await;
    for i in 0..2000u32 {
        a.send(1, Id::default(), i.to_le_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut next = 0u32;
    while next < 2000 {
        let delta = next_matching(&mut b, Duration::from_secs(20), |e| match e {
            PeerEvent::Delta(d) => Some(d),
            _ => None,
        })
        .await;
        assert_eq!(delta.payload(), &next.to_le_bytes());
        next += 1;
    }
    let mut acked = 0;
    while acked < 2000 {
        next_matching(&mut a, Duration::from_secs(20), |e| match e {
            PeerEvent::Acked { .. } => Some(()),
            PeerEvent::Rejected(r) => panic!("rejected: {r:?}"),
            _ => None,
        })
        .await;
        acked += 1;
    }
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reaches_the_other_peer_and_is_cleared_when_its_owner_leaves() {
    let stack = stack().await;
    let mut a = join(&stack, "v11-presence").await;
    let mut b = join(&stack, "v11-presence").await;
    let a_id = a.peer_id();
    let _ = options_in_force(&mut a).await;
    a.set_presence(b"cursor 1".to_vec()).await.unwrap();
    a.set_presence(b"cursor 2".to_vec()).await.unwrap();
    let (peer, state) = next_matching(&mut b, Duration::from_secs(5), |e| match e {
        PeerEvent::Presence { peer, state } if state == b"cursor 2" => Some((peer, state)),
        _ => None,
    })
    .await;
    assert_eq!((peer, state), (a_id, b"cursor 2".to_vec()));
    // A native peer cannot clear (str0m sends no empty message): it is
    // told so instead of the clear vanishing silently.
    assert!(matches!(
        a.set_presence(Vec::new()).await,
        Err(deltamesh_worker::SendError::EmptyPresence)
    ));
    a.close().await;
    let cleared = next_matching(&mut b, Duration::from_secs(5), |e| match e {
        PeerEvent::Presence { peer, state } if peer == a_id => Some(state),
        _ => None,
    })
    .await;
    assert!(cleared.is_empty());
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_reaches_its_peer_and_an_unknown_peer_is_an_error() {
    let stack = stack().await;
    let mut a = join(&stack, "v11-dm").await;
    let mut b = join(&stack, "v11-dm").await;
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    a.send_to(b_id, b"offer".to_vec()).await.unwrap();
    let (from, payload) = next_matching(&mut b, Duration::from_secs(5), |e| match e {
        PeerEvent::Message { from, payload } => Some((from, payload)),
        _ => None,
    })
    .await;
    assert_eq!((from, payload), (a_id, b"offer".to_vec()));
    let nobody = Id([9; 16]);
    a.send_to(nobody, b"hello?".to_vec()).await.unwrap();
    let error = next_matching(&mut a, Duration::from_secs(5), |e| match e {
        PeerEvent::RelayError(e) => Some(e),
        _ => None,
    })
    .await;
    assert_eq!(error.code(), ErrorCode::UnknownPeer);
    assert!(
        error.detail.contains(&nobody.to_string()),
        "{}",
        error.detail
    );
    stack.shutdown().await.unwrap();
}

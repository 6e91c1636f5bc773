//! Deltas through one relay, end to end: real HTTP signaling, real UDP,
//! real WebRTC (str0m on both sides).

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{join, next_matching, stack};
use deltamesh_proto::Id;
use deltamesh_worker::PeerEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_deltas_arrive_in_order_intact_and_acknowledged_and_stay_in_their_session() {
    let stack = stack().await;
    let mut a = join(&stack, "doc-1").await;
    let mut b = join(&stack, "doc-1").await;
    let mut outsider = join(&stack, "doc-2").await;
    let a_id = a.peer_id();
    assert!(
        b.welcome().peers.contains(&a_id.0.to_vec()),
        "B's welcome lists A"
    );

    let doc = Id([7; 16]);
    let payload = |i: u64| {
        format!("delta number {i} ")
            .repeat((i % 7 + 1) as usize)
            .into_bytes()
    };
    let sender = async {
        let mut client_seqs = Vec::new();
        for i in 1..=1000u64 {
            client_seqs.push(a.send(3, doc, payload(i)).await.expect("queued"));
        }
        let mut acked = HashSet::new();
        let mut seqs = Vec::new();
        while acked.len() < 1000 {
            let (client_seq, seq) = next_matching(&mut a, Duration::from_secs(30), |e| match e {
                PeerEvent::Acked { client_seq, seq } => Some((client_seq, seq)),
                PeerEvent::Rejected(r) => panic!("rejected: {r:?}"),
                _ => None,
            })
            .await;
            assert!(acked.insert(client_seq), "one ack per delta");
            seqs.push(seq);
        }
        assert_eq!(client_seqs, (1..=1000).collect::<Vec<_>>());
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=1000).collect::<Vec<_>>(),
            "acks name gap-free seqs"
        );
        a
    };
    let receiver = async {
        let mut received = Vec::new();
        while received.len() < 1000 {
            let delta = next_matching(&mut b, Duration::from_secs(30), |e| match e {
                PeerEvent::Delta(d) => Some(d),
                _ => None,
            })
            .await;
            received.push(delta);
        }
        (b, received)
    };
    let (a, (b, received)) = tokio::join!(sender, receiver);
    for (i, delta) in received.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(delta.seq, n, "seq order, gap-free");
        assert_eq!(delta.origin, a_id);
        assert_eq!(delta.kind, 3);
        assert_eq!(delta.doc_id, doc);
        assert_eq!(delta.payload(), payload(n), "payload intact");
    }

    // The outsider in another session got none of it.
    let leaked = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(PeerEvent::Delta(d)) = outsider.next_event().await {
                return d;
            }
        }
    })
    .await;
    assert!(leaked.is_err(), "no delta crosses sessions: {leaked:?}");

    a.close().await;
    b.close().await;
    outsider.close().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_all_send_and_receive_see_every_other_delta_in_one_order() {
    let stack = stack().await;
    let mut peers = Vec::new();
    for _ in 0..3 {
        peers.push(join(&stack, "chorus").await);
    }
    let ids: Vec<Id> = peers.iter().map(|p| p.peer_id()).collect();
    let per_peer = 200u32;
    let runs: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(n, mut peer)| {
            tokio::spawn(async move {
                for i in 0..per_peer {
                    peer.send(1, Id::default(), format!("{n}:{i}").into_bytes())
                        .await
                        .unwrap();
                }
                let others = 2 * per_peer as usize;
                let (mut acks, mut got) = (Vec::new(), Vec::new());
                while acks.len() < per_peer as usize || got.len() < others {
                    match next_matching(&mut peer, Duration::from_secs(30), Some).await {
                        PeerEvent::Acked { seq, .. } => acks.push(seq),
                        PeerEvent::Delta(d) => got.push((d.seq, d.origin, d.payload().to_vec())),
                        PeerEvent::Rejected(r) => panic!("rejected: {r:?}"),
                        _ => {}
                    }
                }
                (acks, got)
            })
        })
        .collect();
    let mut results = Vec::new();
    for run in runs {
        results.push(run.await.unwrap());
    }
    let mut all = std::collections::BTreeMap::new();
    for (n, (acks, got)) in results.into_iter().enumerate() {
        assert!(
            got.windows(2).all(|w| w[0].0 < w[1].0),
            "peer {n}: seq order"
        );
        assert!(
            got.iter().all(|(_, origin, _)| *origin != ids[n]),
            "no echo"
        );
        for seq in acks {
            assert!(all.insert(seq, n).is_none(), "one seq, one delta");
        }
        for (seq, origin, payload) in got {
            let sender = ids.iter().position(|id| *id == origin).unwrap();
            assert!(
                String::from_utf8(payload)
                    .unwrap()
                    .starts_with(&format!("{sender}:"))
            );
            assert_eq!(
                all.get(&seq).copied().unwrap_or(sender),
                sender,
                "same order everywhere"
            );
        }
    }
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=600).collect::<Vec<u64>>()
    );
    stack.shutdown().await.unwrap();
}

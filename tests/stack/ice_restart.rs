//! ICE restart (RFC 9725 §4.4, PROTOCOL §1): a native peer whose network
//! changes mid-stream moves its UDP socket from 127.0.0.1 to 127.0.0.2 with
//! a `PATCH` (`If-Match: *`) and keeps its connection: same peer id, no new
//! `Welcome`, no disconnect, nothing lost or doubled in either direction.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_worker::{NativePeer, PeerEvent};

use crate::common::{join, next_matching, stack};

const WAIT: Duration = Duration::from_secs(20);

/// What one peer saw: delta payloads (as numbers), acks, and anything that
/// would mean the connection was replaced.
#[derive(Default, Debug)]
struct Seen {
    deltas: Vec<(u64, u64)>,
    acked: usize,
    welcomes: usize,
    disconnects: Vec<String>,
}

impl Seen {
    async fn until(&mut self, peer: &mut NativePeer, done: impl Fn(&Seen) -> bool) {
        while !done(self) {
            match next_matching(peer, WAIT, Some).await {
                PeerEvent::Delta(d) => {
                    let number = u64::from_le_bytes(d.payload().try_into().unwrap());
                    self.deltas.push((d.seq, number));
                }
                PeerEvent::Acked { .. } => self.acked += 1,
                PeerEvent::Welcomed(_) => self.welcomes += 1,
                PeerEvent::Disconnected(why) => self.disconnects.push(why),
                PeerEvent::Rejected(r) => panic!("rejected: {r:?}"),
                _ => {}
            }
        }
    }
}

async fn send_range(peer: &NativePeer, range: std::ops::Range<u64>) {
    for i in range {
        peer.send(1, Id::default(), i.to_le_bytes().to_vec())
            .await
            .unwrap();
    }
}

fn assert_in_order_once(deltas: &[(u64, u64)], count: u64) {
    let numbers: Vec<u64> = deltas.iter().map(|&(_, n)| n).collect();
    assert_eq!(
        numbers,
        (0..count).collect::<Vec<_>>(),
        "lost, doubled or reordered"
    );
    assert!(
        deltas.windows(2).all(|w| w[1].0 > w[0].0),
        "seqs out of order: {deltas:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_peer_moved_to_another_address_mid_stream_keeps_its_connection() {
    let stack = stack().await;
    let mut mover = join(&stack, "restart").await;
    let mut other = join(&stack, "restart").await;
    let mover_id = mover.peer_id();
    let (mut moved, mut stayed) = (Seen::default(), Seen::default());

    // Deltas both ways in flight when the network changes.
    send_range(&mover, 0..300).await;
    send_range(&other, 0..300).await;
    let new_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    mover.move_to(new_ip).await.expect("the relay restarts ICE");
    send_range(&mover, 300..600).await;
    send_range(&other, 300..600).await;

    moved
        .until(&mut mover, |s| s.acked == 600 && s.deltas.len() == 600)
        .await;
    stayed
        .until(&mut other, |s| s.acked == 600 && s.deltas.len() == 600)
        .await;
    assert_in_order_once(&moved.deltas, 600);
    assert_in_order_once(&stayed.deltas, 600);
    assert_eq!(
        moved.welcomes, 0,
        "a new Welcome: the connection was replaced ({:?})",
        moved.disconnects
    );
    assert!(moved.disconnects.is_empty(), "{:?}", moved.disconnects);
    assert_eq!(mover.peer_id(), mover_id);

    // The relay still lists the same peer, once, and it is still connected;
    // the peer id the other side sees as the origin did not change.
    let peers: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/v1/sessions/restart/peers", stack.signal_url()))
        .bearer_auth(crate::common::TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    let listed: Vec<&str> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{peers}");
    assert!(listed.contains(&mover_id.to_string().as_str()), "{peers}");

    mover.close().await;
    other.close().await;
    stack.shutdown().await.unwrap();
}

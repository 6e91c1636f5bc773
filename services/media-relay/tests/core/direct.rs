//! Direct messages (PROTOCOL §9): `PeerSignal` across shards in order with
//! the sender's id, and every refusal with the recipient's id in its detail.

use std::time::Duration;

use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::{Grants, Id};
use deltamesh_relay::RelayConfig;

use crate::harness::{Net, all_grants};

const WAIT: Duration = Duration::from_secs(5);

fn signalling() -> Grants {
    Grants {
        signal: true,
        ..all_grants()
    }
}

fn signal(net: &mut Net, from: usize, to: &[u8], payload: &[u8]) {
    net.peers[from].command_raw(Body::Signal(pb::PeerSignal {
        peer_id: to.to_vec(),
        payload: payload.to_vec(),
    }));
}

/// The direct messages `peer` received: sender and payload.
fn signals(net: &Net, peer: usize) -> Vec<(Id, Vec<u8>)> {
    net.peers[peer]
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Body::Signal(s) => Some((Id::from_slice(&s.peer_id).expect("16 bytes"), s.payload)),
            _ => None,
        })
        .collect()
}

fn errors(net: &Net, peer: usize) -> Vec<pb::Error> {
    net.peers[peer]
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Body::Error(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// Runs until `peer` has `count` errors and returns the last.
fn next_error(net: &mut Net, peer: usize, count: usize) -> pb::Error {
    net.run_until(WAIT, |net| errors(net, peer).len() >= count);
    errors(net, peer).pop().expect("an error")
}

#[test]
fn direct_messages_cross_shards_in_order_with_the_senders_id() {
    let mut net = Net::new(RelayConfig {
        shards: 2,
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, signalling());
    let b = net.join("s", 1, signalling());
    // Receiving needs no grant.
    let quiet = net.join("s", 1, all_grants());
    let (a_id, b_id, quiet_id) = (
        net.peers[a].peer_id,
        net.peers[b].peer_id,
        net.peers[quiet].peer_id,
    );
    for i in 0..100u32 {
        signal(&mut net, a, &b_id.0, format!("offer {i}").as_bytes());
        if i % 10 == 0 {
            net.progress();
        }
    }
    signal(&mut net, b, &a_id.0, b"answer");
    signal(&mut net, a, &quiet_id.0, &[1; 16 * 1024]);
    net.run_until(WAIT, |net| {
        signals(net, b).len() == 100 && signals(net, a).len() == 1 && signals(net, quiet).len() == 1
    });
    let expected: Vec<(Id, Vec<u8>)> = (0..100u32)
        .map(|i| (a_id, format!("offer {i}").into_bytes()))
        .collect();
    assert_eq!(signals(&net, b), expected, "in order, from a");
    assert_eq!(signals(&net, a), vec![(b_id, b"answer".to_vec())]);
    assert_eq!(signals(&net, quiet), vec![(a_id, vec![1; 16 * 1024])]);
    for peer in [a, b, quiet] {
        assert!(errors(&net, peer).is_empty(), "{:?}", errors(&net, peer));
    }
}

#[test]
fn a_direct_message_without_the_signal_grant_is_refused() {
    let mut net = Net::new(RelayConfig::default());
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 0, signalling());
    let b_id = net.peers[b].peer_id;
    signal(&mut net, a, &b_id.0, b"hello");
    let error = next_error(&mut net, a, 1);
    assert_eq!(error.code, pb::ErrorCode::NotPermitted as i32);
    assert!(error.detail.contains(&b_id.to_string()), "{}", error.detail);
    net.run_for(Duration::from_millis(100));
    assert!(signals(&net, b).is_empty());
}

#[test]
fn direct_messages_to_unknown_peers_other_sessions_or_oneself_and_oversize_ones_are_refused() {
    let mut net = Net::new(RelayConfig {
        shards: 2,
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, signalling());
    let b = net.join("s", 1, signalling());
    let elsewhere = net.join("other", 1, signalling());
    let (a_id, b_id, elsewhere_id) = (
        net.peers[a].peer_id,
        net.peers[b].peer_id,
        net.peers[elsewhere].peer_id,
    );
    let nobody = Id::random();
    let cases: [(&[u8], usize, pb::ErrorCode, String); 5] = [
        (&nobody.0, 1, pb::ErrorCode::UnknownPeer, nobody.to_string()),
        (&a_id.0, 1, pb::ErrorCode::UnknownPeer, a_id.to_string()),
        (
            &elsewhere_id.0,
            1,
            pb::ErrorCode::UnknownPeer,
            elsewhere_id.to_string(),
        ),
        (
            &b_id.0,
            16 * 1024 + 1,
            pb::ErrorCode::TooLarge,
            b_id.to_string(),
        ),
        (
            &[1, 2, 3, 4, 5],
            1,
            pb::ErrorCode::UnknownPeer,
            "invalid peer id".into(),
        ),
    ];
    for (n, (to, size, code, detail)) in cases.iter().enumerate() {
        signal(&mut net, a, to, &vec![0; *size]);
        let error = next_error(&mut net, a, n + 1);
        assert_eq!(error.code, *code as i32, "case {n}: {error:?}");
        assert!(
            error.detail.contains(detail.as_str()),
            "case {n}: {}",
            error.detail
        );
    }
    // A peer of another session names a's id and never reaches it either.
    signal(&mut net, elsewhere, &a_id.0, b"cross-session");
    let error = next_error(&mut net, elsewhere, 1);
    assert_eq!(error.code, pb::ErrorCode::UnknownPeer as i32);
    net.run_for(Duration::from_millis(100));
    for peer in [a, b, elsewhere] {
        assert!(signals(&net, peer).is_empty(), "nothing was delivered");
    }
}

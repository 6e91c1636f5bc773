//! Presence (PROTOCOL §8) and direct messages (§9) across relays, with
//! bare peers ([`RawPeer`]) over real WebRTC and a real nats-server.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;
use deltamesh_proto::pb::{self, command::Body};

use crate::common::Fleet;
use crate::raw_peer::RawPeer;

const WAIT: Duration = Duration::from_secs(20);

/// Puts `presence` in force and waits for the relay's answer.
async fn presence_on(peer: &mut RawPeer) {
    let answers = |p: &RawPeer| {
        p.commands()
            .iter()
            .filter(|c| matches!(c, Body::Options(o) if o.presence))
            .count()
    };
    let before = answers(peer);
    peer.command(Body::Options(pb::Options {
        presence: true,
        ..pb::Options::default()
    }));
    let answered = peer
        .wait_for(WAIT, |p| (answers(p) > before).then_some(()))
        .await;
    assert!(answered.is_some(), "presence in force");
}

/// What `peer` knows: each other peer's highest version and its state.
fn latest(peer: &RawPeer) -> HashMap<Id, Vec<u8>> {
    let mut known: HashMap<Id, (u64, Vec<u8>)> = HashMap::new();
    for (from, version, state) in peer.presence() {
        if known.get(&from).is_none_or(|(v, _)| version > *v) {
            known.insert(from, (version, state));
        }
    }
    known.into_iter().map(|(id, (_, s))| (id, s)).collect()
}

fn signals(peer: &RawPeer) -> Vec<(Id, Vec<u8>)> {
    peer.commands()
        .into_iter()
        .filter_map(|c| match c {
            Body::Signal(s) => Some((Id::from_slice(&s.peer_id).ok()?, s.payload)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_direct_messages_cross_relays_and_stay_in_their_session() {
    // Two relays of two peers each: three peers of one session span both.
    let fleet = Fleet::start(1, 2, 2, 1).await;
    let signal = fleet.signals[0].1.clone();

    // The first peer's state exists before the session reaches the other
    // relay, which must learn it when it starts hosting the session.
    let mut peers = vec![RawPeer::join(&signal, "together").await];
    presence_on(&mut peers[0]).await;
    peers[0].write(Channel::Presence, b"peer 0 early".to_vec());
    peers[0].settle(Duration::from_millis(300)).await;
    for _ in 1..3 {
        let mut peer = RawPeer::join(&signal, "together").await;
        presence_on(&mut peer).await;
        peers.push(peer);
    }
    let relays: HashSet<Id> = peers.iter().map(|p| p.relay).collect();
    assert_eq!(relays.len(), 2, "the session spans both relays");
    let ids: Vec<Id> = peers.iter().map(|p| p.id).collect();
    for peer in &mut peers[1..] {
        let learned = peer
            .wait_for(WAIT, |p| {
                (latest(p).get(&ids[0]).map(Vec::as_slice) == Some(b"peer 0 early")).then_some(())
            })
            .await;
        assert!(learned.is_some(), "a later peer gets the current state");
    }
    for (i, peer) in peers.iter().enumerate() {
        peer.write(Channel::Presence, format!("peer {i}").into_bytes());
    }
    for (i, peer) in peers.iter_mut().enumerate() {
        let everyone = peer
            .wait_for(WAIT, |p| {
                let known = latest(p);
                (0..3)
                    .filter(|&j| j != i)
                    .all(|j| known.get(&ids[j]) == Some(&format!("peer {j}").into_bytes()))
                    .then_some(())
            })
            .await;
        assert!(
            everyone.is_some(),
            "peer {i} (relay {}) sees the others' presence: it knows {:?}; peers {:?}",
            peer.relay,
            latest(peer),
            ids
        );
        assert!(!latest(peer).contains_key(&ids[i]), "not its own");
    }

    // Direct messages between peers on different relays, in order.
    let (from, to) = (0..3)
        .flat_map(|a| (0..3).map(move |b| (a, b)))
        .find(|&(a, b)| peers[a].relay != peers[b].relay)
        .expect("two peers on different relays");
    for n in 0..50 {
        peers[from].command(Body::Signal(pb::PeerSignal {
            peer_id: ids[to].0.to_vec(),
            payload: format!("offer {n}").into_bytes(),
        }));
    }
    let expected: Vec<(Id, Vec<u8>)> = (0..50)
        .map(|n| (ids[from], format!("offer {n}").into_bytes()))
        .collect();
    let arrived = peers[to]
        .wait_for(WAIT, |p| (signals(p).len() >= 50).then_some(()))
        .await;
    assert!(
        arrived.is_some(),
        "{} of 50 arrived",
        signals(&peers[to]).len()
    );
    assert_eq!(signals(&peers[to]), expected, "in order, from the sender");

    // A peer of another session sees none of it and reaches no one.
    let mut outsider = RawPeer::join(&signal, "apart").await;
    presence_on(&mut outsider).await;
    outsider.command(Body::Signal(pb::PeerSignal {
        peer_id: ids[to].0.to_vec(),
        payload: b"from elsewhere".to_vec(),
    }));
    let refused = outsider
        .wait_for(WAIT, |p| {
            p.commands().into_iter().find_map(|c| match c {
                Body::Error(e) => Some(e),
                _ => None,
            })
        })
        .await
        .expect("refused");
    assert_eq!(refused.code, pb::ErrorCode::UnknownPeer as i32);
    assert!(refused.detail.contains(&ids[to].to_string()));
    peers[from].command(Body::Signal(pb::PeerSignal {
        peer_id: ids[to].0.to_vec(),
        payload: b"last".to_vec(),
    }));
    peers[from].write(Channel::Presence, b"peer moved".to_vec());
    let last = peers[to]
        .wait_for(WAIT, |p| (signals(p).len() == 51).then_some(()))
        .await;
    assert!(last.is_some());
    outsider.settle(Duration::from_millis(500)).await;
    assert!(
        outsider.presence().is_empty(),
        "no presence of another session"
    );
    assert!(
        signals(&outsider).is_empty(),
        "no direct message of another session"
    );
    assert!(
        signals(&peers[to])
            .iter()
            .all(|(_, p)| p != b"from elsewhere"),
        "nothing from another session"
    );

    // A peer that leaves has its state dropped on the other relay too: a
    // peer there whose presence comes into force again gets every other
    // current state, and not that one.
    let leaver = (0..3)
        .find(|&i| peers.iter().filter(|p| p.relay == peers[i].relay).count() == 1)
        .expect("a peer alone on its relay");
    let gone = ids[leaver];
    peers.remove(leaver).leave().await;
    let (stays, other) = (0, 1);
    let left = peers[stays]
        .wait_for(WAIT, |p| {
            p.commands()
                .iter()
                .any(|c| matches!(c, Body::PeerLeft(l) if l.peer_id == gone.0))
                .then_some(())
        })
        .await;
    assert!(left.is_some(), "PeerLeft");
    peers[stays].command(Body::Options(pb::Options::default()));
    peers[stays].settle(Duration::from_millis(300)).await;
    let before = peers[stays].presence().len();
    presence_on(&mut peers[stays]).await;
    let other_id = peers[other].id;
    let again = peers[stays]
        .wait_for(WAIT, |p| {
            p.presence()[before..]
                .iter()
                .any(|(from, _, _)| *from == other_id)
                .then_some(())
        })
        .await;
    assert!(again.is_some(), "the current states again");
    peers[stays].settle(Duration::from_millis(300)).await;
    assert!(
        peers[stays].presence()[before..]
            .iter()
            .all(|(from, _, _)| *from != gone),
        "the state of the peer that left is gone"
    );
}

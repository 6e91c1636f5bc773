//! ICE restart (RFC 9725 §4.4): a peer that moves to a new address and
//! restarts ICE keeps its connection, and the relay sends on the new path
//! whatever the new candidate's priority.

use std::net::SocketAddr;

use deltamesh_relay::{IceRestart, RelayConfig, RelayError};
use deltamesh_worker::PeerEvent;
use str0m::{Candidate, IceCreds};

use super::{WAIT, send};
use crate::harness::{Net, all_grants};

/// Moves `peer` (on shard 0) to `to` with an ICE restart offering
/// `candidate`, as a client on a new network does: the relay restarts
/// first (the `PATCH`), then the peer takes the relay's new credentials.
fn move_peer(net: &mut Net, peer: usize, to: SocketAddr, candidate: Candidate) {
    let creds = IceCreds::new();
    let now = net.now;
    let restarted = net.shards[0]
        .restart_ice(
            now,
            net.peers[peer].peer_id,
            IceRestart {
                remote: creds.clone(),
                candidates: vec![candidate],
            },
        )
        .expect("restarted");
    let test_peer = &mut net.peers[peer];
    let old = Candidate::host(test_peer.addr, "udp").expect("candidate");
    let mut api = test_peer.rtc.direct_api();
    api.set_local_ice_credentials(creds);
    api.set_remote_ice_credentials(IceCreds {
        ufrag: restarted.ice_ufrag,
        pass: restarted.ice_pwd,
    });
    test_peer
        .rtc
        .add_local_candidate(Candidate::host(to, "udp").expect("candidate"));
    test_peer.rtc.direct_api().invalidate_candidate(&old);
    test_peer.addr = to;
}

fn welcomes(net: &Net, peer: usize) -> usize {
    net.peers[peer]
        .events
        .iter()
        .filter(|e| matches!(e, PeerEvent::Welcomed(_)))
        .count()
}

#[test]
fn after_a_restart_from_a_new_address_the_relay_sends_there_even_at_a_lower_priority() {
    let mut net = Net::new(RelayConfig::default());
    let sender = net.join("s", 0, all_grants());
    let mover = net.join("s", 0, all_grants());
    send(&mut net, sender, 10);
    net.run_until(WAIT, |net| net.peers[mover].seqs().len() == 10);

    // The old address goes away with the old network; the new host
    // candidate ranks below the old one (as Chromium's may), so only a
    // real restart (old pairs flushed) moves the relay's send path.
    let to = SocketAddr::from(([127, 0, 0, 1], 29_999));
    let lower = Candidate::from_sdp_string("candidate:9 1 udp 1000 127.0.0.1 29999 typ host")
        .expect("candidate");
    move_peer(&mut net, mover, to, lower);
    send(&mut net, sender, 10);
    net.run_until(WAIT, |net| net.peers[mover].seqs().len() == 20);
    net.run_for(std::time::Duration::from_millis(200));
    assert_eq!(
        net.peers[mover].seqs(),
        (1..=20).collect::<Vec<_>>(),
        "nothing lost or doubled"
    );
    assert_eq!(
        welcomes(&net, mover),
        1,
        "the same connection: no new Welcome"
    );

    // And the path works the other way: the moved peer's deltas are stored.
    send(&mut net, mover, 5);
    net.run_until(WAIT, |net| net.peers[sender].seqs().len() == 5);
    assert_eq!(net.peers[sender].seqs(), (21..=25).collect::<Vec<_>>());

    // A second move works the same way.
    let again = SocketAddr::from(([127, 0, 0, 1], 29_998));
    let lower = Candidate::from_sdp_string("candidate:9 1 udp 900 127.0.0.1 29998 typ host")
        .expect("candidate");
    move_peer(&mut net, mover, again, lower);
    send(&mut net, sender, 10);
    net.run_until(WAIT, |net| net.peers[mover].seqs().len() == 30);
    assert_eq!(welcomes(&net, mover), 1);
}

#[test]
fn a_restart_without_new_credentials_is_refused_and_the_connection_stays() {
    let mut net = Net::new(RelayConfig::default());
    let sender = net.join("s", 0, all_grants());
    let peer = net.join("s", 0, all_grants());
    let now = net.now;
    let current = net.peers[peer].rtc.direct_api().local_ice_credentials();
    let refused = net.shards[0].restart_ice(
        now,
        net.peers[peer].peer_id,
        IceRestart {
            remote: current,
            candidates: Vec::new(),
        },
    );
    assert!(
        matches!(&refused, Err(RelayError::BadCandidate(why)) if why.contains("new ice-ufrag")),
        "{refused:?}"
    );
    let bad = net.shards[0].restart_ice(
        now,
        net.peers[peer].peer_id,
        IceRestart {
            remote: IceCreds {
                ufrag: "a b".into(),
                pass: "x".into(),
            },
            candidates: Vec::new(),
        },
    );
    assert!(matches!(bad, Err(RelayError::BadCandidate(_))), "{bad:?}");
    send(&mut net, sender, 3);
    net.run_until(WAIT, |net| net.peers[peer].seqs().len() == 3);
}

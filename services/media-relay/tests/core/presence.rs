//! Presence (PROTOCOL §8): states on channel 3 across shards, a late
//! joiner's current states, a leaving peer's state dropped, the per-peer
//! rate (latest wins, never queued), and what is dropped with a
//! rate-limited `Error`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::presence::PresenceState;
use deltamesh_relay::RelayConfig;

use crate::harness::{Net, all_grants};

const WAIT: Duration = Duration::from_secs(5);

/// Puts `presence` in force for `peer` and waits for the relay's answer.
fn presence_on(net: &mut Net, peer: usize) {
    net.peers[peer].command_raw(Body::Options(pb::Options {
        presence: true,
        ..pb::Options::default()
    }));
    net.run_until(WAIT, |net| {
        net.peers[peer]
            .commands()
            .iter()
            .any(|c| matches!(c, Body::Options(o) if o.presence))
    });
}

/// Sends `state` as `peer`'s presence.
fn set_state(net: &mut Net, peer: usize, state: &[u8]) {
    net.peers[peer].write_raw(Channel::Presence, state);
}

/// Every presence state `peer` received: when, whose, version, state.
fn received(net: &Net, peer: usize) -> Vec<(Instant, Id, u64, Vec<u8>)> {
    net.peers[peer]
        .received_raw(Channel::Presence)
        .into_iter()
        .map(|(at, bytes)| {
            let state = PresenceState::parse(bytes).expect("a relayed presence state");
            (at, state.peer_id, state.version, state.state.to_vec())
        })
        .collect()
}

/// What `peer` knows now: each other peer's highest version and its state.
fn latest(net: &Net, peer: usize) -> HashMap<Id, (u64, Vec<u8>)> {
    let mut known: HashMap<Id, (u64, Vec<u8>)> = HashMap::new();
    for (_, from, version, state) in received(net, peer) {
        if known.get(&from).is_none_or(|(v, _)| version > *v) {
            known.insert(from, (version, state));
        }
    }
    known
}

fn has(net: &Net, peer: usize, from: usize, state: &[u8]) -> bool {
    latest(net, peer)
        .get(&net.peers[from].peer_id)
        .is_some_and(|(_, s)| s == state)
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

#[test]
fn presence_crosses_shards_and_a_late_joiner_gets_the_current_states() {
    let mut net = Net::new(RelayConfig {
        shards: 2,
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 1, all_grants());
    let welcome = net.peers[a].core.welcome().expect("welcomed").clone();
    assert_eq!(welcome.max_presence_size, 1024);
    assert_eq!(welcome.presence_rate, 20);
    presence_on(&mut net, a);
    presence_on(&mut net, b);
    set_state(&mut net, a, b"a at 1,1");
    set_state(&mut net, b, b"b at 2,2");
    net.run_until(WAIT, |net| {
        has(net, a, b, b"b at 2,2") && has(net, b, a, b"a at 1,1")
    });
    assert!(
        !latest(&net, a).contains_key(&net.peers[a].peer_id),
        "a peer's own state is not sent back to it"
    );

    let c = net.join("s", 1, all_grants());
    net.run_for(Duration::from_millis(100));
    assert!(
        received(&net, c).is_empty(),
        "nothing on channel 3 before presence is in force"
    );
    presence_on(&mut net, c);
    net.run_until(WAIT, |net| {
        has(net, c, a, b"a at 1,1") && has(net, c, b, b"b at 2,2")
    });
    let late = latest(&net, c);
    assert_eq!(late[&net.peers[a].peer_id].0, 1, "the original version");
    assert_eq!(late[&net.peers[b].peer_id].0, 1, "the original version");

    // Then every change, with a higher version; turning presence on again
    // while it is in force sends nothing new.
    let before = received(&net, c).len();
    presence_on(&mut net, c);
    net.run_for(Duration::from_millis(100));
    assert_eq!(received(&net, c).len(), before, "on again: nothing new");
    set_state(&mut net, a, b"a at 3,3");
    net.run_until(WAIT, |net| {
        has(net, c, a, b"a at 3,3") && has(net, b, a, b"a at 3,3")
    });
    assert_eq!(latest(&net, c)[&net.peers[a].peer_id].0, 2);
    // (A clear, the empty message, cannot be sent from here: str0m's SCTP
    // writes no chunk for an empty message. Browsers send it as PPID 57.)
}

#[test]
fn a_peer_that_leaves_has_its_state_dropped_everywhere() {
    let mut net = Net::new(RelayConfig {
        shards: 2,
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 1, all_grants());
    presence_on(&mut net, a);
    presence_on(&mut net, b);
    set_state(&mut net, a, b"here");
    net.run_until(WAIT, |net| has(net, b, a, b"here"));
    let a_id = net.peers[a].peer_id;
    net.shards[0]
        .close(a_id, "leaving")
        .expect("a is on shard 0");
    net.run_until(WAIT, |net| {
        net.peers[b]
            .commands()
            .iter()
            .any(|c| matches!(c, Body::PeerLeft(l) if l.peer_id == a_id.0))
    });
    // Late joiners on either shard never hear of it.
    let c = net.join("s", 0, all_grants());
    let d = net.join("s", 1, all_grants());
    set_state(&mut net, b, b"b stays");
    presence_on(&mut net, c);
    presence_on(&mut net, d);
    net.run_until(WAIT, |net| {
        has(net, c, b, b"b stays") && has(net, d, b, b"b stays")
    });
    net.run_for(Duration::from_millis(100));
    for late in [c, d] {
        assert!(
            received(&net, late)
                .iter()
                .all(|(_, from, _, _)| *from != a_id),
            "the state of a peer that left is gone"
        );
    }
}

#[test]
fn a_thousand_states_in_a_second_are_forwarded_at_the_rate_and_the_last_one_arrives() {
    let mut net = Net::new(RelayConfig {
        shards: 2,
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 1, all_grants());
    presence_on(&mut net, a);
    presence_on(&mut net, b);
    // One state per millisecond for a second.
    for i in 0..1000u32 {
        set_state(&mut net, a, format!("cursor {i}").as_bytes());
        net.progress();
    }
    net.run_until(WAIT, |net| has(net, b, a, b"cursor 999"));
    net.run_for(Duration::from_millis(200));
    let got = received(&net, b);
    assert!(
        (15..=21).contains(&got.len()),
        "about presence_rate states per second forwarded, got {}",
        got.len()
    );
    assert_eq!(got.last().map(|s| s.3.as_slice()), Some(&b"cursor 999"[..]));
    let times: Vec<Instant> = got.iter().map(|s| s.0).collect();
    for window in times.windows(21) {
        assert!(
            window[20] - window[0] >= Duration::from_millis(950),
            "more than 20 states within a second"
        );
    }
    let versions: Vec<u64> = got.iter().map(|s| s.2).collect();
    assert!(versions.windows(2).all(|v| v[0] < v[1]), "{versions:?}");
    assert!(
        net.metrics.presence_skipped.get() >= 970,
        "intermediate states were skipped, not queued"
    );
}

#[test]
fn too_large_or_unpermitted_states_are_dropped_with_at_most_one_error_a_second() {
    let mut net = Net::new(RelayConfig::default());
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 0, all_grants());
    let reader = net.join(
        "s",
        0,
        deltamesh_proto::Grants {
            subscribe: true,
            ..Default::default()
        },
    );
    for peer in [a, b, reader] {
        presence_on(&mut net, peer);
    }
    for _ in 0..10 {
        set_state(&mut net, a, &[7; 1025]);
        net.progress();
    }
    net.run_for(Duration::from_millis(200));
    let too_large: Vec<pb::Error> = errors(&net, a);
    assert_eq!(too_large.len(), 1, "{too_large:?}");
    assert_eq!(too_large[0].code, pb::ErrorCode::TooLarge as i32);
    assert_eq!(net.metrics.presence_drops("too_large"), 10);
    // A second later, another Error; the largest allowed state passes.
    net.run_for(Duration::from_millis(800));
    set_state(&mut net, a, &[7; 1025]);
    set_state(&mut net, a, &[8; 1024]);
    net.run_until(WAIT, |net| has(net, b, a, &[8; 1024]));
    assert_eq!(errors(&net, a).len(), 2);

    for _ in 0..5 {
        set_state(&mut net, reader, b"not allowed");
        net.progress();
    }
    net.run_for(Duration::from_millis(200));
    let refused = errors(&net, reader);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].code, pb::ErrorCode::NotPermitted as i32);
    assert_eq!(net.metrics.presence_drops("not_permitted"), 5);
    let reader_id = net.peers[reader].peer_id;
    for peer in [a, b] {
        assert!(
            received(&net, peer)
                .iter()
                .all(|(_, from, _, state)| *from != reader_id && state.len() <= 1024),
            "nothing dropped was forwarded"
        );
    }
    // The reader without publish still receives.
    assert!(has(&net, reader, a, &[8; 1024]));
}

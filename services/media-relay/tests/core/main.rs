//! The relay's rules, driven in memory with a virtual clock (see
//! [`harness`]): no sockets, no runtime, milliseconds per test.

mod bad_input;
mod batches;
mod direct;
mod fragments;
mod harness;
mod ice_restart;
mod presence;
mod websocket;

use std::time::Duration;

use deltamesh_proto::channel::Channel;
use deltamesh_proto::command;
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::{FrameHeader, Grants, Id};
use deltamesh_relay::{Rate, RelayConfig};
use deltamesh_worker::PeerEvent;
use harness::{Net, all_grants};

const WAIT: Duration = Duration::from_secs(5);

fn frame(client_seq: u64) -> Vec<u8> {
    FrameHeader {
        client_seq,
        ..FrameHeader::default()
    }
    .encode(&client_seq.to_le_bytes())
    .expect("a frame")
}

fn send(net: &mut Net, peer: usize, count: u32) {
    for i in 0..count {
        net.peers[peer]
            .core
            .send(1, Id::default(), &i.to_le_bytes(), 0)
            .expect("queued");
    }
}

#[test]
fn deltas_fan_out_in_one_order_across_two_shards() {
    let mut net = Net::new(RelayConfig {
        shards: 2,
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 1, all_grants());
    let c = net.join("s", 1, all_grants());
    send(&mut net, a, 20);
    send(&mut net, b, 20);
    net.run_until(WAIT, |net| {
        net.peers[c].seqs().len() == 40 && net.peers[a].seqs().len() == 20
    });
    assert_eq!(net.peers[c].seqs(), (1..=40).collect::<Vec<_>>());
    let own_a: Vec<u64> = net.peers[a].acks().iter().map(|&(_, seq)| seq).collect();
    let mut everything = net.peers[a].seqs();
    everything.extend(own_a);
    everything.sort_unstable();
    assert_eq!(
        everything,
        (1..=40).collect::<Vec<_>>(),
        "a sees b's, acks its own"
    );
}

#[test]
fn over_the_delta_rate_is_rejected_and_the_rest_is_stored() {
    let mut net = Net::new(RelayConfig {
        delta_rate: Rate {
            per_second: 10,
            burst: 10,
        },
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 0, all_grants());
    send(&mut net, a, 15);
    net.run_until(WAIT, |net| {
        net.peers[a].acks().len() + net.peers[a].rejects().len() == 15
    });
    assert_eq!(net.peers[a].acks().len(), 10);
    let rejects = net.peers[a].rejects();
    assert!(
        rejects
            .iter()
            .all(|r| r.reason == pb::RejectReason::Rate as i32)
    );
    net.run_until(WAIT, |net| net.peers[b].seqs().len() == 10);
}

#[test]
fn a_gap_in_client_seq_is_rejected_and_a_resend_keeps_its_seq() {
    let mut net = Net::new(RelayConfig::default());
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 0, all_grants());
    net.peers[a].write_raw(Channel::Send, &frame(5));
    net.run_until(WAIT, |net| net.peers[a].rejects().len() == 1);
    assert_eq!(
        net.peers[a].rejects()[0].reason,
        pb::RejectReason::SequenceGap as i32
    );
    net.peers[a].write_raw(Channel::Send, &frame(1));
    net.peers[a].write_raw(Channel::Send, &frame(1));
    net.run_until(WAIT, |net| net.peers[a].acks().len() == 2);
    assert_eq!(net.peers[a].acks(), vec![(1, 1), (1, 1)], "stored once");
    net.run_for(Duration::from_millis(200));
    assert_eq!(net.peers[b].seqs(), vec![1], "delivered once");
}

#[test]
fn grants_decide_who_publishes_and_who_receives() {
    let mut net = Net::new(RelayConfig::default());
    let writer = net.join("s", 0, all_grants());
    let reader_only = net.join(
        "s",
        0,
        Grants {
            subscribe: true,
            ..Grants::default()
        },
    );
    let writer_only = net.join(
        "s",
        0,
        Grants {
            publish: true,
            ..Grants::default()
        },
    );
    send(&mut net, reader_only, 1);
    net.run_until(WAIT, |net| net.peers[reader_only].rejects().len() == 1);
    assert_eq!(
        net.peers[reader_only].rejects()[0].reason,
        pb::RejectReason::NotPermitted as i32
    );
    send(&mut net, writer, 3);
    net.run_until(WAIT, |net| net.peers[reader_only].seqs().len() == 3);
    net.run_for(Duration::from_millis(200));
    assert!(
        net.peers[writer_only].seqs().is_empty(),
        "no subscribe grant"
    );
}

#[test]
fn a_peer_that_falls_behind_is_warned_then_dropped_and_the_others_go_on() {
    let mut net = Net::new(RelayConfig {
        slow_consumer_warn: 50,
        slow_consumer_limit: 200,
        ..RelayConfig::default()
    });
    let sender = net.join("s", 0, all_grants());
    let reader = net.join("s", 0, all_grants());
    let slow = net.join("s", 0, all_grants());
    net.peers[slow].cut_off = true;
    send(&mut net, sender, 100);
    net.run_until(WAIT, |net| net.peers[reader].seqs().len() == 100);
    net.peers[slow].cut_off = false;
    net.run_until(WAIT, |net| net.peers[slow].seqs().len() == 100);
    assert!(
        net.peers[slow]
            .events
            .iter()
            .any(|e| matches!(e, PeerEvent::SlowConsumer(_))),
        "warned past slow_consumer_warn"
    );
    net.peers[slow].cut_off = true;
    send(&mut net, sender, 300);
    net.run_until(WAIT, |net| net.shards[0].peer_count() == 2);
    net.run_until(WAIT, |net| net.peers[reader].seqs().len() == 400);
    assert!(
        net.peers[reader]
            .events
            .iter()
            .any(|e| matches!(e, PeerEvent::PeerLeft(id) if *id == net.peers[slow].peer_id)),
        "the session hears the slow peer left"
    );
}

#[test]
fn a_resumed_connection_continues_its_origin_and_replaces_the_old_one_on_another_shard() {
    let mut net = Net::new(RelayConfig {
        shards: 2,
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, all_grants());
    let reader = net.join("s", 1, all_grants());
    send(&mut net, a, 3);
    net.run_until(WAIT, |net| net.peers[a].acks().len() == 3);
    let origin = net.peers[a].peer_id;
    // The old connection stays up on shard 0; its core moves on.
    let mut core = std::mem::replace(
        &mut net.peers[a].core,
        deltamesh_worker::PeerCore::new(16, false),
    );
    core.connection_lost();
    let again = net.connect(core, "s", 1, all_grants());
    net.run_until(WAIT, |net| {
        net.peers[a]
            .events
            .iter()
            .any(|e| matches!(e, PeerEvent::Disconnected(_)))
    });
    assert_eq!(
        net.shards[0].peer_count(),
        0,
        "shard 0 closed the old connection"
    );
    send(&mut net, again, 2);
    net.run_until(WAIT, |net| net.peers[reader].seqs().len() == 5);
    assert_eq!(
        net.peers[again].acks(),
        vec![(4, 4), (5, 5)],
        "client_seq continued"
    );
    let origins: Vec<Id> = net.peers[reader]
        .events
        .iter()
        .filter_map(|e| match e {
            PeerEvent::Delta(d) => Some(d.origin),
            _ => None,
        })
        .collect();
    assert!(
        origins.iter().all(|&o| o == origin),
        "one origin throughout"
    );
}

#[test]
fn a_resume_with_a_wrong_token_is_refused_and_the_peer_sends_as_itself() {
    let mut net = Net::new(RelayConfig::default());
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 0, all_grants());
    let resume = command::encode(Body::Resume(pb::Resume {
        last_seq: 0,
        previous_peer_id: net.peers[a].peer_id.0.to_vec(),
        resume_token: vec![0; 16],
    }));
    net.peers[b].write_raw(Channel::Command, &resume);
    net.run_until(WAIT, |net| {
        net.peers[b].events.iter().any(|e| {
            matches!(e, PeerEvent::RelayError(error) if error.code == pb::ErrorCode::ResumeRefused as i32)
        })
    });
    assert_eq!(net.shards[0].peer_count(), 2, "nobody was replaced");
}

#[test]
fn draining_tells_every_peer_to_reconnect_elsewhere() {
    let mut net = Net::new(RelayConfig {
        shards: 2,
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, all_grants());
    let b = net.join("t", 1, all_grants());
    let now = net.now;
    for shard in &mut net.shards {
        shard.drain(now, Duration::from_millis(250), "maintenance");
    }
    net.run_until(WAIT, |net| {
        [a, b].iter().all(|&p| {
            net.peers[p].events.iter().any(|e| {
                matches!(e, PeerEvent::Drain(d) if d.reconnect_after_ms == 250 && d.reason == "maintenance")
            })
        })
    });
}

#[test]
fn a_peer_that_goes_silent_is_closed_after_the_idle_timeout() {
    let mut net = Net::new(RelayConfig {
        idle_timeout: Duration::from_secs(3),
        ..RelayConfig::default()
    });
    let a = net.join("s", 0, all_grants());
    let b = net.join("s", 0, all_grants());
    net.peers[a].cut_off = true;
    let cut = net.now;
    net.run_until(Duration::from_secs(10), |net| {
        net.shards[0].peer_count() == 1
    });
    let took = net.now - cut;
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "{took:?}"
    );
    net.run_until(WAIT, |net| {
        net.peers[b]
            .events
            .iter()
            .any(|e| matches!(e, PeerEvent::PeerLeft(_)))
    });
}

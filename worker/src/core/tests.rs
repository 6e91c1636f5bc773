//! PeerCore specifications: each test builds a situation from relay
//! messages and checks what the peer sends and reports.

use super::*;
use deltamesh_proto::{SecurityFields, SecurityFlags};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn welcome(last_seq: u64) -> Vec<u8> {
    command::encode(Body::Welcome(pb::Welcome {
        peer_id: vec![1; 16],
        last_seq,
        resume_token: vec![5; 16],
        ..pb::Welcome::default()
    }))
}

fn relayed(seq: u64) -> Vec<u8> {
    let frame = FrameHeader::default().encode(&seq.to_le_bytes()).unwrap();
    SecurityFields {
        flags: SecurityFlags(SecurityFlags::VALID_DELTA),
        seq,
        origin: Id([2; 16]),
        validator: Id([3; 16]),
        validated_at_us: 0,
        signature: [0; 64],
    }
    .encode(&frame)
}

fn delivered(core: &mut PeerCore) -> Vec<u64> {
    std::iter::from_fn(|| core.poll_event())
        .filter_map(|e| match e {
            PeerEvent::Delta(d) => Some(d.seq),
            _ => None,
        })
        .collect()
}

#[test]
fn deltas_arriving_before_welcome_are_delivered_after_it_in_order() {
    let mut core = PeerCore::new(16, false);
    core.handle_message(Channel::Receive, relayed(6));
    core.handle_message(Channel::Command, welcome(5));
    core.handle_message(Channel::Receive, relayed(7));
    core.handle_message(Channel::Receive, relayed(7));
    assert_eq!(delivered(&mut core), vec![6, 7]);
}

fn resumed(continued: bool, next_client_seq: u64) -> Vec<u8> {
    command::encode(Body::Resumed(pb::Resumed {
        from_seq: 2,
        continued,
        next_client_seq,
    }))
}

fn sent(core: &mut PeerCore) -> (Vec<pb::Resume>, Vec<u64>) {
    let mut resumes = Vec::new();
    let mut frames = Vec::new();
    while let Some((channel, bytes)) = core.poll_transmit() {
        match (channel, command::decode(&bytes)) {
            (Channel::Command, Ok(Body::Resume(r))) => resumes.push(r),
            (Channel::Send, _) => frames.push(
                deltamesh_proto::DeltaFrame::parse(&bytes)
                    .unwrap()
                    .client_seq(),
            ),
            _ => {}
        }
    }
    (resumes, frames)
}

/// A peer that sent two deltas, got the first acknowledged (seq 1), lost
/// its connection and got a new `Welcome`.
fn reconnected() -> PeerCore {
    let mut core = PeerCore::new(16, false);
    core.handle_message(Channel::Command, welcome(0));
    core.send(1, Id::default(), b"a", 0).unwrap();
    core.send(1, Id::default(), b"b", 0).unwrap();
    core.handle_message(Channel::Command, ack(1, 1));
    let _ = sent(&mut core);
    core.connection_lost();
    core.handle_message(Channel::Command, welcome(9));
    core
}

#[test]
fn a_reconnect_resumes_and_resends_unacked_frames_only_once_the_relay_confirms() {
    let mut core = reconnected();
    let (resumes, frames) = sent(&mut core);
    assert_eq!(resumes.len(), 1);
    assert_eq!(resumes[0].last_seq, 1);
    assert_eq!(resumes[0].previous_peer_id, vec![1; 16]);
    assert_eq!(resumes[0].resume_token, vec![5; 16]);
    assert!(frames.is_empty(), "nothing is resent before Resumed");
    // A live delta overtaking the replay waits; the replay comes in order.
    core.handle_message(Channel::Receive, relayed(10));
    core.handle_message(Channel::Receive, relayed(2));
    core.handle_message(Channel::Command, resumed(true, 2));
    let (_, frames) = sent(&mut core);
    assert_eq!(frames, vec![2], "the unacked frame keeps its client_seq");
    // Seq 1 was this peer's own; 10 waits for 3..=9.
    assert_eq!(delivered(&mut core), vec![2]);
}

#[test]
fn a_refused_resume_renumbers_unacked_frames_for_the_new_origin() {
    let mut core = reconnected();
    let _ = sent(&mut core);
    core.handle_message(Channel::Command, resumed(false, 1));
    let (_, frames) = sent(&mut core);
    assert_eq!(frames, vec![1]);
    let renumbered = std::iter::from_fn(|| core.poll_event())
        .filter(|e| matches!(e, PeerEvent::Renumbered { .. }))
        .collect::<Vec<_>>();
    assert_eq!(renumbered, vec![PeerEvent::Renumbered { old: 2, new: 1 }]);
    assert_eq!(core.send(1, Id::default(), b"c", 0), Ok(2));
}

fn ack(client_seq: u64, seq: u64) -> Vec<u8> {
    command::encode(Body::Ack(pb::Ack { client_seq, seq }))
}

#[test]
fn own_deltas_are_stepped_over_whichever_arrives_first_ack_or_later_delta() {
    let mut core = PeerCore::new(16, false);
    core.handle_message(Channel::Command, welcome(0));
    core.send(1, Id::default(), b"mine", 0).unwrap();
    core.send(1, Id::default(), b"mine too", 0).unwrap();
    core.handle_message(Channel::Receive, relayed(1));
    // Seq 3 overtakes the ack of this peer's own seq 2.
    core.handle_message(Channel::Receive, relayed(3));
    core.handle_message(Channel::Command, ack(1, 2));
    core.handle_message(Channel::Command, ack(2, 4));
    core.handle_message(Channel::Receive, relayed(5));
    assert_eq!(delivered(&mut core), vec![1, 3, 5]);
    assert_eq!(core.last_seq(), 5);
}

#[test]
fn garbage_from_the_relay_is_reported_not_fatal() {
    let mut core = PeerCore::new(16, false);
    core.handle_message(Channel::Command, vec![0xff, 0xff]);
    core.handle_message(Channel::Command, welcome(0));
    core.handle_message(Channel::Receive, b"not a relayed frame".to_vec());
    let events: Vec<_> = std::iter::from_fn(|| core.poll_event()).collect();
    assert!(matches!(events[0], PeerEvent::ProtocolError(_)));
    assert!(matches!(events[1], PeerEvent::Welcomed(_)));
    assert!(matches!(events[2], PeerEvent::ProtocolError(_)));
}

// v1.1: options, fragments, batches, presence, direct messages.

const ALL: Features = Features {
    echo: false,
    batch: true,
    presence: true,
};

fn welcome_with(max_frame_size: u32, max_delta_size: u32) -> Vec<u8> {
    command::encode(Body::Welcome(pb::Welcome {
        peer_id: vec![1; 16],
        resume_token: vec![5; 16],
        max_frame_size,
        max_delta_size,
        peers: vec![vec![2; 16], vec![4; 16]],
        ..pb::Welcome::default()
    }))
}

fn options(batch: bool, presence: bool) -> Vec<u8> {
    command::encode(Body::Options(pb::Options {
        echo: false,
        batch,
        presence,
    }))
}

fn drain(core: &mut PeerCore) -> Vec<(Channel, Vec<u8>)> {
    std::iter::from_fn(|| core.poll_transmit()).collect()
}

fn events(core: &mut PeerCore) -> Vec<PeerEvent> {
    std::iter::from_fn(|| core.poll_event()).collect()
}

fn commands(sent: &[(Channel, Vec<u8>)]) -> Vec<Body> {
    sent.iter()
        .filter(|(c, _)| *c == Channel::Command)
        .map(|(_, b)| command::decode(b).unwrap())
        .collect()
}

/// A v1.1 peer welcomed (64 KiB frames) whose options the relay answered.
fn answered(batch: bool, presence: bool) -> PeerCore {
    let mut core = PeerCore::with_features(64, ALL);
    core.handle_message(Channel::Command, welcome_with(65_536, 0));
    core.handle_message(Channel::Command, options(batch, presence));
    let _ = drain(&mut core);
    let _ = events(&mut core);
    core
}

#[test]
fn after_welcome_the_peer_asks_for_every_option_once_and_a_v1_peer_asks_nothing() {
    let mut core = PeerCore::with_features(16, ALL);
    core.handle_message(Channel::Command, welcome_with(65_536, 0));
    let asked = commands(&drain(&mut core));
    assert_eq!(
        asked,
        vec![Body::Options(pb::Options {
            echo: false,
            batch: true,
            presence: true
        })]
    );
    let mut v1 = PeerCore::new(16, false);
    v1.handle_message(Channel::Command, welcome(0));
    assert!(commands(&drain(&mut v1)).is_empty());
}

#[test]
fn presence_waits_for_the_options_answer_and_a_relay_without_it_gets_none() {
    let mut core = PeerCore::with_features(16, ALL);
    core.set_presence(b"early").unwrap();
    core.handle_message(Channel::Command, welcome_with(65_536, 0));
    core.set_presence(b"cursor").unwrap();
    let sent = drain(&mut core);
    assert!(sent.iter().all(|(c, _)| *c != Channel::Presence));
    core.handle_message(Channel::Command, options(false, true));
    assert!(matches!(
        events(&mut core).last(),
        Some(PeerEvent::OptionsInForce(o)) if o.presence
    ));
    // Only the latest state goes out, once.
    assert_eq!(
        drain(&mut core),
        vec![(Channel::Presence, b"cursor".to_vec())]
    );

    let mut v1_relay = PeerCore::with_features(16, ALL);
    v1_relay.handle_message(Channel::Command, welcome_with(65_536, 0));
    v1_relay.handle_message(Channel::Command, options(false, false));
    v1_relay.set_presence(b"cursor").unwrap();
    let _ = drain(&mut v1_relay);
    assert!(!v1_relay.wants_to_transmit(), "no presence on a v1 relay");
}

#[test]
fn batches_are_packed_only_once_the_relay_has_batch_in_force() {
    let mut before = PeerCore::with_features(16, ALL);
    before.handle_message(Channel::Command, welcome_with(65_536, 0));
    let _ = drain(&mut before);
    for _ in 0..3 {
        before.send(1, Id::default(), b"small", 0).unwrap();
    }
    let singles = drain(&mut before);
    assert_eq!(singles.len(), 3, "one frame per message before the answer");

    for (batch, messages) in [(false, 3), (true, 1)] {
        let mut core = answered(batch, false);
        for _ in 0..3 {
            core.send(1, Id::default(), b"small", 0).unwrap();
        }
        let sent = drain(&mut core);
        assert_eq!(sent.len(), messages, "batch in force: {batch}");
        let frames: Vec<u64> = sent
            .iter()
            .flat_map(|(_, m)| {
                Batch::deltas(m)
                    .map(|f| {
                        deltamesh_proto::DeltaFrame::parse(f.unwrap())
                            .unwrap()
                            .client_seq()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(frames, vec![1, 2, 3]);
    }
}

#[test]
fn a_batch_never_exceeds_the_relay_frame_size() {
    let mut core = PeerCore::with_features(64, ALL);
    core.handle_message(Channel::Command, welcome_with(1_000, 0));
    core.handle_message(Channel::Command, options(true, false));
    let _ = drain(&mut core);
    for _ in 0..10 {
        core.send(1, Id::default(), &[7; 200], 0).unwrap();
    }
    let sent = drain(&mut core);
    assert!(sent.iter().all(|(_, m)| m.len() <= 1_000));
    assert_eq!(
        sent.len(),
        4,
        "three 256-byte frames per 1,000-byte message"
    );
}

#[test]
fn acks_acknowledge_several_frames_in_one_command() {
    let mut core = answered(true, false);
    core.send(1, Id::default(), b"a", 0).unwrap();
    core.send(1, Id::default(), b"b", 0).unwrap();
    core.handle_message(
        Channel::Command,
        command::encode(Body::Acks(pb::Acks {
            acks: vec![
                pb::Ack {
                    client_seq: 1,
                    seq: 1,
                },
                pb::Ack {
                    client_seq: 2,
                    seq: 2,
                },
            ],
        })),
    );
    let acked: Vec<_> = events(&mut core)
        .into_iter()
        .filter(|e| matches!(e, PeerEvent::Acked { .. }))
        .collect();
    assert_eq!(acked.len(), 2);
    assert_eq!(core.unacked(), 0);
    assert_eq!(core.last_seq(), 2);
}

/// Reassembles the fragments a peer sent, checking the wire rules.
fn reassemble(sent: &[(Channel, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (channel, message) in sent.iter().filter(|(c, _)| *c == Channel::Send) {
        assert_eq!(*channel, Channel::Send);
        let (header, body) = FragmentHeader::parse(message).unwrap();
        assert_eq!(header.offset as usize, out.len());
        out.extend_from_slice(body);
        assert!(out.len() <= header.total_len as usize);
    }
    out
}

#[test]
fn a_delta_over_max_frame_size_goes_as_16_kib_fragments_and_one_over_max_delta_size_is_refused() {
    let mut core = answered(true, false);
    let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    core.send(9, Id([6; 16]), &payload, 0).unwrap();
    let sent = drain(&mut core);
    assert_eq!(
        sent.len(),
        (FRAME_HEADER_LEN + payload.len()).div_ceil(FRAGMENT_BODY)
    );
    assert!(
        sent.iter()
            .all(|(_, m)| m.len() <= FRAGMENT_HEADER_LEN + FRAGMENT_BODY)
    );
    assert!(sent[0].1.len() >= FRAGMENT_HEADER_LEN + FRAME_HEADER_LEN);
    let frame = reassemble(&sent);
    let parsed = deltamesh_proto::DeltaFrame::parse(&frame).unwrap();
    assert_eq!(parsed.payload(), &payload[..]);
    assert_eq!(parsed.client_seq(), 1);

    // The relay names 100,000 bytes as its largest delta.
    let mut small = PeerCore::with_features(16, ALL);
    small.handle_message(Channel::Command, welcome_with(65_536, 100_000));
    assert_eq!(
        small.send(1, Id::default(), &payload, 0),
        Err(SendError::TooLarge {
            len: 200_056,
            max: 100_000
        })
    );
    assert_eq!(small.send(1, Id::default(), b"fits", 0), Ok(1));
}

#[test]
fn commands_and_presence_pass_between_the_fragments_of_a_large_delta() {
    let mut core = answered(true, true);
    core.send(1, Id::default(), &vec![1; 100_000], 0).unwrap();
    let first = core.poll_transmit().unwrap();
    assert_eq!(first.0, Channel::Send);
    core.ping(7);
    core.set_presence(b"here").unwrap();
    assert_eq!(core.poll_transmit().unwrap().0, Channel::Command);
    assert_eq!(core.poll_transmit().unwrap().0, Channel::Presence);
    let rest = drain(&mut core);
    let mut all = vec![first];
    all.extend(rest);
    assert_eq!(reassemble(&all).len(), 100_056);
}

#[test]
fn a_fragmented_delta_interrupted_by_a_reconnect_is_resent_whole_after_resumed() {
    let mut core = answered(false, false);
    core.send(1, Id::default(), &vec![3; 100_000], 0).unwrap();
    let _ = core.poll_transmit();
    let _ = core.poll_transmit();
    core.connection_lost();
    core.handle_message(Channel::Command, welcome_with(65_536, 0));
    core.handle_message(Channel::Command, options(false, false));
    assert!(drain(&mut core).iter().all(|(c, _)| *c == Channel::Command));
    core.handle_message(Channel::Command, resumed(true, 1));
    let sent = drain(&mut core);
    let frame = reassemble(&sent);
    assert_eq!(frame.len(), 100_056);
    assert_eq!(
        deltamesh_proto::DeltaFrame::parse(&frame)
            .unwrap()
            .client_seq(),
        1
    );
}

#[test]
fn a_rejected_fragmented_delta_stops_being_sent() {
    let mut core = answered(false, false);
    core.send(1, Id::default(), &vec![3; 100_000], 0).unwrap();
    let _ = core.poll_transmit();
    core.handle_message(
        Channel::Command,
        command::encode(Body::Reject(pb::Reject {
            client_seq: 1,
            reason: pb::RejectReason::TooLarge as i32,
            detail: String::new(),
        })),
    );
    assert!(drain(&mut core).is_empty());
}

fn relayed_big(seq: u64, payload: &[u8]) -> Vec<u8> {
    let frame = FrameHeader::default().encode(payload).unwrap();
    SecurityFields {
        flags: SecurityFlags(SecurityFlags::VALID_DELTA),
        seq,
        origin: Id([2; 16]),
        validator: Id([3; 16]),
        validated_at_us: 0,
        signature: [0; 64],
    }
    .encode(&frame)
}

fn cut(message: &[u8]) -> Vec<Vec<u8>> {
    deltamesh_proto::fragment::fragments(message, 176, FRAGMENT_BODY).collect()
}

fn errors(events: &[PeerEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, PeerEvent::ProtocolError(_)))
        .count()
}

#[test]
fn fragments_on_receive_are_reassembled_into_one_delta() {
    let mut core = answered(false, false);
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    for fragment in cut(&relayed_big(1, &payload)) {
        core.handle_message(Channel::Receive, fragment);
    }
    core.handle_message(Channel::Receive, relayed(2));
    let got = events(&mut core);
    let deltas: Vec<_> = got
        .iter()
        .filter_map(|e| match e {
            PeerEvent::Delta(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(deltas.len(), 2);
    assert_eq!(deltas[0].payload(), &payload[..]);
    assert_eq!(deltas[1].seq, 2);
    assert_eq!(errors(&got), 0);
}

#[test]
fn broken_fragment_sequences_are_dropped_and_reported_and_the_next_delta_is_read() {
    let mut core = answered(false, false);
    let big = relayed_big(1, &vec![5; 40_000]);
    let parts = cut(&big);
    // A fragment skipped: out of sequence.
    core.handle_message(Channel::Receive, parts[0].clone());
    core.handle_message(Channel::Receive, parts[2].clone());
    // A whole frame interrupting a frame in progress.
    core.handle_message(Channel::Receive, parts[0].clone());
    core.handle_message(Channel::Receive, relayed(1));
    // A first fragment shorter than the relayed header.
    let short = deltamesh_proto::fragment::fragments(&big, 100, 100)
        .next()
        .unwrap();
    core.handle_message(Channel::Receive, short);
    // A total_len that is not the header's frame length.
    let mut lying = parts[0].clone();
    lying[4..8].copy_from_slice(&(big.len() as u32 + 1).to_le_bytes());
    core.handle_message(Channel::Receive, lying);
    // Then a good fragmented delta still arrives.
    for fragment in cut(&relayed_big(2, &vec![6; 40_000])) {
        core.handle_message(Channel::Receive, fragment);
    }
    let got = events(&mut core);
    assert_eq!(errors(&got), 4, "{got:?}");
    let seqs: Vec<u64> = got
        .iter()
        .filter_map(|e| match e {
            PeerEvent::Delta(d) => Some(d.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, vec![1, 2]);
}

#[test]
fn a_fragmented_frame_over_the_bound_is_refused_at_its_first_fragment() {
    let mut core = PeerCore::with_features(16, ALL);
    core.handle_message(Channel::Command, welcome_with(65_536, 10_000));
    let _ = events(&mut core);
    let parts = cut(&relayed_big(1, &vec![5; 20_000]));
    for part in parts {
        core.handle_message(Channel::Receive, part);
    }
    let got = events(&mut core);
    assert!(got.iter().all(|e| !matches!(e, PeerEvent::Delta(_))));
    // The first fragment says too large; the rest do not continue anything.
    assert!(errors(&got) >= 1);
}

#[test]
fn a_batched_receive_message_delivers_each_frame_in_order() {
    let mut core = answered(true, false);
    let mut message = relayed(1);
    message.extend(relayed(2));
    message.extend(relayed_big(3, b"third"));
    core.handle_message(Channel::Receive, message);
    let got = events(&mut core);
    let payloads: Vec<Vec<u8>> = got
        .iter()
        .filter_map(|e| match e {
            PeerEvent::Delta(d) => Some(d.payload().to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(payloads[2], b"third");
    assert_eq!(payloads.len(), 3);
    assert_eq!(errors(&got), 0);
}

fn presence_message(peer: u8, version: u64, state: &[u8]) -> Vec<u8> {
    PresenceState {
        peer_id: Id([peer; 16]),
        version,
        state,
    }
    .encode()
}

fn presence_events(core: &mut PeerCore) -> Vec<(Id, Vec<u8>)> {
    events(core)
        .into_iter()
        .filter_map(|e| match e {
            PeerEvent::Presence { peer, state } => Some((peer, state)),
            _ => None,
        })
        .collect()
}

#[test]
fn presence_keeps_the_highest_version_per_peer_and_ignores_older_ones() {
    let mut core = answered(false, true);
    core.handle_message(Channel::Presence, presence_message(2, 5, b"five"));
    core.handle_message(Channel::Presence, presence_message(2, 3, b"three"));
    core.handle_message(Channel::Presence, presence_message(2, 5, b"five again"));
    core.handle_message(Channel::Presence, presence_message(4, 1, b"other"));
    core.handle_message(Channel::Presence, presence_message(2, 6, b""));
    // Its own state is never shown to it.
    core.handle_message(Channel::Presence, presence_message(1, 9, b"me"));
    assert_eq!(
        presence_events(&mut core),
        vec![
            (Id([2; 16]), b"five".to_vec()),
            (Id([4; 16]), b"other".to_vec()),
            (Id([2; 16]), Vec::new()),
        ]
    );
}

#[test]
fn a_peer_that_leaves_takes_its_presence_along_and_late_states_stay_ignored() {
    let mut core = answered(false, true);
    core.handle_message(Channel::Presence, presence_message(4, 1, b"here"));
    let _ = events(&mut core);
    core.handle_message(
        Channel::Command,
        command::encode(Body::PeerLeft(pb::PeerLeft {
            peer_id: vec![4; 16],
            reason: String::new(),
        })),
    );
    let got = events(&mut core);
    assert_eq!(
        got,
        vec![
            PeerEvent::Presence {
                peer: Id([4; 16]),
                state: Vec::new()
            },
            PeerEvent::PeerLeft(Id([4; 16])),
        ]
    );
    // A state that the unordered channel delivered after the PeerLeft.
    core.handle_message(Channel::Presence, presence_message(4, 2, b"late"));
    assert!(presence_events(&mut core).is_empty());
}

#[test]
fn presence_without_the_option_in_force_is_ignored() {
    let mut core = answered(false, false);
    core.handle_message(Channel::Presence, presence_message(2, 1, b"x"));
    assert!(presence_events(&mut core).is_empty());
}

#[test]
fn states_that_overtake_the_options_answer_are_kept() {
    // The relay writes the current states right after its Options answer,
    // on a channel not ordered with `command`: they may come first.
    let mut core = PeerCore::with_features(16, ALL);
    core.handle_message(Channel::Presence, presence_message(2, 1, b"before welcome"));
    core.handle_message(Channel::Command, welcome_with(65_536, 0));
    core.handle_message(Channel::Presence, presence_message(2, 3, b"current"));
    core.handle_message(Channel::Command, options(false, true));
    assert_eq!(
        presence_events(&mut core),
        vec![(Id([2; 16]), b"current".to_vec())]
    );
    // Without presence asked for, nothing on the channel is taken.
    let mut v1 = PeerCore::new(16, false);
    v1.handle_message(Channel::Command, welcome(0));
    v1.handle_message(Channel::Presence, presence_message(2, 1, b"x"));
    assert!(presence_events(&mut v1).is_empty());
}

#[test]
fn own_presence_is_written_again_after_a_reconnect_and_stale_states_never_go() {
    let mut core = answered(false, true);
    core.set_presence(b"one").unwrap();
    core.set_presence(b"two").unwrap();
    assert_eq!(drain(&mut core), vec![(Channel::Presence, b"two".to_vec())]);
    core.connection_lost();
    core.handle_message(Channel::Command, welcome_with(65_536, 0));
    let sent = drain(&mut core);
    assert!(sent.iter().all(|(c, _)| *c != Channel::Presence));
    core.handle_message(Channel::Command, options(false, true));
    assert_eq!(drain(&mut core), vec![(Channel::Presence, b"two".to_vec())]);
    assert_eq!(
        core.set_presence(&[0; 2000]),
        Err(SendError::TooLarge {
            len: 2000,
            max: 1024
        })
    );
}

#[test]
fn direct_messages_go_as_peer_signal_and_arrive_as_message_events() {
    let mut core = PeerCore::new(16, false);
    assert_eq!(
        core.send_to(Id([2; 16]), b"hi"),
        Err(SendError::NotConnected)
    );
    core.handle_message(Channel::Command, welcome(0));
    core.send_to(Id([2; 16]), b"offer").unwrap();
    assert_eq!(
        commands(&drain(&mut core)),
        vec![Body::Signal(pb::PeerSignal {
            peer_id: vec![2; 16],
            payload: b"offer".to_vec()
        })]
    );
    assert!(matches!(
        core.send_to(Id([2; 16]), &[0; MAX_SIGNAL_PAYLOAD + 1]),
        Err(SendError::TooLarge { .. })
    ));
    core.handle_message(
        Channel::Command,
        command::encode(Body::Signal(pb::PeerSignal {
            peer_id: vec![4; 16],
            payload: b"answer".to_vec(),
        })),
    );
    core.handle_message(
        Channel::Command,
        command::encode(Body::Error(pb::Error {
            code: pb::ErrorCode::UnknownPeer as i32,
            detail: "02020202-0202-0202-0202-020202020202".into(),
        })),
    );
    let got = events(&mut core);
    assert!(got.contains(&PeerEvent::Message {
        from: Id([4; 16]),
        payload: b"answer".to_vec()
    }));
    assert!(got.iter().any(|e| matches!(
        e,
        PeerEvent::RelayError(error) if error.code() == pb::ErrorCode::UnknownPeer
    )));
}

#[test]
fn history_lost_stops_the_peer_for_good() {
    let mut core = PeerCore::new(16, false);
    core.handle_message(Channel::Command, welcome(0));
    let _ = events(&mut core);
    core.handle_message(
        Channel::Command,
        command::encode(Body::Error(pb::Error {
            code: pb::ErrorCode::HistoryLost as i32,
            detail: "evicted".into(),
        })),
    );
    let got = events(&mut core);
    assert!(matches!(got.last(), Some(PeerEvent::Stopped(_))));
    assert!(core.is_stopped());
    assert_eq!(core.send(1, Id::default(), b"x", 0), Err(SendError::Closed));
    core.handle_message(Channel::Receive, relayed(1));
    assert!(events(&mut core).is_empty());
}

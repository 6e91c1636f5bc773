//! The WebSocket lane in the shard core (PROTOCOL §11), in memory: a
//! socket peer is admitted like an offer, is welcomed once its socket is
//! attached, shares the session's order with WebRTC peers, is held to the
//! same send window (a reader that never takes anything is cut off as a
//! slow consumer), and messages the lane does not take close it with 1003.

use std::time::Duration;

use deltamesh_proto::channel::Channel;
use deltamesh_proto::command;
use deltamesh_proto::pb::command::Body;
use deltamesh_proto::security::RelayedFrame;
use deltamesh_proto::{FrameHeader, Id};
use deltamesh_relay::{
    CLOSE_UNSUPPORTED, PeerAccess, RelayConfig, SocketInput, SocketOpen, SocketOutput,
};
use opentelemetry::trace::Tracer;

use crate::harness::{Net, all_grants};

/// What a socket peer's driver got from the core.
#[derive(Default)]
struct Socket {
    messages: Vec<Vec<u8>>,
    closed: Option<(u16, String)>,
}

impl Socket {
    fn on(&self, channel: Channel) -> impl Iterator<Item = &[u8]> {
        self.messages
            .iter()
            .filter(move |m| m[0] == channel.stream_id() as u8)
            .map(|m| &m[1..])
    }

    fn commands(&self) -> Vec<Body> {
        self.on(Channel::Command)
            .map(|m| command::decode(m).expect("a command"))
            .collect()
    }
}

/// Admits a socket peer of `session` on shard 0 and attaches its socket.
fn open(net: &mut Net, session: &str) -> Id {
    let peer_id = Id::random();
    let open = SocketOpen {
        peer_id,
        session: session.into(),
        access: PeerAccess {
            identity: "tester".into(),
            grants: all_grants(),
        },
        connection: opentelemetry::global::tracer("harness").start("peer connection"),
    };
    net.shards[0].open_socket(net.now, open).expect("admitted");
    net.shards[0].handle_socket(net.now, peer_id, SocketInput::Attached);
    peer_id
}

/// Moves what the core wrote to `socket`; with `reads`, reports each
/// message written, as a socket that reads would.
fn take(net: &mut Net, socket: &mut Socket, peer: Id, reads: bool) {
    while let Some(output) = net.shards[0].poll_socket() {
        match output {
            SocketOutput::Message { peer: to, bytes } if to == peer => {
                let len = bytes.len();
                socket.messages.push(bytes);
                if reads {
                    net.shards[0].handle_socket(net.now, peer, SocketInput::Written(len));
                }
            }
            SocketOutput::Close {
                peer: to,
                code,
                reason,
            } if to == peer => {
                socket.closed = Some((code, reason));
            }
            _ => {}
        }
    }
}

fn send(net: &mut Net, peer: Id, channel: Channel, message: &[u8]) {
    let mut bytes = vec![channel.stream_id() as u8];
    bytes.extend_from_slice(message);
    net.shards[0].handle_socket(net.now, peer, SocketInput::Binary(bytes));
}

#[test]
fn a_socket_peer_is_welcomed_and_shares_the_order_of_webrtc_peers() {
    let mut net = Net::new(RelayConfig::default());
    let rtc = net.join("mixed", 0, all_grants());
    let lane = open(&mut net, "mixed");
    let mut socket = Socket::default();
    take(&mut net, &mut socket, lane, true);
    let welcome = socket.commands().into_iter().find_map(|b| match b {
        Body::Welcome(w) => Some(w),
        _ => None,
    });
    let welcome = welcome.expect("welcomed once attached");
    assert_eq!(welcome.peers, vec![net.peers[rtc].peer_id.0.to_vec()]);
    for seq in 1..=50u64 {
        let frame = FrameHeader {
            client_seq: seq,
            ..FrameHeader::default()
        }
        .encode(b"from the socket")
        .unwrap();
        send(&mut net, lane, Channel::Send, &frame);
        net.peers[rtc]
            .core
            .send(1, Id::default(), b"from webrtc", 0)
            .unwrap();
    }
    net.run_until(Duration::from_secs(5), |net| {
        net.peers[rtc].seqs().len() == 50
    });
    for _ in 0..200 {
        net.progress();
        take(&mut net, &mut socket, lane, true);
    }
    let to_socket: Vec<u64> = socket
        .on(Channel::Receive)
        .map(|m| RelayedFrame::parse(m).expect("a relayed frame").seq())
        .collect();
    let mut all: Vec<u64> = net.peers[rtc].seqs();
    all.extend(&to_socket);
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=100).collect::<Vec<_>>(),
        "one order, nothing lost"
    );
    let acks = socket
        .commands()
        .into_iter()
        .filter(|b| matches!(b, Body::Ack(_)))
        .count();
    assert_eq!(acks, 50);
}

#[test]
fn a_socket_that_takes_nothing_is_held_to_the_window_and_cut_off_as_slow() {
    let config = RelayConfig {
        stall_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(60),
        ..RelayConfig::default()
    };
    let window = config.send_window;
    let mut net = Net::new(config);
    let rtc = net.join("deaf", 0, all_grants());
    let lane = open(&mut net, "deaf");
    let mut socket = Socket::default();
    take(&mut net, &mut socket, lane, false);
    let welcomed_with = socket.messages.iter().map(Vec::len).sum::<usize>();
    for _ in 0..500 {
        net.peers[rtc]
            .core
            .send(1, Id::default(), &[7; 1024], 0)
            .unwrap();
    }
    net.run_until(Duration::from_secs(10), |net| {
        !net.peers[rtc].acks().is_empty()
    });
    let until = net.now + Duration::from_secs(10);
    while socket.closed.is_none() && net.now < until {
        net.progress();
        take(&mut net, &mut socket, lane, false);
    }
    let written: usize = socket.on(Channel::Receive).map(<[u8]>::len).sum();
    assert!(
        written <= window + 2 * 1024,
        "{written} bytes handed to a socket that took none (window {window}, welcome {welcomed_with})"
    );
    let (code, reason) = socket.closed.clone().expect("cut off");
    assert_eq!(code, 1000);
    assert!(
        reason.contains("slow") || reason.contains("stall"),
        "{reason}"
    );
    let error = socket.commands().into_iter().find_map(|b| match b {
        Body::Error(e) => Some(e),
        _ => None,
    });
    assert_eq!(
        error.expect("told why").code(),
        deltamesh_proto::pb::ErrorCode::SlowConsumer
    );
}

#[test]
fn messages_the_lane_does_not_take_close_the_socket_with_1003() {
    let mut net = Net::new(RelayConfig::default());
    for (input, reason) in [
        (SocketInput::Text, "text message"),
        (SocketInput::Binary(vec![9, 1]), "unknown channel id 9"),
        (SocketInput::Binary(Vec::new()), "empty message"),
    ] {
        let lane = open(&mut net, "refused");
        let mut socket = Socket::default();
        net.shards[0].handle_socket(net.now, lane, input);
        take(&mut net, &mut socket, lane, true);
        let (code, said) = socket.closed.expect("closed");
        assert_eq!(code, CLOSE_UNSUPPORTED);
        assert!(said.contains(reason), "{said}");
    }
    assert_eq!(net.shards[0].peer_count(), 0, "each left the session");
}

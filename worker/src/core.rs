//! The peer's protocol, sans-IO: what to send on which channel and what the
//! relay's messages mean. The native driver (str0m) and the browser driver
//! (RTCDataChannel) feed it channel messages and drain what it wants to send,
//! so both speak exactly one implementation of the protocol.
//!
//! It numbers outgoing frames (`client_seq`), keeps them until acknowledged
//! so a reconnect can resend them with their original numbers, and delivers
//! received deltas strictly in session `seq` order, each exactly once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use deltamesh_proto::channel::Channel;
use deltamesh_proto::command::{self, CommandError};
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::{FrameError, FrameHeader, Id, RelayedFrame};

/// Relayed messages kept while waiting for `Welcome` (they may overtake it:
/// SCTP streams are not ordered with each other).
const MAX_EARLY_DELTAS: usize = 4096;
/// Deltas kept that arrived ahead of a gap (the gap is this peer's own delta
/// whose `Ack` has not arrived yet, or a resume replay still under way).
const MAX_AHEAD: usize = 4096;

/// A delta received from another peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedDelta {
    /// The session's sequence number.
    pub seq: u64,
    /// The peer that sent it.
    pub origin: Id,
    /// Application-defined kind.
    pub kind: u16,
    /// Application-defined document id.
    pub doc_id: Id,
    /// The payload.
    pub payload: Vec<u8>,
}

/// What happened on the connection, for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// The relay admitted this peer.
    Welcomed(pb::Welcome),
    /// A sent delta is durable under `seq`.
    Acked {
        /// The frame's client_seq.
        client_seq: u64,
        /// Its session seq.
        seq: u64,
    },
    /// A sent delta was refused; nothing was stored or forwarded.
    Rejected(pb::Reject),
    /// A delta from another peer, in seq order.
    Delta(ReceivedDelta),
    /// Another peer joined.
    PeerJoined(Id),
    /// Another peer left.
    PeerLeft(Id),
    /// The answer to a ping.
    Pong(u64),
    /// The relay reported a problem.
    RelayError(pb::Error),
    /// The relay says this peer is falling behind.
    SlowConsumer(pb::SlowConsumer),
    /// The relay is going away; reconnect.
    Drain(pb::Drain),
    /// The relay sent something this peer cannot read.
    ProtocolError(String),
}

/// Why the core could not queue a delta.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The frame cannot be built.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame exceeds the relay's `max_frame_size` (from `Welcome`).
    #[error("a {len}-byte frame exceeds the relay's limit of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The relay's limit.
        max: usize,
    },
    /// Too many deltas await acknowledgement.
    #[error("{0} deltas await acknowledgement; wait for acks before sending more")]
    Backlog(usize),
}

/// The peer protocol state.
pub struct PeerCore {
    max_unacked: usize,
    welcome: Option<pb::Welcome>,
    /// The previous connection's id, when this one continues it.
    previous_peer: Option<Id>,
    next_client_seq: u64,
    unacked: BTreeMap<u64, Vec<u8>>,
    /// Every seq up to this one was delivered to the application, or is
    /// this peer's own delta (which the relay does not echo by default).
    delivered: u64,
    /// Deltas received past a gap, by seq.
    ahead: BTreeMap<u64, ReceivedDelta>,
    /// Seqs of this peer's own acknowledged deltas past `delivered`.
    own: BTreeSet<u64>,
    early: Vec<Vec<u8>>,
    outbox: VecDeque<(Channel, Vec<u8>)>,
    events: VecDeque<PeerEvent>,
    echo: bool,
}

impl PeerCore {
    /// A fresh peer that keeps at most `max_unacked` deltas awaiting acks.
    pub fn new(max_unacked: usize, echo: bool) -> Self {
        PeerCore {
            max_unacked,
            welcome: None,
            previous_peer: None,
            next_client_seq: 1,
            unacked: BTreeMap::new(),
            delivered: 0,
            ahead: BTreeMap::new(),
            own: BTreeSet::new(),
            early: Vec::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            echo,
        }
    }

    /// The welcome of the current connection, once received.
    pub fn welcome(&self) -> Option<&pb::Welcome> {
        self.welcome.as_ref()
    }

    /// Highest seq delivered so far.
    pub fn last_seq(&self) -> u64 {
        self.delivered
    }

    /// Deltas sent but not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Builds and queues a delta; returns its client_seq.
    pub fn send(
        &mut self,
        kind: u16,
        doc_id: Id,
        payload: &[u8],
        timestamp_us: u64,
    ) -> Result<u64, SendError> {
        if self.unacked.len() >= self.max_unacked {
            return Err(SendError::Backlog(self.unacked.len()));
        }
        let client_seq = self.next_client_seq;
        let frame = FrameHeader {
            kind,
            flags: 0,
            doc_id,
            client_seq,
            timestamp_us,
        }
        .encode(payload)?;
        // 0 is protobuf's "unset": the relay named no limit.
        if let Some(welcome) = &self.welcome
            && welcome.max_frame_size > 0
            && frame.len() > welcome.max_frame_size as usize
        {
            return Err(SendError::TooLarge {
                len: frame.len(),
                max: welcome.max_frame_size as usize,
            });
        }
        self.next_client_seq += 1;
        if self.welcome.is_some() {
            self.outbox.push_back((Channel::Send, frame.clone()));
        }
        self.unacked.insert(client_seq, frame);
        Ok(client_seq)
    }

    /// Queues a ping.
    pub fn ping(&mut self, nonce: u64) {
        self.push_command(Body::Ping(pb::Ping { nonce }));
    }

    /// Forgets the current connection; the next `Welcome` resumes from the
    /// last delivered seq and resends unacknowledged frames.
    pub fn connection_lost(&mut self) {
        if let Some(welcome) = self.welcome.take()
            && let Ok(id) = Id::from_slice(&welcome.peer_id)
        {
            self.previous_peer = Some(self.previous_peer.unwrap_or(id));
        }
        self.outbox.clear();
        self.early.clear();
        // The resume replay sends these again, in order.
        self.ahead.clear();
    }

    /// Handles one message received on `channel`.
    pub fn handle_message(&mut self, channel: Channel, bytes: &[u8]) {
        match channel {
            Channel::Command => match command::decode(bytes) {
                Ok(body) => self.on_command(body),
                Err(CommandError::Empty) => {}
                Err(error) => self
                    .events
                    .push_back(PeerEvent::ProtocolError(format!("command: {error}"))),
            },
            Channel::Receive if self.welcome.is_none() => {
                if self.early.len() < MAX_EARLY_DELTAS {
                    self.early.push(bytes.to_vec());
                } else {
                    self.events.push_back(PeerEvent::ProtocolError(
                        "too many deltas before Welcome".into(),
                    ));
                }
            }
            Channel::Receive => self.on_relayed(bytes),
            Channel::Send => self.events.push_back(PeerEvent::ProtocolError(
                "the relay wrote on the send channel".into(),
            )),
        }
    }

    /// The next message to write, with its channel.
    pub fn poll_transmit(&mut self) -> Option<(Channel, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// Whether a message waits to be written.
    pub fn wants_to_transmit(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Puts back a message the channel could not take yet.
    pub fn unpoll_transmit(&mut self, channel: Channel, bytes: Vec<u8>) {
        self.outbox.push_front((channel, bytes));
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    fn push_command(&mut self, body: Body) {
        self.outbox
            .push_back((Channel::Command, command::encode(body)));
    }

    fn on_command(&mut self, body: Body) {
        let event = match body {
            Body::Welcome(welcome) => return self.on_welcome(welcome),
            Body::Ack(ack) => {
                self.unacked.remove(&ack.client_seq);
                if !self.echo && ack.seq > self.delivered {
                    // The relay will not send this one back: count it as seen.
                    self.own.insert(ack.seq);
                    self.advance();
                }
                PeerEvent::Acked {
                    client_seq: ack.client_seq,
                    seq: ack.seq,
                }
            }
            Body::Reject(reject) => {
                self.unacked.remove(&reject.client_seq);
                PeerEvent::Rejected(reject)
            }
            Body::PeerJoined(joined) => match Id::from_slice(&joined.peer_id) {
                Ok(id) => PeerEvent::PeerJoined(id),
                Err(e) => PeerEvent::ProtocolError(format!("PeerJoined: {e}")),
            },
            Body::PeerLeft(left) => match Id::from_slice(&left.peer_id) {
                Ok(id) => PeerEvent::PeerLeft(id),
                Err(e) => PeerEvent::ProtocolError(format!("PeerLeft: {e}")),
            },
            Body::Ping(ping) => {
                return self.push_command(Body::Pong(pb::Pong { nonce: ping.nonce }));
            }
            Body::Pong(pong) => PeerEvent::Pong(pong.nonce),
            Body::Error(error) => PeerEvent::RelayError(error),
            Body::SlowConsumer(slow) => PeerEvent::SlowConsumer(slow),
            Body::Drain(drain) => PeerEvent::Drain(drain),
            Body::Resume(_) | Body::Signal(_) | Body::Options(_) => {
                PeerEvent::ProtocolError("unexpected command from the relay".into())
            }
        };
        self.events.push_back(event);
    }

    fn on_welcome(&mut self, welcome: pb::Welcome) {
        if self.echo {
            self.push_command(Body::Options(pb::Options { echo: true }));
        }
        match self.previous_peer {
            Some(previous) => {
                self.push_command(Body::Resume(pb::Resume {
                    last_seq: self.delivered,
                    previous_peer_id: previous.0.to_vec(),
                }));
            }
            None => {
                self.delivered = welcome.last_seq;
                self.own.retain(|&seq| seq > welcome.last_seq);
            }
        }
        for frame in self.unacked.values() {
            self.outbox.push_back((Channel::Send, frame.clone()));
        }
        self.welcome = Some(welcome.clone());
        self.events.push_back(PeerEvent::Welcomed(welcome));
        for early in std::mem::take(&mut self.early) {
            self.on_relayed(&early);
        }
    }

    fn on_relayed(&mut self, bytes: &[u8]) {
        let relayed = match RelayedFrame::parse(bytes) {
            Ok(relayed) => relayed,
            Err(error) => {
                return self
                    .events
                    .push_back(PeerEvent::ProtocolError(format!("relayed frame: {error}")));
            }
        };
        // Seqs are gap-free: an older one is a duplicate (a resume replay
        // overlapping live delivery); a newer one waits for the gap to fill.
        let seq = relayed.seq();
        if seq <= self.delivered || self.ahead.contains_key(&seq) {
            return;
        }
        if self.ahead.len() >= MAX_AHEAD {
            return self.events.push_back(PeerEvent::ProtocolError(format!(
                "seq {} is missing and {MAX_AHEAD} later deltas are waiting; dropped seq {seq}",
                self.delivered + 1
            )));
        }
        let frame = relayed.frame();
        self.ahead.insert(
            seq,
            ReceivedDelta {
                seq,
                origin: relayed.origin(),
                kind: frame.kind(),
                doc_id: frame.doc_id(),
                payload: frame.payload().to_vec(),
            },
        );
        self.advance();
    }

    /// Delivers every delta that is next in seq order, stepping over this
    /// peer's own.
    fn advance(&mut self) {
        loop {
            let next = self.delivered + 1;
            if self.own.remove(&next) {
                self.delivered = next;
            } else if let Some(delta) = self.ahead.remove(&next) {
                self.delivered = next;
                self.events.push_back(PeerEvent::Delta(delta));
            } else {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltamesh_proto::{SecurityFields, SecurityFlags};

    fn welcome(last_seq: u64) -> Vec<u8> {
        command::encode(Body::Welcome(pb::Welcome {
            peer_id: vec![1; 16],
            last_seq,
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
        core.handle_message(Channel::Receive, &relayed(6));
        core.handle_message(Channel::Command, &welcome(5));
        core.handle_message(Channel::Receive, &relayed(7));
        core.handle_message(Channel::Receive, &relayed(7));
        assert_eq!(delivered(&mut core), vec![6, 7]);
    }

    #[test]
    fn a_reconnect_resumes_and_resends_unacked_frames_with_their_numbers() {
        let mut core = PeerCore::new(16, false);
        core.handle_message(Channel::Command, &welcome(0));
        let first = core.send(1, Id::default(), b"a", 0).unwrap();
        let second = core.send(1, Id::default(), b"b", 0).unwrap();
        core.handle_message(
            Channel::Command,
            &command::encode(Body::Ack(pb::Ack {
                client_seq: first,
                seq: 1,
            })),
        );
        core.connection_lost();
        core.handle_message(Channel::Command, &welcome(9));
        // A live delta overtaking the replay waits; the replay comes in order.
        core.handle_message(Channel::Receive, &relayed(10));
        core.handle_message(Channel::Receive, &relayed(2));
        let sent: Vec<_> = std::iter::from_fn(|| core.poll_transmit()).collect();
        let resume = sent
            .iter()
            .find_map(|(c, b)| match (c, command::decode(b)) {
                (Channel::Command, Ok(Body::Resume(r))) => Some(r),
                _ => None,
            })
            .expect("a Resume is sent");
        assert_eq!(resume.last_seq, 1);
        assert_eq!(resume.previous_peer_id, vec![1; 16]);
        let resent: Vec<u64> = sent
            .iter()
            .filter(|(c, _)| *c == Channel::Send)
            .map(|(_, b)| deltamesh_proto::DeltaFrame::parse(b).unwrap().client_seq())
            .collect();
        assert_eq!(resent, vec![second]);
        // Seq 1 was this peer's own; 10 waits for 3..=9.
        assert_eq!(delivered(&mut core), vec![2]);
    }

    fn ack(client_seq: u64, seq: u64) -> Vec<u8> {
        command::encode(Body::Ack(pb::Ack { client_seq, seq }))
    }

    #[test]
    fn own_deltas_are_stepped_over_whichever_arrives_first_ack_or_later_delta() {
        let mut core = PeerCore::new(16, false);
        core.handle_message(Channel::Command, &welcome(0));
        core.send(1, Id::default(), b"mine", 0).unwrap();
        core.send(1, Id::default(), b"mine too", 0).unwrap();
        core.handle_message(Channel::Receive, &relayed(1));
        // Seq 3 overtakes the ack of this peer's own seq 2.
        core.handle_message(Channel::Receive, &relayed(3));
        core.handle_message(Channel::Command, &ack(1, 2));
        core.handle_message(Channel::Command, &ack(2, 4));
        core.handle_message(Channel::Receive, &relayed(5));
        assert_eq!(delivered(&mut core), vec![1, 3, 5]);
        assert_eq!(core.last_seq(), 5);
    }

    #[test]
    fn garbage_from_the_relay_is_reported_not_fatal() {
        let mut core = PeerCore::new(16, false);
        core.handle_message(Channel::Command, &[0xff, 0xff]);
        core.handle_message(Channel::Command, &welcome(0));
        core.handle_message(Channel::Receive, b"not a relayed frame");
        let events: Vec<_> = std::iter::from_fn(|| core.poll_event()).collect();
        assert!(matches!(events[0], PeerEvent::ProtocolError(_)));
        assert!(matches!(events[1], PeerEvent::Welcomed(_)));
        assert!(matches!(events[2], PeerEvent::ProtocolError(_)));
    }
}

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

/// Where a delta's payload starts in a relayed message: after the security
/// header and the delta frame header.
pub const PAYLOAD_OFFSET: usize =
    deltamesh_proto::security::SECURITY_HEADER_LEN + deltamesh_proto::frame::FRAME_HEADER_LEN;

/// A delta received from another peer. `message` is the relayed message as
/// it came off the channel (whatever buffer type the driver owns), so the
/// payload reaches the application without being copied out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedDelta<M = Vec<u8>> {
    /// The session's sequence number.
    pub seq: u64,
    /// The peer that sent it.
    pub origin: Id,
    /// Application-defined kind.
    pub kind: u16,
    /// Application-defined document id.
    pub doc_id: Id,
    /// The whole relayed message; the payload is `message[PAYLOAD_OFFSET..]`.
    pub message: M,
}

impl<M: AsRef<[u8]>> ReceivedDelta<M> {
    /// The application payload.
    pub fn payload(&self) -> &[u8] {
        &self.message.as_ref()[PAYLOAD_OFFSET..]
    }
}

/// What happened on the connection, for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent<M = Vec<u8>> {
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
    /// The relay could not continue this peer's old identity after a
    /// reconnect, so an unacknowledged delta was renumbered: its `Acked` or
    /// `Rejected` will name `new`.
    Renumbered {
        /// The client_seq `send` returned.
        old: u64,
        /// The client_seq it is sent under now.
        new: u64,
    },
    /// A delta from another peer, in seq order.
    Delta(ReceivedDelta<M>),
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
    /// The connection dropped; the peer is reconnecting (a new `Welcomed`
    /// follows once it is back).
    Disconnected(String),
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
    /// The peer is closed.
    #[error("the peer is closed")]
    Closed,
}

/// The peer protocol state. `M` is the driver's buffer type for received
/// messages, kept as it is until the application takes the delta.
pub struct PeerCore<M = Vec<u8>> {
    max_unacked: usize,
    welcome: Option<pb::Welcome>,
    /// The origin this peer's deltas carry and the secret to continue it
    /// from a later connection (from the first `Welcome`).
    identity: Option<(Id, Vec<u8>)>,
    /// A `Resume` is out and its `Resumed` not back: frames wait.
    resuming: bool,
    next_client_seq: u64,
    unacked: BTreeMap<u64, Vec<u8>>,
    /// Every seq up to this one was delivered to the application, or is
    /// this peer's own delta (which the relay does not echo by default).
    delivered: u64,
    /// Deltas received past a gap, by seq.
    ahead: BTreeMap<u64, ReceivedDelta<M>>,
    /// Seqs of this peer's own acknowledged deltas past `delivered`.
    own: BTreeSet<u64>,
    early: Vec<M>,
    outbox: VecDeque<(Channel, Vec<u8>)>,
    events: VecDeque<PeerEvent<M>>,
    echo: bool,
}

impl<M: AsRef<[u8]>> PeerCore<M> {
    /// A fresh peer that keeps at most `max_unacked` deltas awaiting acks.
    pub fn new(max_unacked: usize, echo: bool) -> Self {
        PeerCore {
            max_unacked,
            welcome: None,
            identity: None,
            resuming: false,
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
        if self.welcome.is_some() && !self.resuming {
            self.outbox.push_back((Channel::Send, frame.clone()));
        }
        self.unacked.insert(client_seq, frame);
        Ok(client_seq)
    }

    /// Queues a ping.
    pub fn ping(&mut self, nonce: u64) {
        self.push_command(Body::Ping(pb::Ping { nonce }));
    }

    /// Forgets the current connection; after the next `Welcome` the peer
    /// resumes from the last delivered seq and, once the relay confirms,
    /// resends unacknowledged frames.
    pub fn connection_lost(&mut self) {
        self.welcome = None;
        self.resuming = false;
        self.outbox.clear();
        self.early.clear();
        // The resume replay sends these again, in order.
        self.ahead.clear();
    }

    /// Handles one message received on `channel`.
    pub fn handle_message(&mut self, channel: Channel, message: M) {
        match channel {
            Channel::Command => match command::decode(message.as_ref()) {
                Ok(body) => self.on_command(body),
                Err(CommandError::Empty) => {}
                Err(error) => self
                    .events
                    .push_back(PeerEvent::ProtocolError(format!("command: {error}"))),
            },
            Channel::Receive if self.welcome.is_none() => {
                if self.early.len() < MAX_EARLY_DELTAS {
                    self.early.push(message);
                } else {
                    self.events.push_back(PeerEvent::ProtocolError(
                        "too many deltas before Welcome".into(),
                    ));
                }
            }
            Channel::Receive => self.on_relayed(message),
            Channel::Send => self.events.push_back(PeerEvent::ProtocolError(
                "the relay wrote on the send channel".into(),
            )),
            // Presence is not turned on by this peer yet: nothing to read.
            Channel::Presence => {}
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
    pub fn poll_event(&mut self) -> Option<PeerEvent<M>> {
        self.events.pop_front()
    }

    fn push_command(&mut self, body: Body) {
        self.outbox
            .push_back((Channel::Command, command::encode(body)));
    }

    fn on_command(&mut self, body: Body) {
        let event = match body {
            Body::Welcome(welcome) => return self.on_welcome(welcome),
            Body::Ack(ack) => self.on_ack(ack),
            Body::Acks(acks) => {
                for ack in acks.acks {
                    let event = self.on_ack(ack);
                    self.events.push_back(event);
                }
                return;
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
            Body::Resumed(resumed) => return self.on_resumed(resumed),
            Body::Resume(_) | Body::Signal(_) | Body::Options(_) => {
                PeerEvent::ProtocolError("unexpected command from the relay".into())
            }
        };
        self.events.push_back(event);
    }

    fn on_ack(&mut self, ack: pb::Ack) -> PeerEvent<M> {
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

    fn on_welcome(&mut self, welcome: pb::Welcome) {
        if self.echo {
            self.push_command(Body::Options(pb::Options {
                echo: true,
                ..pb::Options::default()
            }));
        }
        match &self.identity {
            Some((origin, token)) => {
                self.push_command(Body::Resume(pb::Resume {
                    last_seq: self.delivered,
                    previous_peer_id: origin.0.to_vec(),
                    resume_token: token.clone(),
                }));
                // Frames wait for `Resumed`: sent now, they could reach the
                // relay before the Resume (channels are separate streams).
                self.resuming = true;
            }
            None => {
                self.delivered = welcome.last_seq;
                self.own.retain(|&seq| seq > welcome.last_seq);
                self.identity = Some((
                    Id::from_slice(&welcome.peer_id).unwrap_or_default(),
                    welcome.resume_token.clone(),
                ));
                self.resend_unacked();
            }
        }
        self.welcome = Some(welcome.clone());
        self.events.push_back(PeerEvent::Welcomed(welcome));
        for early in std::mem::take(&mut self.early) {
            self.on_relayed(early);
        }
    }

    fn on_resumed(&mut self, resumed: pb::Resumed) {
        if !self.resuming {
            return self
                .events
                .push_back(PeerEvent::ProtocolError("Resumed without a Resume".into()));
        }
        self.resuming = false;
        if !resumed.continued {
            // The relay could not continue the old origin: this connection
            // sends as itself, so unacknowledged frames get its numbers.
            if let Some(welcome) = &self.welcome {
                self.identity = Some((
                    Id::from_slice(&welcome.peer_id).unwrap_or_default(),
                    welcome.resume_token.clone(),
                ));
            }
            let frames = std::mem::take(&mut self.unacked);
            let mut client_seq = resumed.next_client_seq.max(1);
            for (old, mut frame) in frames {
                frame[32..40].copy_from_slice(&client_seq.to_le_bytes());
                self.events.push_back(PeerEvent::Renumbered {
                    old,
                    new: client_seq,
                });
                self.unacked.insert(client_seq, frame);
                client_seq += 1;
            }
            self.next_client_seq = client_seq;
        }
        self.resend_unacked();
    }

    fn resend_unacked(&mut self) {
        for frame in self.unacked.values() {
            self.outbox.push_back((Channel::Send, frame.clone()));
        }
    }

    fn on_relayed(&mut self, message: M) {
        let relayed = match RelayedFrame::parse(message.as_ref()) {
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
        let (origin, kind, doc_id) = (relayed.origin(), frame.kind(), frame.doc_id());
        let delta = ReceivedDelta {
            seq,
            origin,
            kind,
            doc_id,
            message,
        };
        if seq == self.delivered + 1 {
            // The common case: next in order, nothing to hold back.
            self.delivered = seq;
            self.events.push_back(PeerEvent::Delta(delta));
        } else {
            self.ahead.insert(seq, delta);
        }
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
}

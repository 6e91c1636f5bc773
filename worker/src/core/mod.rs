//! The peer's protocol, sans-IO: what to send on which channel and what the
//! relay's messages mean. The native driver (str0m) and the browser driver
//! (RTCDataChannel) feed it channel messages and drain what it wants to send,
//! so both speak exactly one implementation of the protocol.
//!
//! It numbers outgoing frames (`client_seq`), keeps them until acknowledged
//! so a reconnect can resend them with their original numbers, and delivers
//! received deltas strictly in session `seq` order, each exactly once.
//!
//! v1.1 (PROTOCOL §5–§9): after `Welcome` it asks for the [`Features`] it
//! wants with one `Options` and waits for the relay's answer before sending
//! anything that depends on one (a batch, a presence state); a relay that
//! answers `batch`/`presence` false gets v1. Frames longer than the relay's
//! `max_frame_size` go as fragments ([`outbox`]), fragments on `receive`
//! are reassembled ([`fragments`]), batched `receive` messages are split,
//! other peers' presence keeps the newest version per peer ([`presence`]),
//! and direct messages (`PeerSignal`) go both ways.

mod fragments;
mod outbox;
mod presence;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use deltamesh_proto::batch::Batch;
use deltamesh_proto::channel::Channel;
use deltamesh_proto::command::{self, CommandError};
use deltamesh_proto::fragment::{
    DEFAULT_MAX_DELTA_SIZE, FRAGMENT_BODY, FRAGMENT_HEADER_LEN, FragmentHeader,
};
use deltamesh_proto::frame::FRAME_HEADER_LEN;
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::presence::{DEFAULT_MAX_PRESENCE_SIZE, PresenceState};
use deltamesh_proto::security::SECURITY_HEADER_LEN;
use deltamesh_proto::{FrameError, FrameHeader, Id, RelayedFrame};

use fragments::Reassembler;
pub use fragments::ReassemblyError;
use outbox::{Outbox, Shaping};
use presence::{PresenceTable, Verdict};

/// Relayed messages kept while waiting for `Welcome` (they may overtake it:
/// SCTP streams are not ordered with each other).
const MAX_EARLY_DELTAS: usize = 4096;
/// Deltas kept that arrived ahead of a gap (the gap is this peer's own delta
/// whose `Ack` has not arrived yet, or a resume replay still under way).
const MAX_AHEAD: usize = 4096;
/// The largest direct message payload (PROTOCOL §9).
pub const MAX_SIGNAL_PAYLOAD: usize = 16 * 1024;

/// Where a delta's payload starts in a relayed message: after the security
/// header and the delta frame header.
pub const PAYLOAD_OFFSET: usize = SECURITY_HEADER_LEN + FRAME_HEADER_LEN;

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

/// What a peer asks the relay for with `Options` (PROTOCOL §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Own deltas come back on `receive`.
    pub echo: bool,
    /// Several whole frames per message, and `Acks` (§7).
    pub batch: bool,
    /// The presence channel (§8).
    pub presence: bool,
}

impl Features {
    fn any(self) -> bool {
        self.echo || self.batch || self.presence
    }

    fn options(self) -> pb::Options {
        pb::Options {
            echo: self.echo,
            batch: self.batch,
            presence: self.presence,
        }
    }
}

/// What happened on the connection, for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent<M = Vec<u8>> {
    /// The relay admitted this peer.
    Welcomed(pb::Welcome),
    /// The relay's answer to this peer's `Options`: what is in force on
    /// this connection (a feature it does not offer is false).
    OptionsInForce(pb::Options),
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
    /// Another peer left (its presence state, if it had one, was reported
    /// cleared just before).
    PeerLeft(Id),
    /// Another peer's presence state changed; empty means cleared (also
    /// when it left). Only newer states are reported.
    Presence {
        /// Whose state.
        peer: Id,
        /// The state; empty when cleared.
        state: Vec<u8>,
    },
    /// A direct message from another peer (`PeerSignal`).
    Message {
        /// The sender, as the relay names it.
        from: Id,
        /// The application's bytes.
        payload: Vec<u8>,
    },
    /// The answer to a ping.
    Pong(u64),
    /// The relay reported a problem (a direct message's `UNKNOWN_PEER`,
    /// `NOT_PERMITTED`, `TOO_LARGE`, a presence state refused, …).
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
    /// The peer cannot go on and stops for good: the relay no longer holds
    /// the deltas it would resume from (`HISTORY_LOST`), so reconnecting
    /// would fail again. Nothing follows.
    Stopped(String),
}

/// Why the core could not queue a delta, a presence state or a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The frame cannot be built.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Larger than the relay takes: a delta frame over `max_delta_size`
    /// (from `Welcome`, 16 MiB by default; a frame over `max_frame_size`
    /// goes as fragments), a presence state over `max_presence_size`, a
    /// direct message over 16 KiB.
    #[error("{len} bytes exceed the relay's limit of {max} bytes")]
    TooLarge {
        /// The length.
        len: usize,
        /// The relay's limit.
        max: usize,
    },
    /// Too many deltas await acknowledgement.
    #[error("{0} deltas await acknowledgement; wait for acks before sending more")]
    Backlog(usize),
    /// An empty presence state (a clear) from the native peer: str0m 0.25
    /// writes no SCTP chunk for an empty message (WebRTC sends it as one
    /// zero byte with PPID 57), so it would never arrive. The browser peer
    /// can clear; a native one leaves, or sets a state its application
    /// reads as "none".
    #[error("the native peer cannot send an empty presence state (str0m sends no empty messages)")]
    EmptyPresence,
    /// Not connected now (direct messages are not kept for later).
    #[error("not connected to a relay now")]
    NotConnected,
    /// The peer is closed.
    #[error("the peer is closed")]
    Closed,
}

/// The peer protocol state. `M` is the driver's buffer type for received
/// messages, kept as it is until the application takes the delta (a frame
/// put together from fragments or split from a batch becomes an `M` by
/// `From<Vec<u8>>`).
pub struct PeerCore<M = Vec<u8>> {
    max_unacked: usize,
    wanted: Features,
    /// The relay's answer to the last `Options` (`None` while it is out).
    in_force: Option<pb::Options>,
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
    outbox: Outbox,
    reassembler: Reassembler,
    /// This peer's presence state as last set (empty: none), written
    /// again on each new connection.
    own_presence: Vec<u8>,
    presence: PresenceTable,
    events: std::collections::VecDeque<PeerEvent<M>>,
    echo: bool,
    /// Set once the peer cannot continue (`HISTORY_LOST`).
    stopped: bool,
}

impl<M: AsRef<[u8]> + From<Vec<u8>>> PeerCore<M> {
    /// A fresh v1 peer (asking at most for `echo`) that keeps at most
    /// `max_unacked` deltas awaiting acks.
    pub fn new(max_unacked: usize, echo: bool) -> Self {
        Self::with_features(
            max_unacked,
            Features {
                echo,
                ..Features::default()
            },
        )
    }

    /// A fresh peer that asks the relay for `wanted` after each `Welcome`.
    pub fn with_features(max_unacked: usize, wanted: Features) -> Self {
        PeerCore {
            max_unacked,
            wanted,
            in_force: None,
            welcome: None,
            identity: None,
            resuming: false,
            next_client_seq: 1,
            unacked: BTreeMap::new(),
            delivered: 0,
            ahead: BTreeMap::new(),
            own: BTreeSet::new(),
            early: Vec::new(),
            outbox: Outbox::default(),
            reassembler: Reassembler::default(),
            own_presence: Vec::new(),
            presence: PresenceTable::default(),
            events: std::collections::VecDeque::new(),
            echo: wanted.echo,
            stopped: false,
        }
    }

    /// The welcome of the current connection, once received.
    pub fn welcome(&self) -> Option<&pb::Welcome> {
        self.welcome.as_ref()
    }

    /// What the relay put in force on this connection, once it answered.
    pub fn options_in_force(&self) -> Option<&pb::Options> {
        self.in_force.as_ref()
    }

    /// Whether the peer stopped for good ([`PeerEvent::Stopped`]).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Highest seq delivered so far.
    pub fn last_seq(&self) -> u64 {
        self.delivered
    }

    /// Deltas sent but not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// The largest delta frame the relay takes (in fragments if needed).
    fn max_delta_size(&self) -> usize {
        match &self.welcome {
            Some(w) if w.max_delta_size > 0 => w.max_delta_size as usize,
            _ => DEFAULT_MAX_DELTA_SIZE,
        }
    }

    /// The relay's `max_frame_size`, when it named one.
    fn max_frame_size(&self) -> Option<usize> {
        // 0 is protobuf's "unset": the relay named no limit.
        self.welcome
            .as_ref()
            .map(|w| w.max_frame_size as usize)
            .filter(|&max| max > 0)
    }

    fn in_force(&self, feature: impl Fn(&pb::Options) -> bool) -> bool {
        self.in_force.as_ref().is_some_and(feature)
    }

    /// Whether a message on the presence channel is for this peer: presence
    /// is in force, or asked for with the relay's answer still out. The
    /// relay writes the current states right after that answer, and
    /// `presence` is not ordered with `command` (PROTOCOL §5), so they can
    /// come first; the relay writes on it only with presence in force (§8).
    fn takes_presence(&self) -> bool {
        match &self.in_force {
            Some(options) => options.presence,
            None => self.welcome.is_some() && self.wanted.presence,
        }
    }

    fn shaping(&self) -> Shaping {
        let max_frame_size = self.max_frame_size();
        // About 16 KiB per fragment (§6), less if the relay's messages are
        // smaller; the first one still carries the whole frame header.
        let fragment_body = max_frame_size
            .map_or(FRAGMENT_BODY, |max| {
                FRAGMENT_BODY.min(max.saturating_sub(FRAGMENT_HEADER_LEN))
            })
            .max(FRAME_HEADER_LEN);
        // Batches stay about a fragment long, so other messages pass too.
        let batch_limit = self
            .in_force(|o| o.batch)
            .then(|| max_frame_size.map_or(FRAGMENT_BODY, |max| max.min(FRAGMENT_BODY)));
        Shaping {
            fragment_body,
            batch_limit,
        }
    }

    /// Builds and queues a delta; returns its client_seq. A frame longer
    /// than the relay's `max_frame_size` goes as fragments.
    pub fn send(
        &mut self,
        kind: u16,
        doc_id: Id,
        payload: &[u8],
        timestamp_us: u64,
    ) -> Result<u64, SendError> {
        if self.stopped {
            return Err(SendError::Closed);
        }
        if self.unacked.len() >= self.max_unacked {
            return Err(SendError::Backlog(self.unacked.len()));
        }
        let max = self.max_delta_size();
        let len = FRAME_HEADER_LEN + payload.len();
        if len > max {
            return Err(SendError::TooLarge { len, max });
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
        self.next_client_seq += 1;
        self.unacked.insert(client_seq, frame);
        if self.welcome.is_some() && !self.resuming {
            self.queue_frame(client_seq);
        }
        Ok(client_seq)
    }

    fn queue_frame(&mut self, client_seq: u64) {
        let len = self.unacked.get(&client_seq).map_or(0, Vec::len);
        let fragmented = self.max_frame_size().is_some_and(|max| len > max);
        self.outbox.push_frame(client_seq, fragmented);
    }

    /// Sets this peer's presence state (empty clears it). Only the latest
    /// state is kept: one set before the last was written is never sent.
    /// It is written once the relay has `presence` in force, and again
    /// after each reconnect.
    pub fn set_presence(&mut self, state: &[u8]) -> Result<(), SendError> {
        if self.stopped {
            return Err(SendError::Closed);
        }
        let max = match &self.welcome {
            Some(w) if w.max_presence_size > 0 => w.max_presence_size as usize,
            _ => DEFAULT_MAX_PRESENCE_SIZE,
        };
        if state.len() > max {
            return Err(SendError::TooLarge {
                len: state.len(),
                max,
            });
        }
        self.own_presence = state.to_vec();
        self.outbox.set_presence(state.to_vec());
        Ok(())
    }

    /// Sends `payload` to the connected peer `to` (`PeerSignal`). Not kept
    /// across a reconnect: refused while disconnected.
    pub fn send_to(&mut self, to: Id, payload: &[u8]) -> Result<(), SendError> {
        if self.stopped {
            return Err(SendError::Closed);
        }
        if payload.len() > MAX_SIGNAL_PAYLOAD {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max: MAX_SIGNAL_PAYLOAD,
            });
        }
        if self.welcome.is_none() {
            return Err(SendError::NotConnected);
        }
        self.push_command(Body::Signal(pb::PeerSignal {
            peer_id: to.0.to_vec(),
            payload: payload.to_vec(),
        }));
        Ok(())
    }

    /// Queues a ping.
    pub fn ping(&mut self, nonce: u64) {
        self.push_command(Body::Ping(pb::Ping { nonce }));
    }

    /// Forgets the current connection; after the next `Welcome` the peer
    /// asks for its options again, resumes from the last delivered seq and,
    /// once the relay confirms, resends unacknowledged frames (a fragmented
    /// one whole, from its first fragment).
    pub fn connection_lost(&mut self) {
        self.welcome = None;
        self.in_force = None;
        self.resuming = false;
        self.outbox.clear();
        self.reassembler.reset();
        self.early.clear();
        // The resume replay sends these again, in order.
        self.ahead.clear();
    }

    /// Handles one message received on `channel`.
    pub fn handle_message(&mut self, channel: Channel, message: M) {
        if self.stopped {
            return;
        }
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
            Channel::Receive => self.on_receive(message),
            Channel::Send => self.events.push_back(PeerEvent::ProtocolError(
                "the relay wrote on the send channel".into(),
            )),
            Channel::Presence if self.takes_presence() => self.on_presence(message.as_ref()),
            // Presence not in force: nothing on it is for this peer.
            Channel::Presence => {}
        }
    }

    /// The next message to write, with its channel: commands first, then
    /// the latest presence state, then `send` (fragments one at a time).
    pub fn poll_transmit(&mut self) -> Option<(Channel, Vec<u8>)> {
        let shaping = self.shaping();
        let presence = self.welcome.is_some() && self.in_force(|o| o.presence);
        self.outbox.poll(&self.unacked, shaping, presence)
    }

    /// Whether a message waits to be written.
    pub fn wants_to_transmit(&self) -> bool {
        let presence = self.welcome.is_some() && self.in_force(|o| o.presence);
        !self.outbox.is_empty(presence)
    }

    /// Puts back a message the channel could not take yet.
    pub fn unpoll_transmit(&mut self, channel: Channel, bytes: Vec<u8>) {
        self.outbox.unpoll(channel, bytes);
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<PeerEvent<M>> {
        self.events.pop_front()
    }

    fn push_command(&mut self, body: Body) {
        self.outbox.push_command(command::encode(body));
    }

    fn on_command(&mut self, body: Body) {
        let event = match body {
            Body::Welcome(welcome) => return self.on_welcome(welcome),
            Body::Options(options) => return self.on_options(options),
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
                Ok(id) => {
                    if self.presence.remove(id) {
                        self.events.push_back(PeerEvent::Presence {
                            peer: id,
                            state: Vec::new(),
                        });
                    }
                    PeerEvent::PeerLeft(id)
                }
                Err(e) => PeerEvent::ProtocolError(format!("PeerLeft: {e}")),
            },
            Body::Signal(signal) => match Id::from_slice(&signal.peer_id) {
                Ok(from) => PeerEvent::Message {
                    from,
                    payload: signal.payload,
                },
                Err(e) => PeerEvent::ProtocolError(format!("PeerSignal: {e}")),
            },
            Body::Ping(ping) => {
                return self.push_command(Body::Pong(pb::Pong { nonce: ping.nonce }));
            }
            Body::Pong(pong) => PeerEvent::Pong(pong.nonce),
            Body::Error(error) if error.code() == pb::ErrorCode::HistoryLost => {
                return self.stop(error);
            }
            Body::Error(error) => PeerEvent::RelayError(error),
            Body::SlowConsumer(slow) => PeerEvent::SlowConsumer(slow),
            Body::Drain(drain) => PeerEvent::Drain(drain),
            Body::Resumed(resumed) => return self.on_resumed(resumed),
            Body::Resume(_) => PeerEvent::ProtocolError("unexpected command from the relay".into()),
        };
        self.events.push_back(event);
    }

    /// `HISTORY_LOST`: the deltas after `last_seq` are gone from the relay,
    /// so no reconnect can deliver them. The peer reports and stops.
    fn stop(&mut self, error: pb::Error) {
        let reason = format!(
            "the relay lost the history after seq {}: {}",
            self.delivered, error.detail
        );
        self.events.push_back(PeerEvent::RelayError(error));
        self.events.push_back(PeerEvent::Stopped(reason));
        self.stopped = true;
        self.outbox.clear();
    }

    fn on_options(&mut self, options: pb::Options) {
        if self.welcome.is_none() {
            return self.events.push_back(PeerEvent::ProtocolError(
                "Options from the relay before Welcome".into(),
            ));
        }
        self.echo = options.echo;
        if options.presence && !self.own_presence.is_empty() && !self.outbox.has_presence() {
            // A new connection: the relay holds no state of this peer yet.
            self.outbox.set_presence(self.own_presence.clone());
        }
        self.in_force = Some(options);
        self.events.push_back(PeerEvent::OptionsInForce(options));
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
        self.welcome = Some(welcome.clone());
        if self.wanted.any() {
            self.push_command(Body::Options(self.wanted.options()));
        } else {
            // Nothing to ask for: v1, in force at once.
            self.in_force = Some(pb::Options::default());
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
        // Peers that left while this peer was away take their state along.
        let present: HashSet<Id> = welcome
            .peers
            .iter()
            .filter_map(|p| Id::from_slice(p).ok())
            .collect();
        for peer in self.presence.retain_present(&present) {
            self.events.push_back(PeerEvent::Presence {
                peer,
                state: Vec::new(),
            });
        }
        self.events.push_back(PeerEvent::Welcomed(welcome));
        for early in std::mem::take(&mut self.early) {
            self.on_receive(early);
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
        let pending: Vec<u64> = self.unacked.keys().copied().collect();
        for client_seq in pending {
            self.queue_frame(client_seq);
        }
    }

    /// A message on `receive`: a fragment, a relayed frame, or (with
    /// `batch`) several relayed frames back to back.
    fn on_receive(&mut self, message: M) {
        let bytes = message.as_ref();
        if FragmentHeader::is_fragment(bytes) {
            // The relayed frame of the largest delta the relay takes, and
            // room for a relay that counts its limit differently.
            let max_total = self.max_delta_size() + SECURITY_HEADER_LEN + FRAME_HEADER_LEN;
            return match self.reassembler.push(bytes, max_total) {
                Ok(Some(frame)) => self.on_relayed(M::from(frame)),
                Ok(None) => {}
                Err(error) => self
                    .events
                    .push_back(PeerEvent::ProtocolError(format!("fragments: {error}"))),
            };
        }
        if let Err(error) = self.reassembler.interrupt() {
            self.events
                .push_back(PeerEvent::ProtocolError(format!("fragments: {error}")));
        }
        let mut frames = Batch::relayed(bytes);
        match frames.next() {
            Some(Ok(first)) if first.len() == bytes.len() => self.on_relayed(message),
            // Not even one whole frame: let the parser say what is wrong.
            Some(Err(_)) | None => self.on_relayed(message),
            Some(Ok(first)) => {
                let first = first.to_vec();
                let rest: Vec<Result<Vec<u8>, _>> =
                    frames.map(|frame| frame.map(<[u8]>::to_vec)).collect();
                self.on_relayed(M::from(first));
                for frame in rest {
                    match frame {
                        Ok(frame) => self.on_relayed(M::from(frame)),
                        Err(error) => self
                            .events
                            .push_back(PeerEvent::ProtocolError(format!("batch: {error}"))),
                    }
                }
            }
        }
    }

    fn on_presence(&mut self, message: &[u8]) {
        let Some(state) = PresenceState::parse(message) else {
            return self.events.push_back(PeerEvent::ProtocolError(format!(
                "a {}-byte presence message is shorter than its header",
                message.len()
            )));
        };
        let own = self.identity.as_ref().map(|(id, _)| *id);
        let current = self
            .welcome
            .as_ref()
            .and_then(|w| Id::from_slice(&w.peer_id).ok());
        if Some(state.peer_id) == own || Some(state.peer_id) == current {
            return;
        }
        match self
            .presence
            .offer(state.peer_id, state.version, !state.state.is_empty())
        {
            Verdict::Newer => self.events.push_back(PeerEvent::Presence {
                peer: state.peer_id,
                state: state.state.to_vec(),
            }),
            Verdict::Stale => {}
            Verdict::Full => self.events.push_back(PeerEvent::ProtocolError(format!(
                "presence of more than {} peers; ignored {}",
                presence::MAX_PRESENCE_PEERS,
                state.peer_id
            ))),
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
mod tests;

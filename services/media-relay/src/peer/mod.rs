//! One peer connection on a relay: its link (WebRTC or a WebSocket, `link`) and the per-peer
//! protocol, one room each: `commands` (the command channel: options,
//! resume, membership, drain), `inbound` (the delta path in: rates, grants,
//! validation, acknowledgement), `outbound` (delivery from a cursor into
//! the session log), `presence` (the presence channel, PROTOCOL §8) and
//! `direct` (`PeerSignal`, §9). This module holds the connection itself: its state,
//! str0m's events or a socket's messages, and writing to the channels.
//!
//! The peer's outbound delta queue is its cursor: deltas wait in the shared
//! log, not in per-peer copies, and a peer that falls `slow_consumer_warn`
//! deltas behind is told so, at `slow_consumer_limit` it is disconnected
//! (a resumed peer counts from its backlog at resume, so catching up is not
//! falling behind). It never slows the session down.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use deltamesh_proto::channel::Channel;
use deltamesh_proto::command;
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::{Grants, Id};
use str0m::{Event, IceConnectionState};

use crate::log::AckTo;
use crate::rate::{self, TokenBucket};
use crate::reassembly::Reassembly;
use crate::shared::Shared;
use crate::timeline::{Phase, Timeline};

mod commands;
mod direct;
mod inbound;
mod link;
mod outbound;
mod presence;

use link::Write;
pub(crate) use link::{Link, SocketLink};
use presence::PresenceLink;

/// Why a peer connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseReason(pub(crate) String);

/// A peer connected to this relay.
pub(crate) struct Peer {
    /// This connection's id.
    pub(crate) id: Id,
    /// The session it belongs to.
    pub(crate) session: Arc<str>,
    /// What carries its channels.
    pub(crate) link: Link,
    /// Its relay-side ICE ufrag (empty on a WebSocket).
    pub(crate) ice_ufrag: String,
    /// The earliest live deadline scheduled for it in the shard's timer heap.
    pub(crate) timer_at: Option<Instant>,
    /// When the last datagram from it arrived.
    pub(crate) last_rx: Instant,
    /// When its offer was accepted.
    pub(crate) created: Instant,
    /// When it last took a delta, or had none waiting.
    last_progress: Instant,
    /// When its queue depth may be sampled next.
    next_depth_sample: Instant,
    /// Set once the connection must go; the shard then removes it.
    pub(crate) closing: Option<CloseReason>,
    /// Its span and milestones.
    pub(crate) timeline: Timeline,
    /// The id deltas are stamped with (an earlier connection's when resumed).
    origin: Id,
    /// What this connection may do.
    grants: Grants,
    delta_budget: Option<TokenBucket>,
    byte_budget: Option<TokenBucket>,
    command_budget: Option<TokenBucket>,
    /// Messages over a rate since `violations_since`.
    violations: u32,
    violations_since: Instant,
    open: [bool; 4],
    welcomed: bool,
    /// Channels are open, but the log is still catching up with the session.
    awaiting_current: bool,
    /// Where the log sends late verdicts on this connection's deltas.
    ack_to: AckTo,
    next_client_seq: u64,
    /// Next session seq to deliver on `receive`.
    cursor: u64,
    echo: bool,
    /// `Options.batch` is in force: several frames per message, `Acks`.
    batch: bool,
    /// The frame being reassembled from fragments on `send`.
    reassembly: Reassembly,
    /// Acks ready to go, sent together by `flush_acks`.
    pending_acks: Vec<pb::Ack>,
    /// A relayed frame part-way out as fragments on `receive`.
    outgoing: Option<outbound::Outgoing>,
    /// The fewest deltas this peer has been behind since it (re)joined: a
    /// resumed peer starts with its whole backlog and only counts as slow
    /// when it falls further behind than that, not while it catches up.
    best_lag: u64,
    slow_warned: bool,
    /// A write found the send buffer full; flush again when acks free it.
    blocked: bool,
    commands: VecDeque<Vec<u8>>,
    known_members: HashSet<Id>,
    /// The presence channel: what it sends and has seen.
    presence: PresenceLink,
}

impl Peer {
    /// A peer over `link` (an `Rtc` that has accepted the offer, or a
    /// socket still to come); `ack_to` names it (`ack_to.peer` is its id)
    /// and its shard, and its `timeline` starts when it was admitted.
    pub(crate) fn new(
        ack_to: AckTo,
        session: Arc<str>,
        grants: Grants,
        mut link: Link,
        timeline: Timeline,
        shared: &Shared,
    ) -> Self {
        let config = &shared.config;
        let reassembly = Reassembly::new(
            Arc::clone(&shared.reassembly),
            config.max_reassembly_per_connection,
        );
        let id = ack_to.peer;
        let now = timeline.started();
        let ice_ufrag = link
            .rtc()
            .map(|rtc| rtc.direct_api().local_ice_credentials().ufrag)
            .unwrap_or_default();
        Peer {
            id,
            session,
            link,
            ice_ufrag,
            timer_at: None,
            last_rx: now,
            created: now,
            last_progress: now,
            next_depth_sample: now,
            closing: None,
            timeline,
            origin: id,
            grants,
            delta_budget: TokenBucket::new(config.delta_rate, now),
            byte_budget: TokenBucket::new(config.byte_rate, now),
            command_budget: TokenBucket::new(config.command_rate, now),
            violations: 0,
            violations_since: now,
            open: [false; 4],
            welcomed: false,
            awaiting_current: false,
            ack_to,
            next_client_seq: 1,
            cursor: 1,
            echo: false,
            batch: false,
            reassembly,
            pending_acks: Vec::new(),
            outgoing: None,
            best_lag: 0,
            slow_warned: false,
            blocked: false,
            commands: VecDeque::new(),
            known_members: HashSet::new(),
            presence: PresenceLink::new(),
        }
    }

    /// Whether the peer has been welcomed (all channels open).
    pub(crate) fn is_welcomed(&self) -> bool {
        self.welcomed
    }

    /// Whether a write is waiting for room in the send buffer.
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Asks for the connection to end.
    pub(crate) fn close(&mut self, reason: impl Into<String>) {
        if self.closing.is_none() {
            self.closing = Some(CloseReason(reason.into()));
        }
    }

    /// Handles one str0m event that came out at `now`.
    pub(crate) fn on_event(&mut self, event: Event, shared: &Shared, now: Instant) {
        match event {
            Event::ChannelOpen(id, _label) => {
                if let Some(channel) = self.link.channel_of(id) {
                    // Ask str0m to say when a blocked writer has room again.
                    if let Some(mut handle) = self.link.rtc().and_then(|rtc| rtc.channel(id)) {
                        handle.set_buffered_amount_low_threshold(shared.config.send_window / 2);
                    }
                    self.opened(channel, shared, now);
                }
            }
            Event::ChannelData(data) => {
                let channel = self.link.channel_of(data.id);
                self.on_channel_data(channel, &data.data, shared, now);
            }
            Event::ChannelBufferedAmountLow(_) => self.flush(shared, now),
            Event::ChannelClose(_) => self.close("channel closed"),
            Event::IceConnectionStateChange(
                IceConnectionState::Connected | IceConnectionState::Completed,
            ) => self.timeline.reached(Phase::Ice, now, &shared.metrics),
            Event::Connected => self.timeline.reached(Phase::Dtls, now, &shared.metrics),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.close("ice disconnected")
            }
            Event::Closed => self.close("closed by peer"),
            _ => {}
        }
    }

    /// `channel` is open; with every v1 channel open, the peer is welcomed
    /// (once the log is current).
    pub(crate) fn opened(&mut self, channel: Channel, shared: &Shared, now: Instant) {
        self.open[channel.stream_id() as usize] = true;
        let v1_open = Channel::V1
            .iter()
            .all(|c| self.open[c.stream_id() as usize]);
        if !self.welcomed && v1_open {
            self.timeline.reached(Phase::Channels, now, &shared.metrics);
            self.try_welcome(shared);
        }
    }

    /// Handles one message that arrived on `channel` (`None`: one this
    /// connection does not have).
    pub(crate) fn on_channel_data(
        &mut self,
        channel: Option<Channel>,
        data: &[u8],
        shared: &Shared,
        now: Instant,
    ) {
        match channel {
            Some(Channel::Command) => {
                if rate::take(&mut self.command_budget, 1, now) {
                    self.on_command(data, shared, now);
                } else {
                    shared.metrics.limit_hit("command_rate");
                    self.violated_rate(shared, now);
                }
            }
            Some(Channel::Send) => self.on_send(data, shared, now),
            Some(Channel::Presence) => self.on_presence(data, shared, now),
            Some(Channel::Receive) | None => self.send_command(
                Body::Error(pb::Error {
                    code: pb::ErrorCode::WrongChannel.into(),
                    detail: "the receive channel is relay-to-peer only".into(),
                }),
                shared,
            ),
        }
    }

    /// Welcomes the peer once the log is current with its session.
    fn try_welcome(&mut self, shared: &Shared) {
        self.awaiting_current = !shared.log.is_current(&self.session);
        if !self.awaiting_current {
            self.welcome(shared);
        }
    }

    fn welcome(&mut self, shared: &Shared) {
        self.welcomed = true;
        let last_seq = shared.log.head(&self.session);
        self.cursor = last_seq + 1;
        let mut members = HashSet::new();
        shared.directory.connected(&self.session, &mut members);
        members.remove(&self.id);
        self.known_members = members.clone();
        shared.directory.set_connected(&self.session, self.id);
        let resume_token = shared.log.issue_resume_token(&self.session, self.id);
        self.send_command(
            Body::Welcome(pb::Welcome {
                peer_id: self.id.0.to_vec(),
                session: self.session.to_string(),
                relay_id: shared.config.relay_id.0.to_vec(),
                last_seq,
                max_frame_size: u32::try_from(shared.config.max_frame_size).unwrap_or(u32::MAX),
                peers: members.iter().map(|m| m.0.to_vec()).collect(),
                resume_token: resume_token.to_vec(),
                max_delta_size: u32::try_from(shared.config.max_delta_size).unwrap_or(u32::MAX),
                max_presence_size: u32::try_from(shared.config.max_presence_size)
                    .unwrap_or(u32::MAX),
                presence_rate: shared.config.presence_rate.max(1),
            }),
            shared,
        );
        self.timeline.welcomed(last_seq, &shared.metrics);
        // Presence put in force before the Welcome: the current states now.
        self.sync_presence(shared);
        tracing::info!(
            peer = %self.id,
            session = %self.session,
            last_seq,
            trace_id = %self.timeline.trace_id(),
            "peer welcomed"
        );
    }

    /// Counts a message over a rate; too many within the abuse window
    /// disconnect the peer.
    fn violated_rate(&mut self, shared: &Shared, now: Instant) {
        let config = &shared.config;
        if now.duration_since(self.violations_since) > config.abuse_window {
            self.violations = 0;
            self.violations_since = now;
        }
        self.violations += 1;
        if self.violations > config.max_rate_violations && self.closing.is_none() {
            shared.metrics.limit_hit("abuse");
            let detail = format!(
                "more than {} messages over its rate limits within {:?}",
                config.max_rate_violations, config.abuse_window
            );
            tracing::warn!(peer = %self.id, session = %self.session, "{detail}; disconnecting");
            self.fail(pb::ErrorCode::RateLimited, detail);
        }
    }

    /// Queues a command and writes what the channel takes now.
    pub(crate) fn send_command(&mut self, body: Body, shared: &Shared) {
        if self.commands.len() >= shared.config.max_queued_commands {
            return self.close("command queue overflow (slow consumer)");
        }
        self.commands.push_back(command::encode(body));
        self.write_commands();
    }

    /// Writes queued commands, then deltas from the cursor, until the
    /// channels' send buffer is full.
    pub(crate) fn flush(&mut self, shared: &Shared, now: Instant) {
        if self.awaiting_current {
            self.try_welcome(shared);
        }
        if self.write_commands() && self.welcomed {
            if self.presence_retry() {
                self.sync_presence(shared);
            }
            self.deliver(shared, now);
        }
    }

    /// Writes queued commands; true when none is left waiting.
    fn write_commands(&mut self) -> bool {
        self.blocked = false;
        if self.closing.is_some() {
            return false;
        }
        while let Some(message) = self.commands.front() {
            match self.link.write(Channel::Command, message) {
                Write::Done => {
                    self.commands.pop_front();
                }
                Write::Full => {
                    self.blocked = true;
                    return false;
                }
                Write::Closed => return false,
            }
        }
        true
    }

    /// Writes an `Error` straight to the channel (the queue is not flushed
    /// once closing) and closes the connection.
    fn fail(&mut self, code: pb::ErrorCode, detail: String) {
        let message = command::encode(Body::Error(pb::Error {
            code: code.into(),
            detail: format!("{detail}; disconnecting"),
        }));
        let _ = self.link.write(Channel::Command, &message);
        self.close(detail);
    }

    /// Bytes written to the peer's channels and not yet acknowledged.
    fn in_flight(&mut self) -> usize {
        self.link.in_flight()
    }
}

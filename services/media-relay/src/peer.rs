//! One peer connection on a relay: its `Rtc`, its three channels and the
//! per-peer protocol — the command channel, the delta path in (validate,
//! sequence, acknowledge) and out (a cursor into the session log).
//!
//! The peer's outbound delta queue is its cursor: deltas wait in the shared
//! log, not in per-peer copies, and a peer that falls `slow_consumer_warn`
//! deltas behind is told so, at `slow_consumer_limit` it is disconnected
//! (a resumed peer counts from its backlog at resume, so catching up is not
//! falling behind). It never slows the session down.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltamesh_proto::channel::Channel;
use deltamesh_proto::command;
use deltamesh_proto::frame::FRAME_HEADER_LEN;
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::security::SECURITY_HEADER_LEN;
use deltamesh_proto::{DeltaFrame, Grants, Id};
use str0m::channel::ChannelId;
use str0m::{Event, IceConnectionState, Rtc};

use crate::config::RelayConfig;
use crate::log::{Acceptance, AckTo, Appended, LogError};
use crate::rate::{self, TokenBucket};
use crate::shared::Shared;
use crate::store::StoredDelta;
use crate::timeline::{Phase, Timeline};
use crate::wake::LogAck;

/// Deltas read from the log per batch when catching a peer up.
const READ_BATCH: usize = 64;
/// How often a peer's queue depth is sampled at most.
const QUEUE_SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The smallest relayed message: security header plus frame header.
const MIN_RELAYED_LEN: usize = SECURITY_HEADER_LEN + FRAME_HEADER_LEN;

/// Why a peer connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseReason(pub(crate) String);

/// A peer connected to this relay.
pub(crate) struct Peer {
    /// This connection's id.
    pub(crate) id: Id,
    /// The session it belongs to.
    pub(crate) session: Arc<str>,
    /// Its WebRTC state machine.
    pub(crate) rtc: Rtc,
    /// Its relay-side ICE ufrag.
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
    channels: [Option<ChannelId>; 4],
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
    /// The fewest deltas this peer has been behind since it (re)joined: a
    /// resumed peer starts with its whole backlog and only counts as slow
    /// when it falls further behind than that, not while it catches up.
    best_lag: u64,
    slow_warned: bool,
    /// A write found the send buffer full; flush again when acks free it.
    blocked: bool,
    commands: VecDeque<Vec<u8>>,
    known_members: HashSet<Id>,
}

impl Peer {
    /// A peer whose `rtc` has accepted the offer, with its channel ids;
    /// `ack_to` names it (`ack_to.peer` is its id) and its shard, and its
    /// `timeline` starts when the offer was accepted.
    pub(crate) fn new(
        ack_to: AckTo,
        session: Arc<str>,
        grants: Grants,
        mut rtc: Rtc,
        channels: [ChannelId; 4],
        timeline: Timeline,
        config: &RelayConfig,
    ) -> Self {
        let id = ack_to.peer;
        let now = timeline.started();
        let ice_ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        Peer {
            id,
            session,
            rtc,
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
            channels: channels.map(Some),
            open: [false; 4],
            welcomed: false,
            awaiting_current: false,
            ack_to,
            next_client_seq: 1,
            cursor: 1,
            echo: false,
            best_lag: 0,
            slow_warned: false,
            blocked: false,
            commands: VecDeque::new(),
            known_members: HashSet::new(),
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
                if let Some(channel) = self.channel_of(id) {
                    self.open[channel.stream_id() as usize] = true;
                    // Ask str0m to say when a blocked writer has room again.
                    if let Some(mut handle) = self.rtc.channel(id) {
                        handle.set_buffered_amount_low_threshold(shared.config.send_window / 2);
                    }
                }
                let v1_open = Channel::V1
                    .iter()
                    .all(|c| self.open[c.stream_id() as usize]);
                if !self.welcomed && v1_open {
                    self.timeline.reached(Phase::Channels, now, &shared.metrics);
                    self.try_welcome(shared);
                }
            }
            Event::ChannelData(data) => match self.channel_of(data.id) {
                Some(Channel::Command) => {
                    if rate::take(&mut self.command_budget, 1, now) {
                        self.on_command(&data.data, shared, now);
                    } else {
                        shared.metrics.limit_hit("command_rate");
                        self.violated_rate(shared, now);
                    }
                }
                Some(Channel::Send) => self.on_delta(&data.data, shared, now),
                // Presence is not offered yet: the Options answer says so.
                Some(Channel::Presence) => {}
                Some(Channel::Receive) | None => self.send_command(
                    Body::Error(pb::Error {
                        code: pb::ErrorCode::WrongChannel.into(),
                        detail: "the receive channel is relay-to-peer only".into(),
                    }),
                    shared,
                ),
            },
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

    fn channel_of(&self, id: ChannelId) -> Option<Channel> {
        Channel::ALL
            .into_iter()
            .find(|c| self.channels[c.stream_id() as usize] == Some(id))
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
                // Not fragmented yet: the largest delta is one frame.
                max_delta_size: u32::try_from(shared.config.max_frame_size).unwrap_or(u32::MAX),
                ..pb::Welcome::default()
            }),
            shared,
        );
        self.timeline.welcomed(last_seq, &shared.metrics);
        tracing::info!(
            peer = %self.id,
            session = %self.session,
            last_seq,
            trace_id = %self.timeline.trace_id(),
            "peer welcomed"
        );
    }

    fn on_command(&mut self, bytes: &[u8], shared: &Shared, now: Instant) {
        let body = match command::decode(bytes) {
            Ok(body) => body,
            Err(error) => {
                return self.send_command(
                    Body::Error(pb::Error {
                        code: pb::ErrorCode::MalformedCommand.into(),
                        detail: error.to_string(),
                    }),
                    shared,
                );
            }
        };
        match body {
            Body::Ping(ping) => {
                self.send_command(Body::Pong(pb::Pong { nonce: ping.nonce }), shared)
            }
            Body::Pong(_) => {}
            Body::Options(options) => self.set_options(options, shared),
            Body::Resume(resume) => self.resume(resume, shared, now),
            Body::Signal(_) => self.send_command(
                Body::Error(pb::Error {
                    code: pb::ErrorCode::UnexpectedCommand.into(),
                    detail: "peer-to-peer signals are not supported by this relay yet".into(),
                }),
                shared,
            ),
            other => self.send_command(
                Body::Error(pb::Error {
                    code: pb::ErrorCode::UnexpectedCommand.into(),
                    detail: format!("a peer may not send {}", body_name(&other)),
                }),
                shared,
            ),
        }
    }

    /// Puts the peer's options in force, whole, and answers with what is
    /// now in force (PROTOCOL §5).
    fn set_options(&mut self, asked: pb::Options, shared: &Shared) {
        self.echo = asked.echo;
        let in_force = pb::Options {
            echo: self.echo,
            ..pb::Options::default()
        };
        self.send_command(Body::Options(in_force), shared);
    }

    fn resume(&mut self, resume: pb::Resume, shared: &Shared, now: Instant) {
        let mut continued = false;
        if !resume.previous_peer_id.is_empty() {
            let claimed = Id::from_slice(&resume.previous_peer_id)
                .ok()
                .and_then(|previous| {
                    let last =
                        shared
                            .log
                            .claim_origin(&self.session, previous, &resume.resume_token)?;
                    Some((previous, last))
                });
            match claimed {
                Some((previous, last_client_seq)) => {
                    // The connection that held the origin may linger until
                    // it times out; this one replaces it now.
                    if let Some(old) = shared.directory.holder_of(&self.session, previous)
                        && old.peer_id != self.id
                    {
                        shared.close_peer(
                            old.shard,
                            old.peer_id,
                            "replaced by a resumed connection",
                        );
                    }
                    shared
                        .directory
                        .set_origin(&self.session, self.id, previous);
                    self.origin = previous;
                    self.next_client_seq = last_client_seq + 1;
                    continued = true;
                }
                None => self.send_command(
                    Body::Error(pb::Error {
                        code: pb::ErrorCode::ResumeRefused.into(),
                        detail: "unknown previous connection or wrong resume token; \
                                 sending as a new origin"
                            .into(),
                    }),
                    shared,
                ),
            }
        }
        let head = shared.log.head(&self.session);
        self.cursor = resume.last_seq.min(head) + 1;
        self.best_lag = head - resume.last_seq.min(head);
        self.timeline.resumed(self.cursor, continued);
        tracing::info!(peer = %self.id, from = self.cursor, continued, "peer resumes");
        self.send_command(
            Body::Resumed(pb::Resumed {
                from_seq: self.cursor,
                continued,
                next_client_seq: self.next_client_seq,
            }),
            shared,
        );
        self.flush(shared, now);
    }

    fn on_delta(&mut self, bytes: &[u8], shared: &Shared, now: Instant) {
        let peeked = DeltaFrame::peek_client_seq(bytes);
        let client_seq = peeked.unwrap_or(0);
        // Every message counts against the rates, garbage included; the
        // rates are checked first so a flood costs no parsing.
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        shared.metrics.bytes_in.inc_by(size);
        let over = if !rate::take(&mut self.delta_budget, 1, now) {
            Some(("delta_rate", "deltas per second"))
        } else if !rate::take(&mut self.byte_budget, size, now) {
            Some(("byte_rate", "bytes per second"))
        } else {
            None
        };
        if let Some((limit, what)) = over {
            shared.metrics.limit_hit(limit);
            self.advance_client_seq(peeked);
            self.reject(
                client_seq,
                pb::RejectReason::Rate,
                format!("over this connection's limit of {what}; resend it later"),
                shared,
            );
            return self.violated_rate(shared, now);
        }
        if !self.grants.publish {
            self.advance_client_seq(peeked);
            return self.reject(
                client_seq,
                pb::RejectReason::NotPermitted,
                "this connection's token does not grant publish".into(),
                shared,
            );
        }
        if bytes.len() > shared.config.max_frame_size {
            shared.metrics.limit_hit("frame_size");
            self.advance_client_seq(peeked);
            return self.reject(
                client_seq,
                pb::RejectReason::TooLarge,
                format!(
                    "frame is {} bytes; this relay accepts at most {}",
                    bytes.len(),
                    shared.config.max_frame_size
                ),
                shared,
            );
        }
        let frame = match DeltaFrame::parse(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                self.advance_client_seq(peeked);
                return self.reject(client_seq, (&error).into(), error.to_string(), shared);
            }
        };
        if client_seq > self.next_client_seq {
            return self.reject(
                client_seq,
                pb::RejectReason::SequenceGap,
                format!("expected client_seq {}", self.next_client_seq),
                shared,
            );
        }
        self.advance_client_seq(peeked);
        self.timeline.first_delta(client_seq);
        let by = Acceptance {
            origin: self.origin,
            validator: shared.config.relay_id,
            validated_at_us: shared.clock.unix_micros(now),
            signer: shared.config.signer.as_deref(),
        };
        match shared.log.append(&self.session, by, frame, &self.ack_to) {
            Ok(Appended::Stored(seq) | Appended::Duplicate(seq)) => {
                shared.metrics.deltas_in.inc();
                self.send_command(Body::Ack(pb::Ack { client_seq, seq }), shared)
            }
            Ok(Appended::Pending) => {}
            Err(LogError::StaleResend { .. }) => self.reject(
                client_seq,
                pb::RejectReason::SequenceGap,
                "behind the frames already stored and not a known resend; send it with a new client_seq".into(),
                shared,
            ),
            Err(error) => self.reject(
                client_seq,
                pb::RejectReason::Unavailable,
                error.to_string(),
                shared,
            ),
        }
    }

    /// Tells the peer this relay is going away.
    pub(crate) fn drain(
        &mut self,
        reconnect_after: std::time::Duration,
        reason: &str,
        shared: &Shared,
    ) {
        self.send_command(
            Body::Drain(pb::Drain {
                reconnect_after_ms: u32::try_from(reconnect_after.as_millis()).unwrap_or(u32::MAX),
                reason: reason.to_owned(),
            }),
            shared,
        );
    }

    /// Sends the log's late verdict on one of this connection's deltas.
    pub(crate) fn on_log_ack(&mut self, ack: LogAck, shared: &Shared) {
        match ack.outcome {
            Ok(seq) => {
                shared.metrics.deltas_in.inc();
                self.send_command(
                    Body::Ack(pb::Ack {
                        client_seq: ack.client_seq,
                        seq,
                    }),
                    shared,
                )
            }
            Err(detail) => self.reject(
                ack.client_seq,
                pb::RejectReason::Unavailable,
                detail,
                shared,
            ),
        }
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

    fn advance_client_seq(&mut self, peeked: Option<u64>) {
        if let Some(seq) = peeked
            && seq == self.next_client_seq
        {
            self.next_client_seq = seq + 1;
        }
    }

    fn reject(
        &mut self,
        client_seq: u64,
        reason: pb::RejectReason,
        detail: String,
        shared: &Shared,
    ) {
        shared.metrics.deltas_rejected.inc();
        tracing::debug!(peer = %self.id, client_seq, ?reason, %detail, "delta rejected");
        self.send_command(
            Body::Reject(pb::Reject {
                client_seq,
                reason: reason.into(),
                detail,
            }),
            shared,
        );
    }

    /// Queues a command and writes what the channel takes now.
    pub(crate) fn send_command(&mut self, body: Body, shared: &Shared) {
        if self.commands.len() >= shared.config.max_queued_commands {
            return self.close("command queue overflow (slow consumer)");
        }
        self.commands.push_back(command::encode(body));
        self.write_commands();
    }

    /// Tells the peer who joined and left since it last heard.
    pub(crate) fn sync_members(&mut self, shared: &Shared, scratch: &mut HashSet<Id>) {
        if !self.welcomed {
            return;
        }
        shared.directory.connected(&self.session, scratch);
        scratch.remove(&self.id);
        let left: Vec<Id> = self
            .known_members
            .iter()
            .filter(|m| !scratch.contains(m))
            .copied()
            .collect();
        for peer in left {
            self.known_members.remove(&peer);
            self.send_command(
                Body::PeerLeft(pb::PeerLeft {
                    peer_id: peer.0.to_vec(),
                    reason: String::new(),
                }),
                shared,
            );
        }
        for &peer in scratch.iter() {
            if self.known_members.insert(peer) {
                self.send_command(
                    Body::PeerJoined(pb::PeerJoined {
                        peer_id: peer.0.to_vec(),
                    }),
                    shared,
                );
            }
        }
    }

    /// Writes queued commands, then deltas from the cursor, until the
    /// channels' send buffer is full.
    pub(crate) fn flush(&mut self, shared: &Shared, now: Instant) {
        if self.awaiting_current {
            self.try_welcome(shared);
        }
        if self.write_commands() && self.welcomed {
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
            match write(&mut self.rtc, self.channels[0], message) {
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

    fn deliver(&mut self, shared: &Shared, now: Instant) {
        let head = shared.log.head(&self.session);
        if !self.grants.subscribe {
            // Nothing to deliver: the peer is never behind.
            self.cursor = head + 1;
            return;
        }
        let lag = head.saturating_sub(self.cursor.saturating_sub(1));
        if now >= self.next_depth_sample {
            // At most every QUEUE_SAMPLE_EVERY per peer: the histogram is
            // shared by every shard.
            self.next_depth_sample = now + QUEUE_SAMPLE_EVERY;
            shared.metrics.peer_queue_depth.observe(lag as f64);
        }
        self.best_lag = self.best_lag.min(lag);
        // How far the peer has fallen behind its best since it joined.
        let fallen = lag - self.best_lag;
        if fallen > shared.config.slow_consumer_limit {
            self.commands
                .push_back(command::encode(Body::Error(pb::Error {
                    code: pb::ErrorCode::SlowConsumer.into(),
                    detail: format!("{lag} deltas behind; disconnecting"),
                })));
            let _ = write(&mut self.rtc, self.channels[0], &self.commands[0]);
            return self.close("slow consumer");
        }
        if fallen > shared.config.slow_consumer_warn && !self.slow_warned {
            self.slow_warned = true;
            let queued = u32::try_from(lag).unwrap_or(u32::MAX);
            let limit = u32::try_from(shared.config.slow_consumer_limit).unwrap_or(u32::MAX);
            self.commands
                .push_back(command::encode(Body::SlowConsumer(pb::SlowConsumer {
                    queued,
                    limit,
                })));
        } else if fallen <= shared.config.slow_consumer_warn / 2 {
            self.slow_warned = false;
        }
        let window = shared.config.send_window;
        // Measured once: every delta written below is counted in locally.
        let mut in_flight = self.in_flight();
        let mut batch: Vec<StoredDelta> = Vec::new();
        let mut relayed = Vec::new();
        while self.cursor <= head {
            if in_flight >= window {
                self.blocked = true;
                return;
            }
            // Read no more than the window can take (at least one).
            let room = (window - in_flight) / MIN_RELAYED_LEN + 1;
            batch.clear();
            if let Err(error) =
                shared
                    .log
                    .read(&self.session, self.cursor, room.min(READ_BATCH), &mut batch)
            {
                let code = match error {
                    LogError::Evicted { .. } => pb::ErrorCode::HistoryLost,
                    _ => pb::ErrorCode::Internal,
                };
                return self.fail(code, format!("cannot deliver seq {}: {error}", self.cursor));
            }
            if batch.is_empty() {
                return;
            }
            for delta in &batch {
                let view = delta.view();
                if view.origin() == self.origin && !self.echo {
                    self.cursor += 1;
                    continue;
                }
                relayed.clear();
                view.write_relayed(&mut relayed);
                if in_flight > 0 && in_flight + relayed.len() > window {
                    self.blocked = true;
                    return;
                }
                match write(&mut self.rtc, self.channels[2], &relayed) {
                    Write::Done => {
                        self.cursor += 1;
                        in_flight += relayed.len();
                        self.last_progress = now;
                        shared.metrics.deltas_out.inc();
                        shared.metrics.bytes_out.inc_by(relayed.len() as u64);
                    }
                    Write::Full => {
                        self.blocked = true;
                        return;
                    }
                    Write::Closed => return,
                }
            }
        }
    }
}

impl Peer {
    /// Disconnects the peer if it has had deltas waiting and taken none for
    /// the stall timeout.
    pub(crate) fn check_progress(&mut self, now: Instant, shared: &Shared) {
        if !self.welcomed || self.closing.is_some() || !self.grants.subscribe {
            return;
        }
        if self.cursor > shared.log.head(&self.session) {
            self.last_progress = now;
        } else if now.duration_since(self.last_progress) > shared.config.stall_timeout {
            let stalled = now.duration_since(self.last_progress);
            self.drop_slow_consumer(format!("took no delta for {stalled:?}"));
        }
    }

    /// Tells the peer why (best effort: it may not be reading) and closes it.
    fn drop_slow_consumer(&mut self, why: String) {
        self.fail(pb::ErrorCode::SlowConsumer, format!("slow consumer: {why}"));
    }

    /// Writes an `Error` straight to the channel (the queue is not flushed
    /// once closing) and closes the connection.
    fn fail(&mut self, code: pb::ErrorCode, detail: String) {
        let message = command::encode(Body::Error(pb::Error {
            code: code.into(),
            detail: format!("{detail}; disconnecting"),
        }));
        let _ = write(&mut self.rtc, self.channels[0], &message);
        self.close(detail);
    }

    /// Bytes written to the peer's channels and not yet acknowledged.
    fn in_flight(&mut self) -> usize {
        self.channels
            .iter()
            .flatten()
            .filter_map(|&id| self.rtc.channel(id).map(|mut c| c.buffered_amount()))
            .sum()
    }
}

enum Write {
    Done,
    Full,
    Closed,
}

fn write(rtc: &mut Rtc, channel: Option<ChannelId>, bytes: &[u8]) -> Write {
    let Some(mut handle) = channel.and_then(|id| rtc.channel(id)) else {
        return Write::Closed;
    };
    match handle.write(true, bytes) {
        Ok(true) => Write::Done,
        Ok(false) => Write::Full,
        Err(_) => Write::Closed,
    }
}

fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Welcome(_) => "Welcome",
        Body::Ack(_) => "Ack",
        Body::Reject(_) => "Reject",
        Body::PeerJoined(_) => "PeerJoined",
        Body::PeerLeft(_) => "PeerLeft",
        Body::Ping(_) => "Ping",
        Body::Pong(_) => "Pong",
        Body::Resume(_) => "Resume",
        Body::Signal(_) => "PeerSignal",
        Body::Drain(_) => "Drain",
        Body::Error(_) => "Error",
        Body::Options(_) => "Options",
        Body::SlowConsumer(_) => "SlowConsumer",
        Body::Resumed(_) => "Resumed",
        Body::Acks(_) => "Acks",
    }
}

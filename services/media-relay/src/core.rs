//! One shard's relay core, sans-IO (as quinn-proto's `Endpoint`): it owns
//! the shard's peers and their `Rtc`s, routes each datagram in O(1)
//! ([`Demux`]), wakes only peers whose deadline is due ([`Timers`]), drains
//! `poll_output` after every input as str0m requires, and runs the delta
//! path through [`Peer`]. It never touches a socket, a clock or a runtime:
//! time comes in as `now`, datagrams come in through
//! [`handle_datagram`](RelayCore::handle_datagram) (UDP) or
//! [`handle_tcp_frame`](RelayCore::handle_tcp_frame) (ICE-TCP, one RFC 4571
//! frame) and go out through [`poll_transmit`](RelayCore::poll_transmit),
//! each [`Transmit`] saying which transport it takes.
//!
//! A driver calls, in a loop:
//! - A (input): [`handle_datagram`](RelayCore::handle_datagram) for each
//!   datagram, [`handle_timeout`](RelayCore::handle_timeout) when
//!   [`poll_timeout`](RelayCore::poll_timeout) is due, [`handle_wake`](RelayCore::handle_wake)
//!   when the shard's [`ShardWake`] fires (log verdicts, session news,
//!   direct messages, closes from other shards), and the commands ([`offer`](RelayCore::offer),
//!   [`trickle`](RelayCore::trickle), [`close`](RelayCore::close),
//!   [`drain`](RelayCore::drain), [`shutdown`](RelayCore::shutdown));
//! - B (output): then [`poll_transmit`](RelayCore::poll_transmit) until it is
//!   empty, and [`poll_timeout`](RelayCore::poll_timeout) for when to call
//!   again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;
use opentelemetry::global::BoxedSpan;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Input, Output, Rtc, RtcConfig};

use crate::command::{Offer, OfferAnswer, PeerAccess};
use crate::config::{SCTP_MAX_MESSAGE_SIZE, SCTP_SEND_BUFFER};
use crate::demux::{Demux, Remote, Route};
use crate::directory::{Limits, Member, MemberState};
use crate::error::RelayError;
use crate::ice_restart::{self, IceRestart, IceRestarted, RestartOffer};
use crate::log::AckTo;
use crate::peer::{Link, Peer};
use crate::shared::Shared;
use crate::timeline::{self, Timeline};
use crate::timers::Timers;
use crate::wake::{DirectMessage, LogAck, News, ShardWake};
use crate::websocket::SocketOutput;

mod socket;

/// Longest a peer goes without a timer, so idle and connect deadlines are checked.
const MAX_TIMER: Duration = Duration::from_millis(500);

/// A datagram the core wants sent from the shard's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// UDP from the shard's socket, or TCP on the connection whose remote
    /// end is `destination`.
    pub proto: Protocol,
    /// Where it goes.
    pub destination: SocketAddr,
    /// Its bytes.
    pub contents: Vec<u8>,
}

/// The shard could not make the DTLS certificate its peers share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot generate a DTLS certificate")]
pub struct NoCertificate;

type PeerKey = u64;

/// One shard's peers and protocol state, driven from outside.
pub struct RelayCore {
    index: usize,
    /// The advertised host candidate address (the destination of every datagram).
    local_addr: SocketAddr,
    /// The advertised passive ICE-TCP candidate address, if the shard listens on TCP.
    tcp_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    wake: Arc<ShardWake>,
    rtc_config: RtcConfig,
    peers: HashMap<PeerKey, Peer>,
    by_id: HashMap<Id, PeerKey>,
    sessions: HashMap<Arc<str>, Vec<PeerKey>>,
    demux: Demux<PeerKey>,
    timers: Timers<PeerKey>,
    closing: Vec<PeerKey>,
    /// Reused buffer of timer entries due in one turn.
    due_scratch: Vec<(PeerKey, Instant)>,
    /// Datagrams for the driver to send, in order.
    transmits: VecDeque<Transmit>,
    next_key: PeerKey,
    members_scratch: HashSet<Id>,
    /// What the socket driver must write or close, in order.
    socket_out: VecDeque<SocketOutput>,
}

impl RelayCore {
    /// The core of shard `index` of the relay sharing `shared`, reached by
    /// peers at `local_addr`.
    pub fn new(
        shared: Arc<Shared>,
        index: usize,
        local_addr: SocketAddr,
    ) -> Result<Self, NoCertificate> {
        let wake = Arc::clone(shared.wake(index).ok_or(NoCertificate)?);
        let provider = str0m::crypto::from_feature_flags();
        // One certificate per shard: generating one per connection would
        // cost a key generation on every offer.
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or(NoCertificate)?;
        let rtc_config = RtcConfig::new()
            .set_crypto_provider(Arc::new(provider))
            .set_dtls_cert(cert)
            .set_ice_lite(true)
            .clear_codecs()
            .set_sctp_max_message_size(SCTP_MAX_MESSAGE_SIZE)
            // Room for the largest message: str0m refuses a write larger
            // than the free buffer. Deltas stay within `send_window`.
            .set_sctp_max_buffered_amount(SCTP_SEND_BUFFER);
        Ok(RelayCore {
            index,
            local_addr,
            tcp_addr: None,
            shared,
            wake,
            rtc_config,
            peers: HashMap::new(),
            by_id: HashMap::new(),
            sessions: HashMap::new(),
            demux: Demux::default(),
            timers: Timers::default(),
            closing: Vec::new(),
            due_scratch: Vec::new(),
            transmits: VecDeque::new(),
            next_key: 0,
            members_scratch: HashSet::new(),
            socket_out: VecDeque::new(),
        })
    }

    /// The address peers reach this shard at.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Also answers offers with a passive ICE-TCP host candidate at `addr`
    /// (RFC 6544), for a driver that listens there and hands the core each
    /// frame through [`handle_tcp_frame`](Self::handle_tcp_frame).
    pub fn set_tcp_addr(&mut self, addr: SocketAddr) {
        self.tcp_addr = Some(addr);
    }

    /// Whether the TCP connection from `remote` carries a path a peer's
    /// `Rtc` verified (a STUN check that passed its integrity check): a
    /// driver reaps connections that are not, or are no longer.
    pub fn is_tcp_path(&self, remote: SocketAddr) -> bool {
        self.demux.knows(Remote {
            proto: Protocol::Tcp,
            addr: remote,
        })
    }

    /// The wake-up handle the driver waits on alongside its socket.
    pub fn wake_handle(&self) -> &Arc<ShardWake> {
        &self.wake
    }

    /// Peer connections on this shard.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    // A: input.

    /// Handles one datagram from `source` that arrived at `now`.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        self.route_datagram(now, Remote::udp(source), datagram);
        self.reap();
    }

    /// Handles one datagram (RFC 4571 frame, prefix removed) from the TCP
    /// connection whose remote end is `source`, arrived at `now`.
    pub fn handle_tcp_frame(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) {
        let remote = Remote {
            proto: Protocol::Tcp,
            addr: source,
        };
        self.route_datagram(now, remote, datagram);
        self.reap();
    }

    /// Handles every peer deadline due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Take what is due first: a peer driven below may ask for another
        // timeout at `now` already, and that one must wait for the next call
        // (with a fresh `now`) or this would never end.
        let mut due = std::mem::take(&mut self.due_scratch);
        while let Some(entry) = self.timers.pop_due(now) {
            due.push(entry);
        }
        for (key, at) in due.drain(..) {
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if peer.timer_at != Some(at) {
                continue;
            }
            peer.timer_at = None;
            let config = &self.shared.config;
            if now.duration_since(peer.last_rx) > config.idle_timeout {
                peer.close("timed out: no packets from the peer");
            } else if !peer.is_welcomed()
                && now.duration_since(peer.created) > config.connect_timeout
            {
                peer.close("timed out connecting");
            } else if let Some(Err(error)) = peer
                .link
                .rtc()
                .map(|rtc| rtc.handle_input(Input::Timeout(now)))
            {
                peer.close(format!("webrtc error: {error}"));
            } else {
                peer.check_progress(now, &self.shared);
                peer.check_fragments(now, &self.shared);
                peer.presence_due(&self.shared, now);
            }
            self.drive(key, now);
        }
        self.due_scratch = due;
        self.reap();
    }

    /// Handles what was marked on the shard's [`ShardWake`] since the last
    /// call: the log's verdicts, sessions with news, closes asked by other
    /// shards.
    pub fn handle_wake(&mut self, now: Instant) {
        let woken = self.wake.take();
        for (session, news) in woken.sessions {
            self.refresh(&session, news, now);
        }
        self.on_log_acks(woken.acks, now);
        self.on_signals(woken.signals, now);
        for (peer_id, reason) in woken.closes {
            // The peer may be gone already: nothing to do then.
            let _ = self.close(peer_id, &reason);
        }
        self.reap();
    }

    /// Accepts `offer` for a new peer at `now`, if the relay's limits allow
    /// it, and answers it.
    pub fn offer(&mut self, now: Instant, offer: Offer) -> Result<OfferAnswer, RelayError> {
        let Offer {
            peer_id,
            session,
            access,
            sdp,
            connection,
        } = offer;
        let grants = access.grants;
        let answered = self.admit(now, peer_id, &session, access).and_then(|()| {
            self.answer(now, sdp)
                .inspect_err(|_| self.shared.directory.remove(&session, peer_id, &self.wake))
        });
        match answered {
            Ok((rtc, channels, offer, answer)) => {
                let new = NewPeer {
                    peer_id,
                    session,
                    grants,
                    rtc,
                    channels,
                    offer,
                    connection,
                };
                Ok(self.add_peer(now, new, answer))
            }
            Err(error) => {
                timeline::refused(connection, &error);
                Err(error)
            }
        }
    }

    /// Adds trickled remote candidates to `peer_id`.
    pub fn trickle(
        &mut self,
        now: Instant,
        peer_id: Id,
        candidates: Vec<Candidate>,
    ) -> Result<(), RelayError> {
        let key = *self.by_id.get(&peer_id).ok_or(RelayError::UnknownPeer)?;
        if let Some(rtc) = self.peers.get_mut(&key).and_then(|p| p.link.rtc()) {
            for candidate in candidates {
                rtc.add_remote_candidate(candidate);
            }
        }
        self.drive(key, now);
        self.reap();
        Ok(())
    }

    /// Restarts `peer_id`'s ICE (RFC 9725 §4.4): fresh local credentials,
    /// the peer's new ones and candidates, the old candidate pairs flushed
    /// (its offer accepted again, see [`crate::ice_restart`]), so the pair
    /// it nominates next is the send path; the connection (DTLS, SCTP,
    /// channels, its place in the stream) stays. The demux and the
    /// directory learn the new local ufrag (the resource's new ETag); a
    /// check from a new address under it is verified and learned as any
    /// first check is.
    pub fn restart_ice(
        &mut self,
        now: Instant,
        peer_id: Id,
        restart: IceRestart,
    ) -> Result<IceRestarted, RelayError> {
        let key = *self.by_id.get(&peer_id).ok_or(RelayError::UnknownPeer)?;
        let candidates = self.local_candidates().map_err(RelayError::BadCandidate)?;
        let peer = self.peers.get_mut(&key).ok_or(RelayError::UnknownPeer)?;
        let Some((rtc, offer)) = peer.link.rtc_and_offer() else {
            return Err(RelayError::BadCandidate(
                "the peer is on the WebSocket lane: it has no ICE to restart".into(),
            ));
        };
        let local = ice_restart::renegotiate(rtc, offer, &restart.remote)
            .map_err(RelayError::BadCandidate)?;
        for remote in restart.candidates {
            rtc.add_remote_candidate(remote);
        }
        self.demux.rename_peer(key, &peer.ice_ufrag, &local.ufrag);
        peer.ice_ufrag.clone_from(&local.ufrag);
        self.shared
            .directory
            .set_ice_ufrag(&peer.session, peer_id, &local.ufrag);
        self.drive(key, now);
        self.reap();
        Ok(IceRestarted {
            ice_ufrag: local.ufrag,
            ice_pwd: local.pass,
            candidates: candidates.iter().map(Candidate::to_sdp_string).collect(),
        })
    }

    /// Tells every peer to reconnect elsewhere after `reconnect_after`.
    pub fn drain(&mut self, now: Instant, reconnect_after: Duration, reason: &str) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.drain(reconnect_after, reason, &self.shared);
            }
            self.drive(key, now);
        }
        self.reap();
    }

    /// Closes `peer_id`'s connection with `reason`.
    pub fn close(&mut self, peer_id: Id, reason: &str) -> Result<(), RelayError> {
        let key = *self.by_id.get(&peer_id).ok_or(RelayError::UnknownPeer)?;
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.close(reason);
        }
        self.closing.push(key);
        self.reap();
        Ok(())
    }

    /// Closes every peer: the relay is stopping.
    pub fn shutdown(&mut self) {
        for (&key, peer) in &mut self.peers {
            peer.close("relay shutting down");
            self.closing.push(key);
        }
        self.reap();
    }

    // B: output.

    /// The next datagram to send, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next;
    /// `None` while the shard has no peers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    // Inside.

    fn route_datagram(&mut self, now: Instant, source: Remote, datagram: &[u8]) {
        let destination = match source.proto {
            Protocol::Udp => self.local_addr,
            _ => match self.tcp_addr {
                Some(addr) => addr,
                None => return,
            },
        };
        let (key, verify) = match self.demux.route(source, datagram) {
            Route::Known(key) => (key, false),
            Route::Candidate(key) => (key, true),
            Route::Unknown => return,
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: source.proto,
                source: source.addr,
                destination,
                contents,
            },
        );
        if verify {
            // Learn a new address only from a STUN message that passes
            // this peer's integrity check.
            let accepted = peer.link.rtc().is_some_and(|rtc| rtc.accepts(&input));
            if !accepted || !self.demux.learn(key, source) {
                return;
            }
        }
        peer.last_rx = now;
        if let Some(Err(error)) = peer.link.rtc().map(|rtc| rtc.handle_input(input)) {
            peer.close(format!("webrtc error: {error}"));
        }
        // Acknowledgements in this datagram may have opened the window; a
        // writer still blocked is retried once more inside `drive`.
        if peer.is_blocked() {
            peer.flush(&self.shared, now);
        }
        self.drive(key, now);
    }

    /// Counts a new peer in the directory, if the relay's limits allow it.
    fn admit(
        &mut self,
        now: Instant,
        peer_id: Id,
        session: &Arc<str>,
        access: PeerAccess,
    ) -> Result<(), RelayError> {
        let config = &self.shared.config;
        let limits = Limits {
            max_peers: config.max_peers,
            max_per_session: config.max_peers_per_session,
            max_pending: config.max_pending,
        };
        let member = Member {
            peer_id,
            origin: peer_id,
            state: MemberState::Connecting,
            joined_at: self.shared.clock.time(now),
            shard: self.index,
            ice_ufrag: String::new(),
            identity: access.identity,
        };
        self.shared
            .directory
            .admit(session, member, &self.wake, limits)
            .inspect_err(|error| {
                self.shared.metrics.limit_hit(match error {
                    RelayError::SessionFull { .. } => "session_full",
                    RelayError::TooManyPending => "pending",
                    _ => "relay_full",
                })
            })
    }

    /// Builds an `Rtc` that answers `offer`, with the three channels.
    /// This shard's host candidates: UDP, and passive TCP when it listens
    /// on TCP.
    fn local_candidates(&self) -> Result<Vec<Candidate>, String> {
        let mut candidates = vec![
            Candidate::host(self.local_addr, "udp")
                .map_err(|e| format!("relay host candidate: {e}"))?,
        ];
        if let Some(addr) = self.tcp_addr {
            candidates.push(
                Candidate::builder()
                    .tcp()
                    .host(addr)
                    .tcptype(TcpType::Passive)
                    .build()
                    .map_err(|e| format!("relay TCP candidate: {e}"))?,
            );
        }
        Ok(candidates)
    }

    fn answer(
        &self,
        now: Instant,
        offer: SdpOffer,
    ) -> Result<(Rtc, [ChannelId; 4], RestartOffer, SdpAnswer), RelayError> {
        let mut rtc = self.rtc_config.clone().build(now);
        for candidate in self.local_candidates().map_err(RelayError::BadOffer)? {
            rtc.add_local_candidate(candidate);
        }
        // Negotiated channels must exist before the offer is accepted, or
        // str0m drops them (see docs/ARCHITECTURE.md, "str0m traps").
        let channels = Channel::ALL.map(|channel| {
            rtc.direct_api()
                .create_data_channel(channel_config(channel))
        });
        let kept = RestartOffer::new(&offer);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| RelayError::BadOffer(format!("offer not acceptable: {e}")))?;
        Ok((rtc, channels, kept, answer))
    }

    /// Adds the admitted peer whose `rtc` made `answer`.
    fn add_peer(&mut self, now: Instant, new: NewPeer, answer: SdpAnswer) -> OfferAnswer {
        let NewPeer {
            peer_id,
            session,
            grants,
            rtc,
            channels,
            offer,
            connection,
        } = new;
        let ack_to = AckTo {
            shard: Arc::clone(&self.wake),
            peer: peer_id,
        };
        let timeline = Timeline::new(connection, now, &self.shared.metrics);
        let peer = Peer::new(
            ack_to,
            Arc::clone(&session),
            grants,
            Link::webrtc(rtc, channels, offer),
            timeline,
            &self.shared,
        );
        let ice_ufrag = peer.ice_ufrag.clone();
        let key = self.insert_peer(peer);
        self.demux.add_peer(key, &ice_ufrag);
        self.shared
            .directory
            .set_ice_ufrag(&session, peer_id, &ice_ufrag);
        self.drive(key, now);
        OfferAnswer {
            peer_id,
            answer_sdp: answer.to_sdp_string(),
            ice_ufrag,
        }
    }

    /// Adds an admitted peer to the shard: its session's watch, its key,
    /// the counts. Routes for its transport are the caller's.
    fn insert_peer(&mut self, peer: Peer) -> PeerKey {
        let key = self.next_key;
        self.next_key += 1;
        self.shared.log.watch(&peer.session, &self.wake);
        self.sessions
            .entry(Arc::clone(&peer.session))
            .or_default()
            .push(key);
        self.by_id.insert(peer.id, key);
        self.peers.insert(key, peer);
        self.shared.count_peer(self.index, true);
        self.shared.metrics.peers.inc();
        key
    }

    /// Hands the log's late verdicts to the peers that sent the deltas.
    /// Verdicts that arrive together are answered together (one `Acks`
    /// per peer with `batch` in force).
    fn on_log_acks(&mut self, acks: Vec<LogAck>, now: Instant) {
        let mut answered = Vec::new();
        for ack in acks {
            if let Some(&key) = self.by_id.get(&ack.peer)
                && let Some(peer) = self.peers.get_mut(&key)
            {
                peer.on_log_ack(ack, &self.shared);
                answered.push(key);
            }
        }
        answered.sort_unstable();
        answered.dedup();
        for key in answered {
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.flush_acks(&self.shared);
            }
            self.drive(key, now);
        }
    }

    /// Delivers direct messages to their recipients on this shard, in order;
    /// one whose recipient left, or is not in the message's session, is
    /// dropped.
    fn on_signals(&mut self, signals: Vec<DirectMessage>, now: Instant) {
        for message in signals {
            let Some(&key) = self.by_id.get(&message.to) else {
                continue;
            };
            if let Some(peer) = self.peers.get_mut(&key)
                && peer.session == message.session
                && peer.is_welcomed()
            {
                peer.deliver_signal(message, &self.shared);
            }
            self.drive(key, now);
        }
    }

    /// Brings every local peer of `session` up to date with `news`.
    fn refresh(&mut self, session: &Arc<str>, news: News, now: Instant) {
        let Some(keys) = self.sessions.get(session).cloned() else {
            return;
        };
        for key in keys {
            if let Some(peer) = self.peers.get_mut(&key) {
                if news.members {
                    peer.sync_members(&self.shared, &mut self.members_scratch);
                }
                if news.presence {
                    peer.sync_presence(&self.shared);
                }
                peer.flush(&self.shared, now);
            }
            self.drive(key, now);
        }
    }

    /// Drains a peer's `poll_output`: queues its datagrams, handles its
    /// events, and schedules its next deadline.
    fn drive(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.link.rtc().is_none() {
            return self.drive_socket(key, now);
        }
        let mut retried = false;
        while let Some(rtc) = peer.link.rtc() {
            match rtc.poll_output() {
                Ok(Output::Transmit(transmit)) => self.transmits.push_back(Transmit {
                    proto: transmit.proto,
                    destination: transmit.destination,
                    contents: transmit.contents.into(),
                }),
                Ok(Output::Event(event)) => peer.on_event(event, &self.shared, now),
                Ok(Output::Timeout(_)) if peer.is_blocked() && !retried => {
                    // str0m applies acknowledgements while polling, so the
                    // window may have opened just now; the last ack would
                    // otherwise leave the peer waiting for a datagram that
                    // never comes.
                    retried = true;
                    peer.flush(&self.shared, now);
                }
                Ok(Output::Timeout(at)) => {
                    let mut at = at.min(now + MAX_TIMER);
                    if let Some(presence) = peer.presence_deadline() {
                        at = at.min(presence.max(now));
                    }
                    if peer.timer_at.is_none_or(|current| at < current) {
                        peer.timer_at = Some(at);
                        self.timers.schedule(key, at);
                    }
                    break;
                }
                Err(error) => {
                    peer.close(format!("webrtc error: {error}"));
                    break;
                }
            }
        }
        if peer.closing.is_some() || peer.link.rtc().is_some_and(|rtc| !rtc.is_alive()) {
            peer.close("connection ended");
            self.closing.push(key);
        }
    }

    /// Removes peers that are closing: says goodbye on the wire, frees their
    /// routes, and tells their session.
    fn reap(&mut self) {
        while let Some(key) = self.closing.pop() {
            let Some(mut peer) = self.peers.remove(&key) else {
                continue;
            };
            self.socket_closed(&mut peer);
            if let Some(rtc) = peer.link.rtc()
                && rtc.is_alive()
                && rtc.close().is_ok()
            {
                while let Ok(output) = rtc.poll_output() {
                    match output {
                        Output::Transmit(transmit) => self.transmits.push_back(Transmit {
                            proto: transmit.proto,
                            destination: transmit.destination,
                            contents: transmit.contents.into(),
                        }),
                        Output::Event(_) => {}
                        Output::Timeout(_) => break,
                    }
                }
            }
            let reason = peer.closing.take().map(|r| r.0).unwrap_or_default();
            tracing::info!(
                peer = %peer.id,
                session = %peer.session,
                trace_id = %peer.timeline.trace_id(),
                %reason,
                "peer closed"
            );
            self.demux.remove_peer(key, &peer.ice_ufrag);
            self.by_id.remove(&peer.id);
            if let Some(keys) = self.sessions.get_mut(&peer.session) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.sessions.remove(&peer.session);
                }
            }
            self.shared.log.unwatch(&peer.session, &self.wake);
            // Its state goes before its PeerLeft can reach anyone.
            self.shared.presence.remove(&peer.session, peer.id);
            self.shared
                .directory
                .remove(&peer.session, peer.id, &self.wake);
            if !self.shared.directory.hosts(&peer.session) {
                self.shared.presence.forget(&peer.session);
            }
            self.shared.count_peer(self.index, false);
            self.shared.metrics.peers.dec();
            self.shared.metrics.peers_closed.inc();
            let welcomed = peer.is_welcomed();
            peer.timeline
                .closed(&reason, welcomed, &self.shared.metrics);
        }
    }
}

/// An admitted peer whose `Rtc` answered its offer.
struct NewPeer {
    peer_id: Id,
    session: Arc<str>,
    grants: deltamesh_proto::Grants,
    rtc: Rtc,
    channels: [ChannelId; 4],
    /// Its offer, kept for ICE restarts.
    offer: RestartOffer,
    connection: BoxedSpan,
}

/// str0m's configuration of a deltamesh channel: negotiated by stream id,
/// ordered and reliable except `presence` (unordered, no retransmits).
fn channel_config(channel: Channel) -> ChannelConfig {
    ChannelConfig {
        label: channel.label().to_owned(),
        negotiated: Some(channel.stream_id()),
        ordered: channel.ordered(),
        reliability: match channel.max_retransmits() {
            Some(retransmits) => Reliability::MaxRetransmits { retransmits },
            None => Reliability::Reliable,
        },
        ..ChannelConfig::default()
    }
}

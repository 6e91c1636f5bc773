//! One event-loop shard: the thin I/O driver around its peers' `Rtc`s. It
//! owns one UDP socket and its peers outright (no locks on the datagram
//! path), routes each datagram in O(1) ([`Demux`]), wakes only peers whose
//! str0m deadline is due ([`Timers`]), and drains `poll_output` after every
//! input as str0m requires. The protocol itself lives in [`Peer`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use deltamesh_proto::channel::Channel;
use deltamesh_proto::{Grants, Id};
use opentelemetry::global::BoxedSpan;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::config::{SCTP_MAX_MESSAGE_SIZE, SCTP_SEND_BUFFER};
use crate::demux::{Demux, Route};
use crate::directory::{Limits, Member, MemberState};
use crate::log::AckTo;
use crate::peer::Peer;
use crate::relay::{OfferAnswer, PeerAccess, RelayError, Shared};
use crate::timeline::{self, Timeline};
use crate::timers::Timers;
use crate::wake::{LogAck, News, ShardWake};

/// Longest a peer goes without a timer, so idle and connect deadlines are checked.
const MAX_TIMER: Duration = Duration::from_millis(500);
/// Datagrams read per wake-up before timers and wake-ups get a turn.
const RECV_BATCH: usize = 64;
/// Datagrams kept while the socket's send buffer is full; beyond this they
/// are dropped and SCTP retransmits them.
const MAX_OUTBOUND: usize = 8192;

/// Requests from the relay handle to a shard.
pub enum ShardCommand {
    /// Accept an SDP offer for a new peer.
    Offer {
        /// The id the new peer gets.
        peer_id: Id,
        /// Its session.
        session: Arc<str>,
        /// Its identity and grants.
        access: PeerAccess,
        /// The parsed offer.
        offer: Box<SdpOffer>,
        /// The span of the connection's life, started with the offer.
        connection: Box<BoxedSpan>,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<OfferAnswer, RelayError>>,
    },
    /// Add trickled remote candidates.
    Trickle {
        /// The peer.
        peer_id: Id,
        /// Its new remote candidates.
        candidates: Vec<Candidate>,
        /// Done.
        reply: oneshot::Sender<Result<(), RelayError>>,
    },
    /// Tell every peer to reconnect elsewhere.
    Drain {
        /// How long peers should wait before reconnecting.
        reconnect_after: Duration,
        /// Why.
        reason: String,
    },
    /// Close a peer connection.
    Close {
        /// The peer.
        peer_id: Id,
        /// Why.
        reason: String,
        /// Done.
        reply: oneshot::Sender<Result<(), RelayError>>,
    },
}

type PeerKey = u64;

/// One shard's state; [`Shard::run`] is its event loop.
pub struct Shard {
    index: usize,
    socket: Arc<UdpSocket>,
    /// The advertised host candidate address (the destination of every datagram).
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    peer_count: Arc<AtomicUsize>,
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
    /// Datagrams waiting for the socket to become writable, in order.
    outbound: VecDeque<(Vec<u8>, SocketAddr)>,
    next_key: PeerKey,
    members_scratch: HashSet<Id>,
}

impl Shard {
    /// A shard serving `socket`, advertised as `local_addr`.
    pub fn new(
        index: usize,
        socket: UdpSocket,
        local_addr: SocketAddr,
        shared: Arc<Shared>,
        peer_count: Arc<AtomicUsize>,
    ) -> std::io::Result<Self> {
        let provider = str0m::crypto::from_feature_flags();
        // One certificate per shard: generating one per connection would
        // cost a key generation on every offer.
        let cert = provider
            .dtls_provider
            .generate_certificate()
            .ok_or_else(|| std::io::Error::other("cannot generate a DTLS certificate"))?;
        let rtc_config = RtcConfig::new()
            .set_crypto_provider(Arc::new(provider))
            .set_dtls_cert(cert)
            .set_ice_lite(true)
            .clear_codecs()
            .set_sctp_max_message_size(SCTP_MAX_MESSAGE_SIZE)
            // Room for the largest message: str0m refuses a write larger
            // than the free buffer. Deltas stay within `send_window`.
            .set_sctp_max_buffered_amount(SCTP_SEND_BUFFER);
        Ok(Shard {
            index,
            socket: Arc::new(socket),
            local_addr,
            shared,
            peer_count,
            wake: Arc::new(ShardWake::default()),
            rtc_config,
            peers: HashMap::new(),
            by_id: HashMap::new(),
            sessions: HashMap::new(),
            demux: Demux::default(),
            timers: Timers::default(),
            closing: Vec::new(),
            due_scratch: Vec::new(),
            outbound: VecDeque::new(),
            next_key: 0,
            members_scratch: HashSet::new(),
        })
    }

    /// Runs until every [`RelayHandle`](crate::RelayHandle) is dropped.
    pub async fn run(mut self, mut commands: mpsc::Receiver<ShardCommand>) {
        let socket = Arc::clone(&self.socket);
        let wake = Arc::clone(&self.wake);
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = self
                .timers
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + MAX_TIMER);
            let waiting_to_send = !self.outbound.is_empty();
            tokio::select! {
                _ = socket.writable(), if waiting_to_send => self.flush_outbound(),
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                received = socket.recv_from(&mut buf) => {
                    if let Ok((len, source)) = received {
                        self.on_datagram(source, &buf[..len]);
                    }
                    for _ in 1..RECV_BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((len, source)) => self.on_datagram(source, &buf[..len]),
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = wake.notified() => {}
            }
            self.on_timers(Instant::now());
            let woken = self.wake.take();
            for (session, news) in woken.sessions {
                self.refresh(&session, news);
            }
            self.on_log_acks(woken.acks);
            self.reap();
        }
        for key in self.peers.keys().copied().collect::<Vec<_>>() {
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.close("relay shutting down");
            }
            self.closing.push(key);
        }
        self.reap();
    }

    fn on_command(&mut self, command: ShardCommand) {
        match command {
            ShardCommand::Offer {
                peer_id,
                session,
                access,
                offer,
                connection,
                reply,
            } => {
                let grants = access.grants;
                let answered = self.admit(peer_id, &session, access).and_then(|()| {
                    self.answer(*offer).inspect_err(|_| {
                        self.shared.directory.remove(&session, peer_id, &self.wake)
                    })
                });
                let result = match answered {
                    Ok((rtc, channels, answer)) => Ok(self.add_peer(
                        peer_id,
                        session,
                        grants,
                        (rtc, channels),
                        answer,
                        *connection,
                    )),
                    Err(error) => {
                        timeline::refused(*connection, &error);
                        Err(error)
                    }
                };
                let _ = reply.send(result);
            }
            ShardCommand::Trickle {
                peer_id,
                candidates,
                reply,
            } => {
                let result = match self.by_id.get(&peer_id).copied() {
                    Some(key) => {
                        if let Some(peer) = self.peers.get_mut(&key) {
                            for candidate in candidates {
                                peer.rtc.add_remote_candidate(candidate);
                            }
                        }
                        self.drive(key, Instant::now());
                        Ok(())
                    }
                    None => Err(RelayError::UnknownPeer),
                };
                let _ = reply.send(result);
            }
            ShardCommand::Drain {
                reconnect_after,
                reason,
            } => {
                let now = Instant::now();
                let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
                for key in keys {
                    if let Some(peer) = self.peers.get_mut(&key) {
                        peer.drain(reconnect_after, &reason, &self.shared);
                    }
                    self.drive(key, now);
                }
            }
            ShardCommand::Close {
                peer_id,
                reason,
                reply,
            } => {
                let result = match self.by_id.get(&peer_id).copied() {
                    Some(key) => {
                        if let Some(peer) = self.peers.get_mut(&key) {
                            peer.close(reason);
                        }
                        self.closing.push(key);
                        Ok(())
                    }
                    None => Err(RelayError::UnknownPeer),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Counts a new peer in the directory, if the relay's limits allow it.
    fn admit(
        &mut self,
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
            joined_at: SystemTime::now(),
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
    fn answer(&self, offer: SdpOffer) -> Result<(Rtc, [ChannelId; 3], SdpAnswer), RelayError> {
        let mut rtc = self.rtc_config.clone().build(Instant::now());
        let candidate = Candidate::host(self.local_addr, "udp")
            .map_err(|e| RelayError::BadOffer(format!("relay host candidate: {e}")))?;
        rtc.add_local_candidate(candidate);
        // Negotiated channels must exist before the offer is accepted, or
        // str0m drops them (see docs/ARCHITECTURE.md, "str0m traps").
        let channels = Channel::ALL.map(|channel| {
            rtc.direct_api().create_data_channel(ChannelConfig {
                label: channel.label().to_owned(),
                negotiated: Some(channel.stream_id()),
                ..ChannelConfig::default()
            })
        });
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| RelayError::BadOffer(format!("offer not acceptable: {e}")))?;
        Ok((rtc, channels, answer))
    }

    /// Adds the admitted peer whose `rtc` made `answer`; its connection's
    /// life is the span `connection`.
    fn add_peer(
        &mut self,
        peer_id: Id,
        session: Arc<str>,
        grants: Grants,
        (rtc, channels): (Rtc, [ChannelId; 3]),
        answer: SdpAnswer,
        connection: BoxedSpan,
    ) -> OfferAnswer {
        let now = Instant::now();
        let ack_to = AckTo {
            shard: Arc::clone(&self.wake),
            peer: peer_id,
        };
        let timeline = Timeline::new(connection, now, &self.shared.metrics);
        let peer = Peer::new(
            ack_to,
            Arc::clone(&session),
            grants,
            rtc,
            channels,
            timeline,
            &self.shared.config,
        );
        let ice_ufrag = peer.ice_ufrag.clone();
        let key = self.next_key;
        self.next_key += 1;
        self.demux.add_peer(key, &ice_ufrag);
        self.shared
            .directory
            .set_ice_ufrag(&session, peer_id, &ice_ufrag);
        self.shared.log.watch(&session, &self.wake);
        self.sessions.entry(session).or_default().push(key);
        self.by_id.insert(peer_id, key);
        self.peers.insert(key, peer);
        self.peer_count.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.peers.inc();
        self.drive(key, now);
        OfferAnswer {
            peer_id,
            answer_sdp: answer.to_sdp_string(),
            ice_ufrag,
        }
    }

    fn on_datagram(&mut self, source: SocketAddr, datagram: &[u8]) {
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
        let now = Instant::now();
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local_addr,
                contents,
            },
        );
        if verify {
            // Learn a new address only from a STUN message that passes
            // this peer's integrity check.
            if !peer.rtc.accepts(&input) || !self.demux.learn(key, source) {
                return;
            }
        }
        peer.last_rx = now;
        if let Err(error) = peer.rtc.handle_input(input) {
            peer.close(format!("webrtc error: {error}"));
        }
        // Acknowledgements in this datagram may have opened the window; a
        // writer still blocked is retried once more inside `drive`.
        if peer.is_blocked() {
            peer.flush(&self.shared);
        }
        self.drive(key, now);
    }

    fn on_timers(&mut self, now: Instant) {
        // Take what is due first: a peer driven below may ask for another
        // timeout at `now` already, and that one must wait for the next turn
        // of the loop (with a fresh `now`) or this would never end.
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
            } else if let Err(error) = peer.rtc.handle_input(Input::Timeout(now)) {
                peer.close(format!("webrtc error: {error}"));
            } else {
                peer.check_progress(now, &self.shared);
            }
            self.drive(key, now);
        }
        self.due_scratch = due;
    }

    /// Hands the log's late verdicts to the peers that sent the deltas.
    fn on_log_acks(&mut self, acks: Vec<LogAck>) {
        let now = Instant::now();
        for ack in acks {
            if let Some(&key) = self.by_id.get(&ack.peer) {
                if let Some(peer) = self.peers.get_mut(&key) {
                    peer.on_log_ack(ack, &self.shared);
                }
                self.drive(key, now);
            }
        }
    }

    /// Brings every local peer of `session` up to date with `news`.
    fn refresh(&mut self, session: &Arc<str>, news: News) {
        let Some(keys) = self.sessions.get(session).cloned() else {
            return;
        };
        let now = Instant::now();
        for key in keys {
            if let Some(peer) = self.peers.get_mut(&key) {
                if news.members {
                    peer.sync_members(&self.shared, &mut self.members_scratch);
                }
                peer.flush(&self.shared);
            }
            self.drive(key, now);
        }
    }

    /// Drains a peer's `poll_output`: sends its datagrams, handles its
    /// events, and schedules its next deadline.
    fn drive(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let mut retried = false;
        loop {
            match peer.rtc.poll_output() {
                Ok(Output::Transmit(transmit)) => send_datagram(
                    &self.socket,
                    &mut self.outbound,
                    &transmit.contents,
                    transmit.destination,
                ),
                Ok(Output::Event(event)) => peer.on_event(event, &self.shared, now),
                Ok(Output::Timeout(_)) if peer.is_blocked() && !retried => {
                    // str0m applies acknowledgements while polling, so the
                    // window may have opened just now; the last ack would
                    // otherwise leave the peer waiting for a datagram that
                    // never comes.
                    retried = true;
                    peer.flush(&self.shared);
                }
                Ok(Output::Timeout(at)) => {
                    let at = at.min(now + MAX_TIMER);
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
        if peer.closing.is_some() || !peer.rtc.is_alive() {
            peer.close("connection ended");
            self.closing.push(key);
        }
    }

    /// Sends queued datagrams until the socket is full again.
    fn flush_outbound(&mut self) {
        while let Some((datagram, destination)) = self.outbound.front() {
            match self.socket.try_send_to(datagram, *destination) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                _ => {
                    self.outbound.pop_front();
                }
            }
        }
    }

    /// Removes peers that are closing: says goodbye on the wire, frees their
    /// routes, and tells their session.
    fn reap(&mut self) {
        while let Some(key) = self.closing.pop() {
            let Some(mut peer) = self.peers.remove(&key) else {
                continue;
            };
            if peer.rtc.is_alive() && peer.rtc.close().is_ok() {
                while let Ok(output) = peer.rtc.poll_output() {
                    match output {
                        Output::Transmit(transmit) => send_datagram(
                            &self.socket,
                            &mut self.outbound,
                            &transmit.contents,
                            transmit.destination,
                        ),
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
            self.shared
                .directory
                .remove(&peer.session, peer.id, &self.wake);
            self.peer_count.fetch_sub(1, Ordering::Relaxed);
            self.shared.metrics.peers.dec();
            self.shared.metrics.peers_closed.inc();
            let welcomed = peer.is_welcomed();
            peer.timeline
                .closed(&reason, welcomed, &self.shared.metrics);
        }
    }
}

/// Sends a datagram now, or queues it (bounded) while the socket is full so
/// a burst is not thrown away. Never blocks the shard.
fn send_datagram(
    socket: &UdpSocket,
    outbound: &mut VecDeque<(Vec<u8>, SocketAddr)>,
    datagram: &[u8],
    destination: SocketAddr,
) {
    if outbound.is_empty() {
        match socket.try_send_to(datagram, destination) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => return,
        }
    }
    if outbound.len() < MAX_OUTBOUND {
        outbound.push_back((datagram.to_vec(), destination));
    }
}

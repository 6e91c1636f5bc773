//! Starting a relay and talking to it: [`start`] binds one UDP socket (and,
//! with ICE-TCP, one TCP listener) per shard and spawns a [`driver`](crate::driver) around each shard's
//! [`RelayCore`]; [`RelayHandle`] is how signaling (directly in one process,
//! over NATS in a fleet) offers, trickles and closes peer connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use deltamesh_proto::Id;
use deltamesh_proto::ports::first_free;
use deltamesh_proto::trace::attribute;
use opentelemetry::KeyValue;
use opentelemetry::global::{self, BoxedSpan};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use str0m::change::SdpOffer;
use str0m::{Candidate, IceCreds};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use crate::clock::WallClock;
use crate::command::{Offer, OfferAnswer, PeerAccess, Reply, ShardCommand};
use crate::config::RelayConfig;
use crate::core::RelayCore;
use crate::directory::{Member, MemberChange};
use crate::driver;
use crate::error::RelayError;
use crate::ice_restart::{IceRestart, IceRestarted};
use crate::ice_tcp::{TcpLane, TcpLimits, Unverified};
use crate::log::DeltaLog;
use crate::metrics::RelayMetrics;
use crate::shared::Shared;
use crate::socket_lane::{self, ShardSockets};
use crate::timeline;

mod socket;

use socket::SocketLane;
pub use socket::SocketTicket;

/// How the handle reaches one shard.
struct ShardLink {
    commands: mpsc::Sender<ShardCommand>,
    addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
}

/// A cheap, clonable handle to a running relay.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    shards: Arc<Vec<ShardLink>>,
    lane: Arc<SocketLane>,
}

/// Binds the relay's sockets and starts its shards on the current runtime.
pub async fn start(
    config: RelayConfig,
    log: Arc<dyn DeltaLog>,
    metrics: RelayMetrics,
) -> std::io::Result<RelayHandle> {
    if config.advertised_ip.is_unspecified() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the advertised address must be concrete, not 0.0.0.0 or ::",
        ));
    }
    let clock = WallClock::new(Instant::now(), SystemTime::now());
    let shared = Shared::new(config, log, metrics, clock);
    let mut links = Vec::new();
    let unverified = Arc::new(Unverified::default());
    let mut socket_events = Vec::new();
    for index in 0..shared.shard_count() {
        let config = &shared.config;
        let socket = match config.udp_port_last {
            Some(last) => first_free("UDP", config.udp_port..=last, |port| {
                bind_udp(SocketAddr::new(config.bind_ip, port))
            })?,
            None => {
                let port = match config.udp_port {
                    0 => 0,
                    base => base + u16::try_from(index).unwrap_or(u16::MAX),
                };
                bind_udp(SocketAddr::new(config.bind_ip, port))?
            }
        };
        let addr = SocketAddr::new(config.advertised_ip, socket.local_addr()?.port());
        let mut core =
            RelayCore::new(Arc::clone(&shared), index, addr).map_err(std::io::Error::other)?;
        let (tcp, tcp_addr) = match config.ice_tcp {
            true => {
                let listener = listen_tcp(config, index)?;
                let tcp_addr = SocketAddr::new(config.advertised_ip, listener.local_addr()?.port());
                core.set_tcp_addr(tcp_addr);
                let limits = TcpLimits {
                    max_unverified: config.max_unverified_tcp,
                    verify_timeout: config.tcp_verify_timeout,
                };
                let lane = TcpLane::new(
                    listener,
                    limits,
                    Arc::clone(&unverified),
                    shared.metrics.tcp.clone(),
                );
                (Some(lane), Some(tcp_addr))
            }
            false => (None, None),
        };
        let (commands, receiver) = mpsc::channel(1024);
        let (events, sockets) = mpsc::channel(socket_lane::SHARD_EVENTS);
        socket_events.push(events);
        tokio::spawn(driver::run(
            core,
            socket,
            tcp,
            receiver,
            ShardSockets::new(sockets),
        ));
        links.push(ShardLink {
            commands,
            addr,
            tcp_addr,
        });
    }
    let lane = SocketLane::start(&shared.config, socket_events).await?;
    tracing::info!(
        relay = %shared.config.relay_id,
        addrs = ?links.iter().map(|l| l.addr).collect::<Vec<_>>(),
        tcp_addrs = ?links.iter().filter_map(|l| l.tcp_addr).collect::<Vec<_>>(),
        "relay serving"
    );
    Ok(RelayHandle {
        shared,
        shards: Arc::new(links),
        lane: Arc::new(lane),
    })
}

/// Shard `index`'s ICE-TCP listener, on the port scheme of UDP.
fn listen_tcp(config: &RelayConfig, index: usize) -> std::io::Result<TcpListener> {
    match config.tcp_port_last {
        Some(last) => first_free("TCP", config.tcp_port..=last, |port| {
            bind_tcp(SocketAddr::new(config.bind_ip, port))
        }),
        None => {
            let port = match config.tcp_port {
                0 => 0,
                base => base + u16::try_from(index).unwrap_or(u16::MAX),
            };
            bind_tcp(SocketAddr::new(config.bind_ip, port))
        }
    }
}

/// Connections waiting to be accepted; a flood beyond this is refused by
/// the kernel before it costs the relay anything.
const TCP_BACKLOG: i32 = 1024;

/// Binds a non-blocking TCP listener.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // A restarted relay takes its port back while old connections linger.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(TCP_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Socket buffers big enough for a burst of fan-out (the kernel caps them
/// at `net.core.{w,r}mem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds a non-blocking UDP socket with large send and receive buffers.
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer only means more retransmits.
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

impl RelayHandle {
    /// This relay's id.
    pub fn id(&self) -> Id {
        self.shared.config.relay_id
    }

    /// The UDP addresses peers reach the shards at.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.shards.iter().map(|s| s.addr).collect()
    }

    /// The TCP addresses of the shards' passive ICE-TCP candidates (empty
    /// without ICE-TCP).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.shards.iter().filter_map(|s| s.tcp_addr).collect()
    }

    /// Peer connections on the relay now.
    pub fn peer_count(&self) -> usize {
        self.shared.peer_count()
    }

    /// The Ed25519 public key deltas accepted here are signed with, if any.
    pub fn public_key(&self) -> Option<[u8; 32]> {
        self.shared.config.signer.as_ref().map(|s| s.public_key())
    }

    /// Peers the relay takes at most.
    pub fn capacity(&self) -> usize {
        self.shared.config.max_peers
    }

    /// Sessions with peers on the relay now.
    pub fn session_count(&self) -> usize {
        self.shared.directory.session_count()
    }

    /// Whether the relay is draining (takes no new peers).
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Starts draining: new offers are refused, and every peer is told to
    /// reconnect elsewhere after `reconnect_after`. Peers that stay are
    /// closed by [`RelayHandle::close_all`] (or when the relay stops).
    pub async fn drain(&self, reconnect_after: Duration, reason: &str) {
        self.shared.start_draining();
        for link in self.shards.iter() {
            let _ = link
                .commands
                .send(ShardCommand::Drain(reconnect_after, reason.to_owned()))
                .await;
        }
    }

    /// Closes every peer connection with `reason`.
    pub async fn close_all(&self, reason: &str) {
        for (_, member) in self.shared.directory.all_members() {
            let _ = self
                .ask(member.shard, |reply| {
                    ShardCommand::Close(member.peer_id, reason.to_owned(), reply)
                })
                .await;
        }
    }

    /// Every peer on the relay, with its session.
    pub fn all_members(&self) -> Vec<(std::sync::Arc<str>, Member)> {
        self.shared.directory.all_members()
    }

    /// Reports every later change to a local member (once: `None` if
    /// someone observes already). A fleet publishes them.
    pub fn observe_members(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<MemberChange>> {
        self.shared.directory.observe()
    }

    /// Records whether `peer`, on another relay, is a connected member of
    /// `session`; local peers of the session hear of the change. A peer
    /// that was connected and is gone has its presence state dropped (its
    /// relay may have crashed before saying so).
    pub fn set_remote_member(&self, session: &std::sync::Arc<str>, peer: Id, connected: bool) {
        let changed = self.shared.directory.set_remote(session, peer, connected);
        if changed && !connected {
            self.shared.presence.remove(session, peer);
        }
    }

    /// The state every shard shares.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Accepts an SDP offer for a peer of `session` and answers it. The
    /// offer's span and then the connection's continue `trace`.
    pub async fn offer(
        &self,
        session: &str,
        offer_sdp: &str,
        access: PeerAccess,
        trace: &opentelemetry::Context,
    ) -> Result<OfferAnswer, RelayError> {
        let peer_id = Id::random();
        let (offer_trace, connection) =
            self.connection_spans("relay offer", session, peer_id, trace);
        let answered = self
            .place_offer(peer_id, session, offer_sdp, access, connection)
            .await;
        if let Err(error) = &answered {
            offer_trace
                .span()
                .set_status(Status::error(error.to_string()));
        }
        answered
    }

    /// A new peer's two spans under `trace`: the request's (`name`), and
    /// the connection's under it, both naming session, peer and relay.
    pub(crate) fn connection_spans(
        &self,
        name: &'static str,
        session: &str,
        peer_id: Id,
        trace: &opentelemetry::Context,
    ) -> (opentelemetry::Context, BoxedSpan) {
        let tracer = global::tracer("deltamesh-relay");
        let attributes = vec![
            KeyValue::new(attribute::SESSION, session.to_owned()),
            KeyValue::new(attribute::PEER_ID, peer_id.to_string()),
            KeyValue::new(attribute::RELAY_ID, self.id().to_string()),
        ];
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes.clone())
            .start_with_context(&tracer, trace);
        let request = trace.with_span(span);
        let connection = tracer
            .span_builder("peer connection")
            .with_attributes(attributes)
            .start_with_context(&tracer, &request);
        (request, connection)
    }

    async fn place_offer(
        &self,
        peer_id: Id,
        session: &str,
        offer_sdp: &str,
        access: PeerAccess,
        connection: BoxedSpan,
    ) -> Result<OfferAnswer, RelayError> {
        let (offer, shard) = match self.check_offer(offer_sdp) {
            Ok(checked) => checked,
            Err(error) => {
                timeline::refused(connection, &error);
                return Err(error);
            }
        };
        let offer = Offer {
            peer_id,
            session: session.into(),
            access,
            sdp: offer,
            connection,
        };
        let (reply, answer) = oneshot::channel();
        shard
            .commands
            .send(ShardCommand::Offer(Box::new(offer), reply))
            .await
            .map_err(|_| RelayError::ShuttingDown)?;
        answer.await.map_err(|_| RelayError::ShuttingDown)?
    }

    /// The parsed offer and the least loaded shard, unless the relay is
    /// draining or the offer is malformed.
    fn check_offer(&self, offer_sdp: &str) -> Result<(SdpOffer, &ShardLink), RelayError> {
        if self.is_draining() {
            return Err(RelayError::ShuttingDown);
        }
        let offer = SdpOffer::from_sdp_string(offer_sdp)
            .map_err(|e| RelayError::BadOffer(format!("malformed SDP offer: {e}")))?;
        let shard = (0..self.shards.len())
            .min_by_key(|&index| self.shared.shard_peers(index))
            .and_then(|index| self.shards.get(index))
            .ok_or(RelayError::ShuttingDown)?;
        Ok((offer, shard))
    }

    /// Adds trickled candidates to a peer, checking its ETag.
    pub async fn trickle(
        &self,
        session: &str,
        peer: Id,
        if_match: Option<&str>,
        candidate_lines: &[String],
    ) -> Result<(), RelayError> {
        let member = self.member(session, peer)?;
        if if_match.is_some_and(|etag| etag != member.ice_ufrag) {
            return Err(RelayError::EtagMismatch);
        }
        let candidates = parse_candidates(candidate_lines)?;
        self.ask(member.shard, |reply| {
            ShardCommand::Trickle(peer, candidates, reply)
        })
        .await
    }

    /// Restarts a peer's ICE (an `If-Match: *` PATCH): `ufrag` and `pwd`
    /// are its new credentials, `candidate_lines` its candidates. Answers
    /// the relay's new credentials (the new ETag) and candidates.
    pub async fn restart_ice(
        &self,
        session: &str,
        peer: Id,
        ufrag: &str,
        pwd: &str,
        candidate_lines: &[String],
    ) -> Result<IceRestarted, RelayError> {
        let member = self.member(session, peer)?;
        let candidates = parse_candidates(candidate_lines)?;
        let restart = IceRestart {
            remote: IceCreds {
                ufrag: ufrag.to_owned(),
                pass: pwd.to_owned(),
            },
            candidates,
        };
        self.ask(member.shard, |reply| {
            ShardCommand::IceRestart(peer, restart, reply)
        })
        .await
    }

    /// Closes a peer connection.
    pub async fn disconnect(
        &self,
        session: &str,
        peer: Id,
        reason: &str,
    ) -> Result<(), RelayError> {
        let member = self.member(session, peer)?;
        self.ask(member.shard, |reply| {
            ShardCommand::Close(peer, reason.to_owned(), reply)
        })
        .await
    }

    /// The peers of `session` on this relay.
    pub fn members(&self, session: &str) -> Vec<Member> {
        self.shared.directory.members(session)
    }

    /// `Ok` when `peer` of `session` is here and belongs to `identity`:
    /// what a client must show before it may trickle to or close a peer.
    pub fn check_owner(&self, session: &str, peer: Id, identity: &str) -> Result<(), RelayError> {
        if *self.member(session, peer)?.identity != *identity {
            return Err(RelayError::NotOwner);
        }
        Ok(())
    }

    fn member(&self, session: &str, peer: Id) -> Result<Member, RelayError> {
        self.shared
            .directory
            .member(session, peer)
            .ok_or(RelayError::UnknownPeer)
    }

    async fn ask<T>(
        &self,
        shard: usize,
        command: impl FnOnce(Reply<T>) -> ShardCommand,
    ) -> Result<T, RelayError> {
        let link = self.shards.get(shard).ok_or(RelayError::ShuttingDown)?;
        let (reply, done) = oneshot::channel();
        link.commands
            .send(command(reply))
            .await
            .map_err(|_| RelayError::ShuttingDown)?;
        done.await.map_err(|_| RelayError::ShuttingDown)?
    }
}

/// `a=candidate:` lines as str0m candidates; the first that does not parse
/// refuses them all.
fn parse_candidates(lines: &[String]) -> Result<Vec<Candidate>, RelayError> {
    lines
        .iter()
        .map(|line| {
            let text = line.trim().trim_start_matches("a=");
            Candidate::from_sdp_string(text)
                .map_err(|e| RelayError::BadCandidate(format!("{text}: {e}")))
        })
        .collect()
}

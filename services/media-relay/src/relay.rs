//! Starting a relay and talking to it: [`start`] binds one UDP socket per
//! shard and spawns the shard event loops; [`RelayHandle`] is how signaling
//! (directly in one process, over NATS in a fleet) offers, trickles and
//! closes peer connections.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deltamesh_proto::trace::attribute;
use deltamesh_proto::{Grants, Id};
use opentelemetry::KeyValue;
use opentelemetry::global::{self, BoxedSpan};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prometheus_client::registry::Unit;
use str0m::Candidate;
use str0m::change::SdpOffer;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::config::RelayConfig;
use crate::directory::{Directory, Member, MemberChange};
use crate::log::DeltaLog;
use crate::shard::{Shard, ShardCommand};
use crate::timeline;

/// State every shard of a relay shares.
pub struct Shared {
    /// The relay's configuration.
    pub config: RelayConfig,
    /// Where deltas are sequenced and kept.
    pub log: Arc<dyn DeltaLog>,
    /// Who is in which session here.
    pub directory: Directory,
    /// Counters exported on `/metrics`.
    pub metrics: RelayMetrics,
    /// Set once the relay drains: it takes no new peers.
    draining: AtomicBool,
    /// Each shard's command queue, set once the shards run. Weak, so the
    /// shards (which own `Shared`) still stop when every handle is gone.
    shards: OnceLock<Vec<mpsc::WeakSender<ShardCommand>>>,
}

impl Shared {
    /// Asks `shard` to close `peer` (best effort: if its queue is full, the
    /// peer's own timeouts end it).
    pub fn close_peer(&self, shard: usize, peer: Id, reason: &str) {
        if let Some(sender) = self
            .shards
            .get()
            .and_then(|s| s.get(shard))
            .and_then(mpsc::WeakSender::upgrade)
        {
            let (reply, _) = oneshot::channel();
            let _ = sender.try_send(ShardCommand::Close {
                peer_id: peer,
                reason: reason.to_owned(),
                reply,
            });
        }
    }
}

/// The `limit` label values of `relay_limit_hits_total`.
pub const LIMITS: [&str; 8] = [
    "relay_full",
    "session_full",
    "pending",
    "delta_rate",
    "byte_rate",
    "command_rate",
    "frame_size",
    "abuse",
];

/// Labels of `relay_limit_hits_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    /// Which limit: `relay_full`, `session_full`, `pending`, `delta_rate`,
    /// `byte_rate`, `command_rate`, `frame_size`, `abuse`.
    pub limit: &'static str,
}

/// Labels of `relay_connections`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabels {
    /// `connecting` (offer answered, not welcomed yet) or `connected`.
    pub state: &'static str,
}

/// Labels of `relay_connect_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `ice`, `dtls` or `channels`: each timed from the accepted offer.
    pub phase: &'static str,
}

/// A histogram family whose histograms all have the same buckets.
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets for connect phases: 5 ms to 20 s.
fn connect_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The relay's Prometheus metrics.
#[derive(Clone)]
pub struct RelayMetrics {
    /// Peer connections by state.
    pub connections: Family<StateLabels, Gauge>,
    /// Time from the accepted offer to each connect phase.
    pub connect_seconds: HistogramFamily<PhaseLabels>,
    /// Bytes of deltas received from peers (every message on `send`).
    pub bytes_in: Counter,
    /// Bytes of relayed deltas written to peers.
    pub bytes_out: Counter,
    /// How many deltas a peer is behind the session head, sampled when the
    /// relay writes to it (at most every 100 ms per peer).
    pub peer_queue_depth: Histogram,
    /// Time from publishing a delta to JetStream to its ack (fleet relays).
    pub jetstream_publish_seconds: Histogram,
    /// Offers, deltas and commands refused by a configured limit, and peers
    /// disconnected for abuse.
    pub limit_hits: Family<LimitLabels, Counter>,
    /// Deltas accepted from peers.
    pub deltas_in: Counter,
    /// Deltas written to peers' `receive` channels.
    pub deltas_out: Counter,
    /// Deltas refused with a `Reject`.
    pub deltas_rejected: Counter,
    /// Peer connections currently on the relay.
    pub peers: Gauge,
    /// Peer connections that ended.
    pub peers_closed: Counter,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        RelayMetrics {
            connections: Family::default(),
            connect_seconds: Family::new_with_constructor(connect_buckets),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            peer_queue_depth: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            jetstream_publish_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            limit_hits: Family::default(),
            deltas_in: Counter::default(),
            deltas_out: Counter::default(),
            deltas_rejected: Counter::default(),
            peers: Gauge::default(),
            peers_closed: Counter::default(),
        }
    }
}

impl RelayMetrics {
    /// Creates the metrics and registers them under `relay_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = RelayMetrics::default();
        let relay = registry.sub_registry_with_prefix("relay");
        relay.register(
            "connections",
            "Peer connections on this relay by state (connecting, connected)",
            metrics.connections.clone(),
        );
        relay.register_with_unit(
            "connect",
            "Time from the accepted offer to each connect phase (ice, dtls, channels)",
            Unit::Seconds,
            metrics.connect_seconds.clone(),
        );
        relay.register_with_unit(
            "delta_in",
            "Bytes of deltas received from peers",
            Unit::Bytes,
            metrics.bytes_in.clone(),
        );
        relay.register_with_unit(
            "delta_out",
            "Bytes of relayed deltas written to peers",
            Unit::Bytes,
            metrics.bytes_out.clone(),
        );
        relay.register(
            "peer_queue_depth",
            "Deltas a peer is behind the session head, sampled on writes to it (at most every 100 ms per peer)",
            metrics.peer_queue_depth.clone(),
        );
        relay.register_with_unit(
            "jetstream_publish",
            "Time from publishing a delta to JetStream to its ack",
            Unit::Seconds,
            metrics.jetstream_publish_seconds.clone(),
        );
        relay.register(
            "deltas_in",
            "Deltas accepted from peers",
            metrics.deltas_in.clone(),
        );
        relay.register(
            "deltas_out",
            "Deltas delivered to peers",
            metrics.deltas_out.clone(),
        );
        relay.register(
            "deltas_rejected",
            "Deltas refused with a Reject",
            metrics.deltas_rejected.clone(),
        );
        relay.register(
            "peers",
            "Peer connections on this relay",
            metrics.peers.clone(),
        );
        relay.register(
            "limit_hits",
            "Offers, deltas and commands refused by a limit, and peers disconnected for abuse, by limit",
            metrics.limit_hits.clone(),
        );
        relay.register(
            "peers_closed",
            "Peer connections that ended",
            metrics.peers_closed.clone(),
        );
        // Every limit and state is listed from the start, at 0, so rates
        // and alerts see it before its first hit.
        for limit in LIMITS {
            let _ = metrics.limit_hits.get_or_create(&LimitLabels { limit });
        }
        for state in ["connecting", "connected"] {
            let _ = metrics.connections.get_or_create(&StateLabels { state });
        }
        metrics
    }

    /// The gauge of connections in `state`.
    pub fn connection_state(&self, state: &'static str) -> Gauge {
        self.connections
            .get_or_create(&StateLabels { state })
            .clone()
    }

    /// The histogram of time to reach connect `phase`.
    pub fn connect_time(&self, phase: &'static str) -> Histogram {
        self.connect_seconds
            .get_or_create(&PhaseLabels { phase })
            .clone()
    }

    /// Counts one hit of `limit`.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.get_or_create(&LimitLabels { limit }).inc();
    }
}

/// Why the relay refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// The SDP offer is unusable.
    #[error("{0}")]
    BadOffer(String),
    /// The relay is at `max_peers`.
    #[error("relay is full")]
    Full,
    /// The session is at `max_peers_per_session` on this relay.
    #[error("the session is full ({limit} peers)")]
    SessionFull {
        /// The limit.
        limit: usize,
    },
    /// The relay has `max_pending` connections still being set up.
    #[error("too many connections are being set up; retry shortly")]
    TooManyPending,
    /// No such peer in that session.
    #[error("unknown peer")]
    UnknownPeer,
    /// The peer connection belongs to another identity.
    #[error("the peer belongs to another identity")]
    NotOwner,
    /// The client's ETag is not the peer's current ICE ufrag.
    #[error("ETag does not match the current ICE session")]
    EtagMismatch,
    /// A trickled candidate line does not parse.
    #[error("bad candidate: {0}")]
    BadCandidate(String),
    /// The relay is shutting down.
    #[error("relay is shutting down")]
    ShuttingDown,
}

/// Who is connecting, and what the connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAccess {
    /// The peer's identity: its token's subject.
    pub identity: Arc<str>,
    /// Its grants.
    pub grants: Grants,
}

/// The answer to an accepted offer.
#[derive(Debug, Clone)]
pub struct OfferAnswer {
    /// The new peer's id.
    pub peer_id: Id,
    /// SDP answer text, with the relay's host candidate.
    pub answer_sdp: String,
    /// The relay-side ICE ufrag.
    pub ice_ufrag: String,
}

struct ShardLink {
    commands: mpsc::Sender<ShardCommand>,
    peers: Arc<AtomicUsize>,
    addr: SocketAddr,
}

/// A cheap, clonable handle to a running relay.
#[derive(Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
    shards: Arc<Vec<ShardLink>>,
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
    let shared = Arc::new(Shared {
        config,
        log,
        directory: Directory::default(),
        metrics,
        draining: AtomicBool::new(false),
        shards: OnceLock::new(),
    });
    let mut links = Vec::new();
    for index in 0..shared.config.shards.max(1) {
        let config = &shared.config;
        let socket = match config.udp_port_last {
            Some(last) => bind_first_free(config.bind_ip, config.udp_port..=last)?,
            None => {
                let port = match config.udp_port {
                    0 => 0,
                    base => base + u16::try_from(index).unwrap_or(u16::MAX),
                };
                bind_udp(SocketAddr::new(config.bind_ip, port))?
            }
        };
        let addr = SocketAddr::new(shared.config.advertised_ip, socket.local_addr()?.port());
        let (commands, receiver) = mpsc::channel(1024);
        let peers = Arc::new(AtomicUsize::new(0));
        let shard = Shard::new(index, socket, addr, Arc::clone(&shared), Arc::clone(&peers))?;
        tokio::spawn(shard.run(receiver));
        links.push(ShardLink {
            commands,
            peers,
            addr,
        });
    }
    let _ = shared
        .shards
        .set(links.iter().map(|l| l.commands.downgrade()).collect());
    tracing::info!(
        relay = %shared.config.relay_id,
        addrs = ?links.iter().map(|l| l.addr).collect::<Vec<_>>(),
        "relay serving"
    );
    Ok(RelayHandle {
        shared,
        shards: Arc::new(links),
    })
}

/// Socket buffers big enough for a burst of fan-out (the kernel caps them
/// at `net.core.{w,r}mem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds the first free port of `ports` on `ip`.
fn bind_first_free(ip: IpAddr, ports: RangeInclusive<u16>) -> std::io::Result<UdpSocket> {
    for port in ports.clone() {
        match bind_udp(SocketAddr::new(ip, port)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            bound => return bound,
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free UDP port in {ports:?}"),
    ))
}

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

    /// Peer connections on the relay now.
    pub fn peer_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.peers.load(Ordering::Relaxed))
            .sum()
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
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Starts draining: new offers are refused, and every peer is told to
    /// reconnect elsewhere after `reconnect_after`. Peers that stay are
    /// closed by [`RelayHandle::close_all`] (or when the relay stops).
    pub async fn drain(&self, reconnect_after: Duration, reason: &str) {
        self.shared.draining.store(true, Ordering::Relaxed);
        for link in self.shards.iter() {
            let _ = link
                .commands
                .send(ShardCommand::Drain {
                    reconnect_after,
                    reason: reason.to_owned(),
                })
                .await;
        }
    }

    /// Closes every peer connection with `reason`.
    pub async fn close_all(&self, reason: &str) {
        for (_, member) in self.shared.directory.all_members() {
            let _ = self
                .ask(member.shard, |reply| ShardCommand::Close {
                    peer_id: member.peer_id,
                    reason: reason.to_owned(),
                    reply,
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
    /// `session`; local peers of the session hear of the change.
    pub fn set_remote_member(&self, session: &std::sync::Arc<str>, peer: Id, connected: bool) {
        self.shared.directory.set_remote(session, peer, connected);
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
        let tracer = global::tracer("deltamesh-relay");
        let peer_id = Id(*uuid::Uuid::new_v4().as_bytes());
        let attributes = vec![
            KeyValue::new(attribute::SESSION, session.to_owned()),
            KeyValue::new(attribute::PEER_ID, peer_id.to_string()),
            KeyValue::new(attribute::RELAY_ID, self.id().to_string()),
        ];
        let span = tracer
            .span_builder("relay offer")
            .with_kind(SpanKind::Server)
            .with_attributes(attributes.clone())
            .start_with_context(&tracer, trace);
        let offer_trace = trace.with_span(span);
        let connection = tracer
            .span_builder("peer connection")
            .with_attributes(attributes)
            .start_with_context(&tracer, &offer_trace);
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
        let (reply, answer) = oneshot::channel();
        shard
            .commands
            .send(ShardCommand::Offer {
                peer_id,
                session: session.into(),
                access,
                offer: Box::new(offer),
                connection: Box::new(connection),
                reply,
            })
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
        let shard = self
            .shards
            .iter()
            .min_by_key(|s| s.peers.load(Ordering::Relaxed))
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
        let candidates = candidate_lines
            .iter()
            .map(|line| {
                let text = line.trim().trim_start_matches("a=");
                Candidate::from_sdp_string(text)
                    .map_err(|e| RelayError::BadCandidate(format!("{text}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.ask(member.shard, |reply| ShardCommand::Trickle {
            peer_id: peer,
            candidates,
            reply,
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
        self.ask(member.shard, |reply| ShardCommand::Close {
            peer_id: peer,
            reason: reason.to_owned(),
            reply,
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

    async fn ask(
        &self,
        shard: usize,
        command: impl FnOnce(oneshot::Sender<Result<(), RelayError>>) -> ShardCommand,
    ) -> Result<(), RelayError> {
        let link = self.shards.get(shard).ok_or(RelayError::ShuttingDown)?;
        let (reply, done) = oneshot::channel();
        link.commands
            .send(command(reply))
            .await
            .map_err(|_| RelayError::ShuttingDown)?;
        done.await.map_err(|_| RelayError::ShuttingDown)?
    }
}

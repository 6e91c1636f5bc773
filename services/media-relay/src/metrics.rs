//! The relay's Prometheus metrics: one [`RelayMetrics`] shared by every
//! shard, registered under `relay_` on the ops endpoint.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The `limit` label values of `relay_limit_hits_total`.
pub(crate) const LIMITS: [&str; 8] = [
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

/// Labels of `relay_presence_dropped_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabels {
    /// Why: `too_large`, `not_permitted` (no `publish` grant) or `off`
    /// (`presence` not in force).
    pub reason: &'static str,
}

/// The `reason` label values of `relay_presence_dropped_total`.
const PRESENCE_DROPS: [&str; 3] = ["too_large", "not_permitted", "off"];

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
    /// Presence states taken from peers and forwarded (PROTOCOL §8).
    pub presence_in: Counter,
    /// Presence states replaced by a newer one before their turn came.
    pub presence_skipped: Counter,
    /// Presence states written to peers.
    pub presence_out: Counter,
    /// Presence messages dropped, by reason.
    pub presence_dropped: Family<DropLabels, Counter>,
    /// Direct messages (`PeerSignal`) routed to their recipient (PROTOCOL §9).
    pub signals: Counter,
    /// The ICE-TCP listeners' connections.
    pub tcp: TcpMetrics,
}

/// Labels of `relay_tcp_closed_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpCloseLabels {
    /// Why: `refused` (too many unverified connections), `unverified` (no
    /// verified STUN check in time), `bad_frame` (RFC 4571 length 0 or too
    /// long), `peer_gone` (its peer closed), `remote` (closed or reset by
    /// the remote end).
    pub reason: &'static str,
}

/// The `reason` label values of `relay_tcp_closed_total`.
pub(crate) const TCP_CLOSES: [&str; 5] =
    ["refused", "unverified", "bad_frame", "peer_gone", "remote"];

/// Metrics of the ICE-TCP connections (RFC 6544 passive, RFC 4571).
#[derive(Clone, Default)]
pub struct TcpMetrics {
    /// Open ICE-TCP connections.
    pub connections: Gauge,
    /// Open ICE-TCP connections no peer's `Rtc` verified yet.
    pub unverified: Gauge,
    /// ICE-TCP connections closed or refused, by reason.
    pub closed: Family<TcpCloseLabels, Counter>,
    /// Datagrams dropped because a connection's write queue was full.
    pub dropped_datagrams: Counter,
}

impl TcpMetrics {
    /// Counts one connection closed (or refused) for `reason`.
    pub fn close(&self, reason: &'static str) {
        self.closed.get_or_create(&TcpCloseLabels { reason }).inc();
    }

    /// Connections closed so far for `reason`.
    pub fn closes(&self, reason: &'static str) -> u64 {
        self.closed.get_or_create(&TcpCloseLabels { reason }).get()
    }

    fn register(&self, relay: &mut Registry) {
        relay.register(
            "tcp_connections",
            "Open ICE-TCP connections",
            self.connections.clone(),
        );
        relay.register(
            "tcp_unverified",
            "Open ICE-TCP connections without a verified STUN check yet",
            self.unverified.clone(),
        );
        relay.register(
            "tcp_closed",
            "ICE-TCP connections closed or refused, by reason",
            self.closed.clone(),
        );
        relay.register(
            "tcp_dropped_datagrams",
            "Datagrams dropped because an ICE-TCP connection's write queue was full",
            self.dropped_datagrams.clone(),
        );
        for reason in TCP_CLOSES {
            let _ = self.closed.get_or_create(&TcpCloseLabels { reason });
        }
    }
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
            presence_in: Counter::default(),
            presence_skipped: Counter::default(),
            presence_out: Counter::default(),
            presence_dropped: Family::default(),
            signals: Counter::default(),
            tcp: TcpMetrics::default(),
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
        relay.register(
            "presence_in",
            "Presence states taken from peers and forwarded",
            metrics.presence_in.clone(),
        );
        relay.register(
            "presence_skipped",
            "Presence states replaced by a newer one before their turn (rate limit)",
            metrics.presence_skipped.clone(),
        );
        relay.register(
            "presence_out",
            "Presence states written to peers",
            metrics.presence_out.clone(),
        );
        relay.register(
            "presence_dropped",
            "Presence messages dropped: too large, without publish, or presence off, by reason",
            metrics.presence_dropped.clone(),
        );
        relay.register(
            "signals",
            "Direct messages (PeerSignal) routed to their recipient",
            metrics.signals.clone(),
        );
        metrics.tcp.register(relay);
        for reason in PRESENCE_DROPS {
            let _ = metrics
                .presence_dropped
                .get_or_create(&DropLabels { reason });
        }
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

    /// Counts one presence message dropped for `reason`.
    pub fn presence_drop(&self, reason: &'static str) {
        self.presence_dropped
            .get_or_create(&DropLabels { reason })
            .inc();
    }

    /// Presence messages dropped so far for `reason`.
    pub fn presence_drops(&self, reason: &'static str) -> u64 {
        self.presence_dropped
            .get_or_create(&DropLabels { reason })
            .get()
    }

    /// Counts one hit of `limit`.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limit_hits.get_or_create(&LimitLabels { limit }).inc();
    }
}

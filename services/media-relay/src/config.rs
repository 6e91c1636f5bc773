//! The relay's configuration: one typed struct, filled by the binary from
//! flags and environment.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_proto::fragment::DEFAULT_MAX_DELTA_SIZE;

use crate::rate::Rate;
use crate::signing::DeltaSigner;

/// Everything a relay instance is told at start.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This relay instance's id.
    pub relay_id: Id,
    /// The key the relay signs accepted deltas with; unsigned when `None`.
    pub signer: Option<Arc<DeltaSigner>>,
    /// Address the UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// Address advertised in ICE host candidates; never unspecified.
    pub advertised_ip: IpAddr,
    /// First UDP port; shard `i` uses `udp_port + i` (0: any free port),
    /// unless `udp_port_last` makes it a range.
    pub udp_port: u16,
    /// The last port of a range starting at `udp_port`: each shard binds
    /// the first free port of it, so relays sharing a host (replicas on a
    /// host network) each find ports inside one firewall rule.
    pub udp_port_last: Option<u16>,
    /// Whether each shard also listens on TCP and answers with a passive
    /// ICE-TCP host candidate (RFC 6544, RFC 4571 framing).
    pub ice_tcp: bool,
    /// First TCP port; shard `i` uses `tcp_port + i` (0: any free port),
    /// unless `tcp_port_last` makes it a range (as `udp_port`).
    pub tcp_port: u16,
    /// The last port of a TCP range starting at `tcp_port`: each shard
    /// listens on the first free port of it.
    pub tcp_port_last: Option<u16>,
    /// ICE-TCP connections (all shards) that have not yet carried a STUN
    /// check a peer verified; more are closed as soon as they are accepted.
    pub max_unverified_tcp: usize,
    /// Time an ICE-TCP connection has to carry a STUN check a peer
    /// verified before it is closed.
    pub tcp_verify_timeout: Duration,
    /// TCP port of the WebSocket lane (PROTOCOL §11), where signal brings
    /// a WebSocket peer's socket with its ticket (0: any free port).
    pub socket_port: u16,
    /// Event-loop shards, each with its own socket.
    pub shards: usize,
    /// Peers this relay takes before answering offers with "no capacity".
    pub max_peers: usize,
    /// Peers one session may have on this relay.
    pub max_peers_per_session: usize,
    /// Peers offered but not yet connected (ICE, DTLS, SCTP under way) this
    /// relay takes at once; more offers are answered "no capacity". Each is
    /// reaped after `connect_timeout`.
    pub max_pending: usize,
    /// Deltas per second one peer may send; excess gets `Reject{rate}`.
    pub delta_rate: Rate,
    /// Bytes of deltas per second one peer may send; excess gets `Reject{rate}`.
    pub byte_rate: Rate,
    /// Command messages per second one peer may send; excess is dropped.
    pub command_rate: Rate,
    /// Messages over a rate one peer may send within `abuse_window` before
    /// it is disconnected.
    pub max_rate_violations: u32,
    /// The window `max_rate_violations` is counted over.
    pub abuse_window: Duration,
    /// Largest delta frame accepted on `send`, header included.
    pub max_frame_size: usize,
    /// Largest delta frame, header included, taken in fragments
    /// (PROTOCOL §6; `Welcome.max_delta_size`). Larger frames get
    /// `Reject{TOO_LARGE}` on their first fragment.
    pub max_delta_size: usize,
    /// Bytes one connection may hold in frames being reassembled. A
    /// connection reassembles one frame at a time (fragments come back to
    /// back on `send`), so twice the default `max_delta_size` leaves room
    /// for a raised `max_delta_size` while still bounding one peer to a
    /// small share of the relay's budget.
    pub max_reassembly_per_connection: usize,
    /// Bytes all connections of the relay (every shard) may hold in frames
    /// being reassembled. 256 MiB is sixteen 16 MiB deltas in flight at
    /// once, and the same order as the chunk store's retention: a flood of
    /// half-finished frames from many peers costs at most this much, and
    /// the frames that do not fit get `Reject{UNAVAILABLE}` (sent again
    /// later) rather than memory.
    pub max_reassembly_per_relay: usize,
    /// Time a frame being reassembled may wait for its next fragment
    /// before it is dropped with `Reject{FRAGMENT, "incomplete"}`.
    pub fragment_timeout: Duration,
    /// Bytes the relay keeps in flight to one peer at most. str0m's SCTP
    /// scans every in-flight chunk on each poll, so a small window moves
    /// more deltas per second; it must still cover bandwidth x round trip.
    pub send_window: usize,
    /// Deltas a peer may fall behind the session before it is warned.
    pub slow_consumer_warn: u64,
    /// Deltas a peer may fall behind before it is disconnected.
    pub slow_consumer_limit: u64,
    /// Time a peer with deltas waiting may go without taking any before it
    /// is disconnected as stalled.
    pub stall_timeout: Duration,
    /// Command messages queued for a peer before it is disconnected.
    pub max_queued_commands: usize,
    /// Time a peer has from its offer to open channels.
    pub connect_timeout: Duration,
    /// Time without any datagram after which a peer is considered gone.
    pub idle_timeout: Duration,
    /// Size of one chunk of the delta store; a delta larger than a chunk
    /// gets a chunk of its own.
    pub chunk_size: usize,
    /// The delta store retains `chunk_size * max_chunks` bytes of chunks
    /// (bounds memory and resume depth).
    pub max_chunks: usize,
    /// Largest presence state a peer may send (PROTOCOL §8), in bytes.
    pub max_presence_size: usize,
    /// Presence states forwarded per second per sending peer (at least 1).
    pub presence_rate: u32,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            relay_id: Id::default(),
            signer: None,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertised_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            udp_port: 0,
            udp_port_last: None,
            ice_tcp: true,
            tcp_port: 0,
            tcp_port_last: None,
            max_unverified_tcp: 256,
            tcp_verify_timeout: Duration::from_secs(5),
            socket_port: 0,
            shards: 1,
            max_peers: 10_000,
            max_peers_per_session: 1_000,
            max_pending: 256,
            delta_rate: Rate {
                per_second: 2_000,
                burst: 10_000,
            },
            byte_rate: Rate {
                per_second: 4 << 20,
                burst: 16 << 20,
            },
            command_rate: Rate {
                per_second: 50,
                burst: 200,
            },
            max_rate_violations: 1_000,
            abuse_window: Duration::from_secs(10),
            max_frame_size: 64 * 1024,
            max_delta_size: DEFAULT_MAX_DELTA_SIZE,
            max_reassembly_per_connection: 2 * DEFAULT_MAX_DELTA_SIZE,
            max_reassembly_per_relay: 256 << 20,
            fragment_timeout: Duration::from_secs(30),
            send_window: 16 * 1024,
            slow_consumer_warn: 4_096,
            slow_consumer_limit: 16_384,
            stall_timeout: Duration::from_secs(10),
            max_queued_commands: 8_192,
            connect_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(15),
            chunk_size: 4 << 20,
            max_chunks: 64,
            max_presence_size: deltamesh_proto::presence::DEFAULT_MAX_PRESENCE_SIZE,
            presence_rate: deltamesh_proto::presence::DEFAULT_PRESENCE_RATE,
        }
    }
}

/// The SCTP message size the relay accepts, so an oversize frame arrives and
/// gets a clear `Reject` instead of an SCTP abort. Peers' own stacks refuse
/// anything above this before sending.
pub(crate) const SCTP_MAX_MESSAGE_SIZE: u32 = 1 << 20;

/// The SCTP send buffer per connection. Relayed deltas are kept within
/// `send_window`; the rest is room for commands and the largest message.
pub(crate) const SCTP_SEND_BUFFER: usize = 1 << 20;

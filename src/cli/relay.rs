//! `deltamesh relay`: the flags of a fleet's media relay, the relay flags
//! the one-process stack shares, and the configuration they describe.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use deltamesh_relay::{DeltaSigner, Rate, RelayConfig};

use super::{FleetArgs, OpsArgs, ProductionArgs};
use crate::ports::PortRange;
use crate::production;
use crate::service::{DEFAULT_TRACE_DELTA_EVERY, RelayService};
use crate::stack::random_uuid_v4;

/// `deltamesh relay`.
#[derive(Debug, Args)]
#[command(mut_arg("production", |arg| arg.help(
    "Refuse to start without a signing key, NATS security and registry TLS"
)))]
pub struct RelayServiceArgs {
    #[command(flatten)]
    pub(crate) fleet: FleetArgs,
    #[command(flatten)]
    pub(crate) relay: RelayArgs,
    /// How long a draining relay (SIGTERM) waits for its peers to move
    /// before closing the rest.
    #[arg(long, env = "DELTAMESH_DRAIN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) drain_grace: Duration,
    #[command(flatten)]
    pub(crate) production: ProductionArgs,
    #[command(flatten)]
    pub(crate) ops: OpsArgs,
    /// With tracing on, one published delta in this many is traced across
    /// relays: a span for its publish and one per relay replicating it
    /// (0: none).
    #[arg(long, env = "DELTAMESH_TRACE_DELTA_EVERY", default_value_t = DEFAULT_TRACE_DELTA_EVERY)]
    pub(crate) trace_delta_every: u64,
}

impl RelayServiceArgs {
    /// The relay service these flags describe (with a fresh relay id),
    /// refused if `--production` is not met; its key files are read now.
    pub fn to_config(&self) -> anyhow::Result<RelayService> {
        production::check_relay(self)?;
        let mut config = self.relay.to_config()?;
        config.relay_id = random_uuid_v4();
        Ok(RelayService {
            fleet: self.fleet.to_config()?,
            config,
            drain_grace: self.drain_grace,
            ops_listen: self.ops.ops_listen.clone(),
            trace_delta_every: self.trace_delta_every,
        })
    }
}

/// A relay's side.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Address the relay's UDP sockets bind to.
    #[arg(long, env = "DELTAMESH_UDP_BIND", default_value = "127.0.0.1")]
    pub(crate) udp_bind: IpAddr,
    /// Address advertised in the relay's ICE host candidates (defaults to
    /// the bind address; must be concrete when binding 0.0.0.0).
    #[arg(long, env = "DELTAMESH_ADVERTISE_IP")]
    pub(crate) advertise_ip: Option<IpAddr>,
    /// UDP port of the relay: PORT (shard i uses PORT + i; 0 picks free
    /// ports), or FIRST-LAST (each shard takes the first free port of the
    /// range, so relays sharing a host each find theirs).
    #[arg(long, env = "DELTAMESH_UDP_PORT", default_value = "0")]
    pub(crate) udp_port: PortRange,
    /// TCP port of the relay's passive ICE-TCP candidates (RFC 6544), in
    /// the scheme of `--udp-port`; bound on the UDP bind address.
    #[arg(long, env = "DELTAMESH_TCP_PORT", default_value = "0")]
    pub(crate) tcp_port: PortRange,
    /// TCP port of the relay's WebSocket lane, on the UDP bind address,
    /// where signal brings WebSocket peers (0 picks a free port).
    #[arg(long, env = "DELTAMESH_SOCKET_PORT", default_value_t = 0)]
    pub(crate) socket_port: u16,
    /// Relay event-loop shards.
    #[arg(long, env = "DELTAMESH_SHARDS", default_value_t = 1)]
    pub(crate) shards: usize,
    /// Bytes the relay keeps in flight to one peer at most.
    #[arg(long, env = "DELTAMESH_SEND_WINDOW", default_value_t = 16 * 1024)]
    pub(crate) send_window: usize,
    /// An Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm
    /// ed25519`) the relay signs accepted deltas with. Unsigned without it.
    #[arg(long, env = "DELTAMESH_SIGNING_KEY")]
    pub(crate) signing_key: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) limits: RelayLimitArgs,
}

impl RelayArgs {
    /// The relay's configuration; the signing key is read now.
    pub(crate) fn to_config(&self) -> anyhow::Result<RelayConfig> {
        let limits = &self.limits;
        let signer = match &self.signing_key {
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let signer = DeltaSigner::from_pem(&pem)
                    .with_context(|| format!("signing key {}", path.display()))?;
                Some(Arc::new(signer))
            }
            None => None,
        };
        Ok(RelayConfig {
            signer,
            bind_ip: self.udp_bind,
            advertised_ip: self.advertise_ip.unwrap_or(self.udp_bind),
            udp_port: *self.udp_port.0.start(),
            udp_port_last: self.udp_port.is_range().then_some(*self.udp_port.0.end()),
            tcp_port: *self.tcp_port.0.start(),
            tcp_port_last: self.tcp_port.is_range().then_some(*self.tcp_port.0.end()),
            socket_port: self.socket_port,
            shards: self.shards,
            send_window: self.send_window,
            max_peers: limits.max_peers,
            max_peers_per_session: limits.max_peers_per_session,
            max_pending: limits.max_pending,
            delta_rate: Rate {
                per_second: limits.delta_rate,
                burst: limits.delta_burst,
            },
            byte_rate: Rate {
                per_second: limits.byte_rate,
                burst: limits.byte_burst,
            },
            max_frame_size: limits.max_frame_size,
            max_delta_size: limits.max_delta_size,
            ..RelayConfig::default()
        })
    }
}

/// What one relay, peer and session may use. 0 turns a rate off.
#[derive(Debug, Args)]
pub(crate) struct RelayLimitArgs {
    /// Peer connections the relay takes.
    #[arg(long, env = "DELTAMESH_MAX_PEERS", default_value_t = RelayConfig::default().max_peers)]
    max_peers: usize,
    /// Peer connections one session may have on the relay.
    #[arg(long, env = "DELTAMESH_MAX_PEERS_PER_SESSION", default_value_t = RelayConfig::default().max_peers_per_session)]
    max_peers_per_session: usize,
    /// Connections being set up (ICE, DTLS, SCTP) at once.
    #[arg(long, env = "DELTAMESH_MAX_PENDING", default_value_t = RelayConfig::default().max_pending)]
    max_pending: usize,
    /// Deltas per second one peer may send.
    #[arg(long, env = "DELTAMESH_DELTA_RATE", default_value_t = RelayConfig::default().delta_rate.per_second)]
    delta_rate: u64,
    /// Deltas one peer may send in one burst.
    #[arg(long, env = "DELTAMESH_DELTA_BURST", default_value_t = RelayConfig::default().delta_rate.burst)]
    delta_burst: u64,
    /// Delta bytes per second one peer may send.
    #[arg(long, env = "DELTAMESH_BYTE_RATE", default_value_t = RelayConfig::default().byte_rate.per_second)]
    byte_rate: u64,
    /// Delta bytes one peer may send in one burst.
    #[arg(long, env = "DELTAMESH_BYTE_BURST", default_value_t = RelayConfig::default().byte_rate.burst)]
    byte_burst: u64,
    /// The largest delta frame, header included.
    #[arg(long, env = "DELTAMESH_MAX_FRAME_SIZE", default_value_t = RelayConfig::default().max_frame_size)]
    max_frame_size: usize,
    /// The largest delta frame, header included, taken in fragments.
    #[arg(long, env = "DELTAMESH_MAX_DELTA_SIZE", default_value_t = RelayConfig::default().max_delta_size)]
    max_delta_size: usize,
}

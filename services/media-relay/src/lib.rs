//! The deltamesh media relay: terminates peer connections with str0m,
//! validates each delta in place, appends it once into the chunk store,
//! sequences it through the session log, acknowledges it, and fans it out to
//! every other peer of the session.
//!
//! Seams: [`DeltaLog`] (in-memory in one process, JetStream in a fleet:
//! [`fleet::JetStreamLog`]) and [`RelayHandle`] (called directly in one
//! process, over NATS in a fleet: [`fleet::control`]). Each shard is a
//! sans-IO [`RelayCore`] behind a thin tokio driver, so the relay's rules
//! can be driven in memory with a virtual clock.
//!
//! The rooms, in the order a delta passes them:
//! - `handle`: [`start`] binds the sockets and spawns the shards;
//!   [`RelayHandle`] sends them offers, trickles and closes (`command`).
//! - `driver`: one shard's socket, queue and clock around its core;
//!   `ice_tcp`: its ICE-TCP listener and connections (RFC 4571 framing).
//! - `core`: the shard's peers, routing (`demux`), timers (`timers`) and
//!   str0m's poll loop.
//! - `peer`: one connection's protocol: commands, rate limits (`rate`),
//!   reassembly of fragmented frames (`reassembly`), validation, acks, and
//!   delivery from a cursor into the log; its life as a span (`timeline`).
//! - `log`: sequencing, de-duplication and resume over the chunk store
//!   (`store`), signing what it accepts (`signing`); shards hear of new
//!   deltas, verdicts and closes through their wake-ups (`wake`).
//! - `directory`: who is in which session, for `Welcome`, joins and leaves.
//! - `presence`: every session's latest presence states (PROTOCOL §8);
//!   `direct`: where a direct message (`PeerSignal`, §9) goes.
//! - `shared`, `config`, `metrics`, `error`, `clock`: what every room reads.
//! - `websocket`, `socket_lane`: the WebSocket lane (PROTOCOL §11): its
//!   messages as the core sees them, and its port, tickets and sockets.
//! - [`fleet`]: the same relay among others, over NATS and the registry.

mod clock;
mod command;
mod config;
mod core;
mod demux;
mod direct;
mod directory;
mod driver;
mod error;
pub mod fleet;
mod handle;
mod ice_restart;
mod ice_tcp;
mod log;
mod metrics;
mod peer;
mod presence;
mod rate;
mod reassembly;
mod shared;
mod signing;
mod socket_lane;
mod store;
mod timeline;
mod timers;
mod wake;
mod websocket;

pub use clock::WallClock;
pub use command::{Offer, OfferAnswer, PeerAccess};
pub use config::RelayConfig;
pub use core::{NoCertificate, RelayCore, Transmit};
pub use directory::{Member, MemberChange, MemberState};
pub use error::RelayError;
pub use handle::{RelayHandle, SocketTicket, start};
pub use ice_restart::{IceRestart, IceRestarted};
pub use log::{DeltaLog, MemoryLog};
pub use metrics::RelayMetrics;
pub use rate::Rate;
pub use shared::Shared;
pub use signing::{DeltaSigner, SigningKeyError, hex};
pub use store::ChunkStore;
pub use websocket::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_UNSUPPORTED, SocketInput, SocketOpen, SocketOutput,
};

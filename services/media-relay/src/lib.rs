//! The deltamesh media relay: terminates peer connections with str0m,
//! validates each delta in place, appends it once into the chunk store,
//! sequences it through the session log, acknowledges it, and fans it out to
//! every other peer of the session.
//!
//! Seams: [`DeltaLog`] (in-memory in one process, JetStream in a fleet:
//! [`fleet::JetStreamLog`]) and [`RelayHandle`] (called directly in one
//! process, over NATS in a fleet: [`fleet::control`]).
//! Inside, [`shard`] is the thin I/O driver and [`peer`] the protocol.

pub mod config;
pub mod demux;
pub mod directory;
pub mod fleet;
pub mod log;
pub mod peer;
pub mod rate;
pub mod relay;
pub mod shard;
pub mod signing;
pub mod store;
pub mod timeline;
pub mod timers;
pub mod wake;

pub use config::RelayConfig;
pub use directory::{Member, MemberChange, MemberState};
pub use log::{AckTo, DeltaLog, MemoryLog};
pub use rate::Rate;
pub use relay::{OfferAnswer, PeerAccess, RelayError, RelayHandle, RelayMetrics, start};
pub use signing::DeltaSigner;
pub use store::ChunkStore;

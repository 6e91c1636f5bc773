//! The whole deltamesh stack in one process: signal, the registry's
//! placement and relays, wired directly (in-process bus, in-memory log).
//! The same product code runs as separate services in a fleet; only these
//! adapters differ.

pub mod embedded;
pub mod stack;

pub use embedded::EmbeddedNetwork;
pub use stack::{RunningStack, StackConfig, start};

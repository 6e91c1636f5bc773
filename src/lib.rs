//! The whole deltamesh stack in one process: signal, the registry's
//! placement and relays, wired directly (in-process bus, in-memory log);
//! and the services of a fleet started on their own against NATS
//! ([`fleet`]). The product code is the same; only these adapters differ.

pub mod embedded;
pub mod fleet;
pub mod ops;
pub mod ports;
pub mod stack;
pub mod telemetry;

pub use embedded::EmbeddedNetwork;
pub use stack::{RunningStack, StackConfig, start};

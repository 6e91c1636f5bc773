//! The whole deltamesh stack in one process: signal, the registry's
//! placement and relays, wired directly (in-process bus, in-memory log);
//! and the services of a fleet started on their own against NATS
//! ([`fleet`]). The product code is the same; only these adapters differ.
//! The `deltamesh` binary parses its flags with [`cli`] and runs what they
//! describe with [`service`].

pub mod cli;
pub mod embedded;
pub mod fleet;
pub mod ops;
pub mod ports;
mod production;
pub mod service;
pub mod stack;
pub mod telemetry;
pub mod token;

pub use embedded::EmbeddedNetwork;
pub use stack::{RunningStack, StackConfig, start, start_on};

/// The target of the binary's own log lines (start-up warnings, shutdown
/// notes): `deltamesh`, as when they were logged from `main.rs`, so log
/// readers and `RUST_LOG=deltamesh=…` filters see them unchanged.
pub(crate) const LOG_TARGET: &str = "deltamesh";

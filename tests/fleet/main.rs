//! The fleet as separate processes: registries, relays and signals on a
//! real nats-server with JetStream, native peers over real WebRTC. A
//! session's peers spread over several relays still see one order with
//! nothing lost, through relay crashes and restarts of NATS and the registry.

mod common;
mod failures;
mod ice_restart;
mod lanes;
mod large;
mod local_stack;
mod logs;
mod ops;
#[path = "../support/otlp.rs"]
mod otlp;
mod peer_messages;
mod raw_peer;
mod security;
mod spread;
mod traces;

//! The deltamesh wire contract, shared by every other crate.
//!
//! - [`frame`]: the delta frame a peer sends (PROTOCOL §3), as a validated
//!   zero-copy view and a builder.
//! - [`security`]: the security header a relay puts in front of a relayed
//!   frame (PROTOCOL §4).
//! - [`fragment`]: large frames as `FRG1` fragments (PROTOCOL §6).
//! - [`batch`]: several whole frames in one message (PROTOCOL §7).
//! - [`presence`]: the relayed presence state (PROTOCOL §8).
//! - [`command`] and [`pb`]: the protobuf messages of the `command` channel.
//! - [`channel`]: the pre-negotiated data channels.
//! - [`grants`]: what a peer connection may do.
//! - [`id`] and [`session`]: peer, relay and document ids; session names.
//! - [`trace`]: the W3C trace context a connection's trace travels in.
//! - [`ports`]: binding the first free port of a range.
//! - [`rfc4571`]: the two-byte length framing of datagrams on ICE-TCP.
//! - [`time`]: wall-clock time since the Unix epoch, in the wire's units.
//!
//! This crate knows nothing of sockets, runtimes or WebRTC stacks, so the
//! browser build and every service can share it.

pub mod batch;
pub mod channel;
pub mod command;
pub mod fleet;
pub mod fragment;
pub mod frame;
pub mod grants;
pub mod id;
pub mod ports;
pub mod presence;
pub mod rfc4571;
pub mod security;
pub mod session;
pub mod time;
pub mod trace;

/// Protobuf types generated from `proto/deltamesh/v1/*.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/deltamesh.v1.rs"));
}

pub use frame::{DeltaFrame, FrameError, FrameHeader};
pub use grants::Grants;
pub use id::Id;
pub use security::{RelayedFrame, SecurityFields, SecurityFlags};

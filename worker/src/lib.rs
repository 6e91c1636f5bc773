//! The deltamesh peer. [`core`] is the protocol as a sans-IO state machine
//! (client_seq, acks, resume, in-order delivery, the command channel) and
//! [`backoff`] paces reconnects; [`ice_servers`] reads the STUN and TURN
//! servers signal hands out, [`trickle`] queues late candidates for
//! `PATCH` and [`ice_restart`] writes and reads the sdpfrags of an ICE
//! restart. Two thin drivers run them:
//! - `native` (not on wasm32) drives the core with str0m over UDP for
//!   servers, the command-line client and benchmarks (with [`verify`] for
//!   relay signatures);
//! - `web` (wasm32 only) drives it with `RTCDataChannel`s from a dedicated
//!   web worker, with the page-side half owning the `RTCPeerConnection`.

pub mod backoff;
pub mod core;
pub mod ice_restart;
pub mod ice_servers;
pub mod lane;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod trickle;
#[cfg(not(target_arch = "wasm32"))]
pub mod verify;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use backoff::{Backoff, ReconnectPolicy};
pub use core::{PeerCore, PeerEvent, ReceivedDelta, SendError};
pub use ice_servers::IceServer;
pub use lane::{Lane, LaneChoice, LanePolicy, LaneTimes, Transport};
#[cfg(not(target_arch = "wasm32"))]
pub use native::{ConnectError, ConnectOptions, NativePeer, channel_config};
#[cfg(not(target_arch = "wasm32"))]
pub use verify::{VerifyError, verify_relayed};

//! The deltamesh peer. [`core`] is the protocol as a sans-IO state machine
//! (client_seq, acks, resume, in-order delivery, the command channel);
//! [`native`] drives it with str0m over UDP for servers, the command-line
//! client and benchmarks. The browser build drives the same core through
//! `RTCDataChannel`s.

pub mod core;
pub mod native;

pub use core::{PeerCore, PeerEvent, ReceivedDelta, SendError};
pub use native::{ConnectError, ConnectOptions, NativePeer};

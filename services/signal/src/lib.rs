//! The public HTTP API of deltamesh (PROTOCOL.md §1): WHIP-style signaling,
//! one resource per peer connection, plus health, readiness, metrics and the
//! home page.
//!
//! Signal is stateless. It checks what comes in from the outside (token, ids,
//! content type, body size, the shape of the SDP), hands the rest to a
//! [`Network`] and turns the outcome into HTTP: a success, or an RFC 9457
//! problem. Its seams are the [`Network`] trait (registry and relays, called
//! in-process or over gRPC and NATS), the authenticator in `auth` (a fixed
//! development token for now, signed tokens later) and the shared Prometheus
//! registry it serves at `/metrics`.

mod auth;
mod config;
mod etag;
mod http;
mod ids;
mod metrics;
pub mod network;
mod problem;
mod sdp;

pub use config::{BODY_LIMIT, SignalConfig};
pub use http::{router, serve};
pub use metrics::SignalMetrics;
pub use network::{ConnectRequest, Connected, Network, NetworkError, PeerInfo, PeerState};

//! The public HTTP API of deltamesh (PROTOCOL.md §1): WHIP-style signaling,
//! one resource per peer connection, plus health, readiness, metrics and the
//! home page.
//!
//! Signal is stateless. It checks what comes in from the outside (token, ids,
//! content type, body size, the shape of the SDP), hands the rest to a
//! [`Network`] and turns the outcome into HTTP: a success, or an RFC 9457
//! problem. Its seams are the [`Network`] trait (registry and relays, called
//! in-process or over gRPC and NATS), the authenticator in `auth` (signed
//! [`token`]s, and a fixed development token), the rate limits in `limits`
//! and the shared Prometheus registry it serves at `/metrics`.

mod auth;
mod config;
mod etag;
#[cfg(feature = "fleet")]
pub mod fleet;
mod http;
mod ice_servers;
mod ids;
mod limits;
mod metrics;
pub mod network;
mod problem;
mod sdp;
pub mod token;

pub use auth::DEV_SUBJECT;
pub use config::{BODY_LIMIT, DEFAULT_ADDRESS_RATE, DEFAULT_TOKEN_RATE, SignalConfig};
#[cfg(feature = "fleet")]
pub use fleet::{FleetMetrics, FleetNetwork, FleetTimeouts};
pub use http::{router, serve};
pub use ice_servers::{DEFAULT_CREDENTIAL_LIFETIME, IceServerError, IceServers};
pub use limits::RateLimit;
pub use metrics::{SignalMetrics, openmetrics_response};
pub use network::{
    ConnectRequest, Connected, IceRestartAnswer, IceRestartRequest, Network, NetworkError,
    PeerInfo, PeerState, SocketPlaced, SocketRequest,
};

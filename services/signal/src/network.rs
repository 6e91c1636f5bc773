//! The seam between signal and the rest of deltamesh. Signal is stateless:
//! everything it answers comes from a [`Network`] — in one process the
//! registry and relays called directly, in a deployment gRPC and NATS.

use std::future::Future;
use std::time::{Duration, SystemTime};

use deltamesh_proto::fleet::pb::{self, RelayFailureCode};
use deltamesh_proto::{Grants, Id};

/// What `If-Match` names for an ICE restart (RFC 9725 §4.3).
pub const ICE_RESTART: &str = "*";
/// What a full relay, a full session or a fleet with no room asks clients
/// to wait.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(2);
/// What a relay busy setting up connections asks clients to wait.
const PENDING_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A new peer connection asked for by an HTTP offer.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The session, already checked against the id rules.
    pub session: String,
    /// The peer's identity: its token's subject.
    pub identity: String,
    /// What the connection may do, from its token.
    pub grants: Grants,
    /// The SDP offer text, already checked to carry an SCTP application m-line.
    pub offer_sdp: String,
    /// The trace the connection is part of: signal's span for the offer,
    /// continuing the client's `traceparent` (only that, untouched, when
    /// tracing is off).
    pub trace: opentelemetry::Context,
}

/// A new WebSocket peer asked for by `GET .../socket` (PROTOCOL §11).
#[derive(Debug, Clone)]
pub struct SocketRequest {
    /// The session, already checked against the id rules.
    pub session: String,
    /// The peer's identity: its token's subject.
    pub identity: String,
    /// What the connection may do, from its token.
    pub grants: Grants,
    /// The trace the connection is part of (signal's span for the request).
    pub trace: opentelemetry::Context,
}

/// A WebSocket peer a relay admitted, and where signal takes its socket.
#[derive(Debug, Clone)]
pub struct SocketPlaced {
    /// The new peer's id.
    pub peer_id: Id,
    /// The relay that terminates it.
    pub relay_id: Id,
    /// The relay's lane URL with a single-use ticket (`ws://…/lane/<ticket>`).
    pub url: String,
}

/// A peer connection a relay accepted.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The new peer's id.
    pub peer_id: Id,
    /// The relay that terminates it.
    pub relay_id: Id,
    /// The SDP answer text.
    pub answer_sdp: String,
    /// The relay-side ICE ufrag (the resource's ETag).
    pub ice_ufrag: String,
}

/// A peer's ICE restart (a `PATCH` with `If-Match: *`, RFC 9725 §4.4):
/// its new ICE credentials and candidates, from its sdpfrag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceRestartRequest {
    /// The peer's new `ice-ufrag`.
    pub ufrag: String,
    /// The peer's new `ice-pwd`.
    pub pwd: String,
    /// Its `a=candidate:` lines (may be none).
    pub candidates: Vec<String>,
}

/// The relay's side of an ICE restart: what the `200` sdpfrag carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceRestartAnswer {
    /// The relay's new `ice-ufrag` (the resource's new ETag).
    pub ufrag: String,
    /// The relay's new `ice-pwd`.
    pub pwd: String,
    /// The relay's candidates, as `candidate:` attribute values.
    pub candidates: Vec<String>,
}

/// Connection state of a peer, as listed by `GET .../peers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Offer answered, ICE/DTLS/SCTP not up yet.
    Connecting,
    /// Channels open and welcomed.
    Connected,
}

impl PeerState {
    /// The state's name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Connecting => "connecting",
            PeerState::Connected => "connected",
        }
    }
}

/// One peer of a session.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's id.
    pub peer_id: Id,
    /// The relay it is connected to.
    pub relay_id: Id,
    /// Its connection state.
    pub state: PeerState,
    /// When its offer was accepted.
    pub joined_at: SystemTime,
}

/// Why the network could not do what signal asked. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// The offer was refused by the relay (malformed or unsupported SDP): 400.
    #[error("offer refused: {0}")]
    BadOffer(String),
    /// No such peer in that session: 404.
    #[error("unknown peer")]
    UnknownPeer,
    /// The peer belongs to another identity: 403.
    #[error("the peer belongs to another identity")]
    NotOwner,
    /// `If-Match` does not name the peer's current ICE ufrag: 412.
    #[error("ETag does not match the current ICE session")]
    EtagMismatch,
    /// The operation is not supported: 501.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// No relay has room (full, draining, or too many connections still
    /// being set up): 503 with `Retry-After`.
    #[error("no relay has capacity: {reason}")]
    NoCapacity {
        /// Which limit was hit.
        reason: String,
        /// How long the client should wait.
        retry_after: Duration,
    },
    /// The session has as many peers as it may: 503 with `Retry-After`.
    #[error("the session is full ({limit} peers)")]
    SessionFull {
        /// The peers-per-session limit.
        limit: usize,
        /// How long the client should wait.
        retry_after: Duration,
    },
    /// A hop did not answer in time: 504.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// A hop failed: 503.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl NetworkError {
    /// No relay can take a new peer: the placement found none (`reason`,
    /// or by default that every relay is full or draining).
    pub fn no_relay_room(reason: Option<&str>) -> NetworkError {
        NetworkError::NoCapacity {
            reason: reason
                .unwrap_or("every relay is full or draining")
                .to_owned(),
            retry_after: FULL_RETRY_AFTER,
        }
    }

    /// Refuses an `If-Match` naming an ICE restart ([`ICE_RESTART`]) on a
    /// trickle: a restart goes to [`Network::restart_ice`], never here.
    pub fn refuse_ice_restart(if_match: Option<&str>) -> Result<(), NetworkError> {
        if if_match == Some(ICE_RESTART) {
            Err(NetworkError::Unsupported(
                "ICE restart; reconnect with a new offer",
            ))
        } else {
            Ok(())
        }
    }
}

/// The one mapping of a relay's refusal, as its failure code travels
/// (the relay's `fleet::control::failure` makes it, over NATS or in
/// process), to what signal tells the client.
impl From<pb::RelayFailure> for NetworkError {
    fn from(failure: pb::RelayFailure) -> Self {
        match RelayFailureCode::try_from(failure.code) {
            Ok(RelayFailureCode::BadOffer) => NetworkError::BadOffer(failure.detail),
            Ok(RelayFailureCode::Full) => NetworkError::NoCapacity {
                reason: "the relay is full".into(),
                retry_after: FULL_RETRY_AFTER,
            },
            Ok(RelayFailureCode::TooManyPending) => NetworkError::NoCapacity {
                reason: "too many connections are being set up".into(),
                retry_after: PENDING_RETRY_AFTER,
            },
            Ok(RelayFailureCode::SessionFull) => NetworkError::SessionFull {
                limit: failure.limit as usize,
                retry_after: FULL_RETRY_AFTER,
            },
            Ok(RelayFailureCode::UnknownPeer) => NetworkError::UnknownPeer,
            Ok(RelayFailureCode::NotOwner) => NetworkError::NotOwner,
            Ok(RelayFailureCode::EtagMismatch) => NetworkError::EtagMismatch,
            Ok(RelayFailureCode::ShuttingDown) => {
                NetworkError::Unavailable("relay is shutting down".into())
            }
            Ok(RelayFailureCode::BadRequest) => NetworkError::Unavailable(format!(
                "the relay could not decode the request: {}",
                failure.detail
            )),
            Ok(RelayFailureCode::Unspecified) | Err(_) => NetworkError::Unavailable(format!(
                "the relay failed (code {}): {}",
                failure.code, failure.detail
            )),
        }
    }
}

/// What signal needs from the registry and relays.
pub trait Network: Send + Sync + 'static {
    /// Places a new peer of `request.session` on a relay and returns its answer.
    fn connect(
        &self,
        request: ConnectRequest,
    ) -> impl Future<Output = Result<Connected, NetworkError>> + Send;

    /// Adds trickled remote ICE candidates (`a=candidate:` lines) to a peer
    /// of `identity`. `if_match` is the ETag the client named, `None` when
    /// it named none.
    fn trickle(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        if_match: Option<&str>,
        candidates: Vec<String>,
    ) -> impl Future<Output = Result<(), NetworkError>> + Send;

    /// Restarts the ICE of a peer of `identity` with its new credentials
    /// and candidates; the connection, its peer id and its place in the
    /// stream stay. A network that cannot answers
    /// [`NetworkError::Unsupported`] (501): the client reconnects with a
    /// new offer.
    fn restart_ice(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        restart: IceRestartRequest,
    ) -> impl Future<Output = Result<IceRestartAnswer, NetworkError>> + Send {
        let _ = (session, peer, identity, restart);
        async {
            Err(NetworkError::Unsupported(
                "ICE restart; reconnect with a new offer",
            ))
        }
    }

    /// Places a new WebSocket peer of `request.session` on a relay (as
    /// [`connect`](Network::connect) places an offer) and says where its
    /// socket goes. A network without the lane answers `Unsupported` (501).
    fn open_socket(
        &self,
        request: SocketRequest,
    ) -> impl Future<Output = Result<SocketPlaced, NetworkError>> + Send {
        let _ = request;
        async { Err(NetworkError::Unsupported("the WebSocket lane")) }
    }

    /// Closes a peer connection of `identity`.
    fn disconnect(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
    ) -> impl Future<Output = Result<(), NetworkError>> + Send;

    /// Lists the peers of a session.
    fn peers(
        &self,
        session: &str,
    ) -> impl Future<Output = Result<Vec<PeerInfo>, NetworkError>> + Send;

    /// `Ok` when the network can take new peers; the reason otherwise.
    fn readiness(&self) -> Result<(), String>;
}

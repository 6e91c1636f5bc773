//! Why the relay refuses a request: one error type for offers, trickles
//! and closes, whichever way they arrive (directly in one process, over NATS
//! in a fleet).

/// Why the relay refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The SDP offer is unusable.
    #[error("{0}")]
    BadOffer(String),
    /// The relay is at `max_peers`.
    #[error("relay is full")]
    Full,
    /// The session is at `max_peers_per_session` on this relay.
    #[error("the session is full ({limit} peers)")]
    SessionFull {
        /// The limit.
        limit: usize,
    },
    /// The relay has `max_pending` connections still being set up.
    #[error("too many connections are being set up; retry shortly")]
    TooManyPending,
    /// No such peer in that session.
    #[error("unknown peer")]
    UnknownPeer,
    /// The peer connection belongs to another identity.
    #[error("the peer belongs to another identity")]
    NotOwner,
    /// The client's ETag is not the peer's current ICE ufrag.
    #[error("ETag does not match the current ICE session")]
    EtagMismatch,
    /// A trickled candidate line does not parse.
    #[error("bad candidate: {0}")]
    BadCandidate(String),
    /// The relay is shutting down.
    #[error("relay is shutting down")]
    ShuttingDown,
}

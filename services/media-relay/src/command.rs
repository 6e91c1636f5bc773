//! What the relay handle asks of a shard ([`ShardCommand`], with a reply
//! channel each), and the plain values those requests carry and answer
//! with. The shard's driver takes each command off its queue and hands it
//! to the shard core as a method call.

use std::sync::Arc;
use std::time::Duration;

use deltamesh_proto::{Grants, Id};
use opentelemetry::global::BoxedSpan;
use str0m::Candidate;
use str0m::change::SdpOffer;
use tokio::sync::oneshot;

use crate::error::RelayError;
use crate::ice_restart::{IceRestart, IceRestarted};

/// Who is connecting, and what the connection may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAccess {
    /// The peer's identity: its token's subject.
    pub identity: Arc<str>,
    /// Its grants.
    pub grants: Grants,
}

/// An offer for a new peer, checked and parsed, for one shard.
pub struct Offer {
    /// The id the new peer gets.
    pub peer_id: Id,
    /// Its session.
    pub session: Arc<str>,
    /// Its identity and grants.
    pub access: PeerAccess,
    /// The parsed SDP offer.
    pub sdp: SdpOffer,
    /// The span of the connection's life, started with the offer.
    pub connection: BoxedSpan,
}

/// The answer to an accepted offer.
#[derive(Debug, Clone)]
pub struct OfferAnswer {
    /// The new peer's id.
    pub peer_id: Id,
    /// SDP answer text, with the relay's host candidate.
    pub answer_sdp: String,
    /// The relay-side ICE ufrag.
    pub ice_ufrag: String,
}

/// Where a command's result goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, RelayError>>;

/// Requests from the relay handle to a shard.
pub(crate) enum ShardCommand {
    /// Accept an SDP offer for a new peer.
    Offer(Box<Offer>, Reply<OfferAnswer>),
    /// Add trickled remote candidates to a peer.
    Trickle(Id, Vec<Candidate>, Reply<()>),
    /// Restart a peer's ICE with its new credentials and candidates.
    IceRestart(Id, IceRestart, Reply<IceRestarted>),
    /// Tell every peer to reconnect elsewhere after the duration, and why.
    Drain(Duration, String),
    /// Close a peer connection, with why.
    Close(Id, String, Reply<()>),
    /// Admit a WebSocket peer whose socket is still to come (PROTOCOL §11).
    OpenSocket(Box<crate::websocket::SocketOpen>, Reply<()>),
}

//! ICE restart of a live peer connection (RFC 9725 §4.4, PROTOCOL §1): the
//! peer's new ICE credentials and candidates in, the relay's new ones out.
//! The peer keeps its `Rtc` (DTLS, SCTP, channels), its peer id and its
//! place in the session's stream; only the ICE credentials change, so the
//! peer can reach the relay from a new address. The core does the swap
//! ([`RelayCore::restart_ice`](crate::RelayCore::restart_ice)); the demux
//! routes the new address by the new local ufrag.

use str0m::{Candidate, IceCreds};

/// What a peer sends to restart ICE.
#[derive(Debug, Clone)]
pub struct IceRestart {
    /// The peer's new `ice-ufrag` and `ice-pwd`.
    pub remote: IceCreds,
    /// The peer's candidates under its new credentials (may be none: the
    /// relay is ICE-lite and learns the address from the peer's checks).
    pub candidates: Vec<Candidate>,
}

/// The relay's side of a restart, for the `200` sdpfrag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceRestarted {
    /// The relay's new `ice-ufrag`: the resource's new ETag.
    pub ice_ufrag: String,
    /// The relay's new `ice-pwd`.
    pub ice_pwd: String,
    /// The relay's candidates, as `candidate:` attribute values.
    pub candidates: Vec<String>,
}

//! What a peer connection may do, as its token grants it. Signal reads the
//! grants from the token; the relay enforces them on every message of the
//! connection.

/// The permissions of one peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grants {
    /// May send deltas (`send` channel). Without it every delta gets
    /// `Reject{not permitted}`.
    pub publish: bool,
    /// May receive the session's deltas (`receive` channel). Without it the
    /// relay delivers none; membership events still arrive.
    pub subscribe: bool,
    /// May exchange peer-to-peer signals (`PeerSignal`) with peers of its
    /// session.
    pub signal: bool,
}

impl Grants {
    /// Every grant: what the development token gives.
    pub const ALL: Grants = Grants {
        publish: true,
        subscribe: true,
        signal: true,
    };
}

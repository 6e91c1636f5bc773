//! Presence (PROTOCOL §8): on channel 3, a peer sends its whole state as
//! opaque bytes; the relay forwards `peer_id (16) | version (8, u64 LE) |
//! state`. [`PresenceState`] is that relayed message.

use crate::id::Id;

/// Length of the relayed presence header: peer id and version.
pub const PRESENCE_HEADER_LEN: usize = 24;
/// The default largest presence state (`Welcome.max_presence_size` 0).
pub const DEFAULT_MAX_PRESENCE_SIZE: usize = 1024;
/// The default presence states forwarded per second per sending peer
/// (`Welcome.presence_rate` 0).
pub const DEFAULT_PRESENCE_RATE: u32 = 20;

/// One peer's presence state as the relay forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceState<'a> {
    /// Whose state it is.
    pub peer_id: Id,
    /// Increases with every state of that peer; keep the highest seen.
    pub version: u64,
    /// The state; empty when it was cleared.
    pub state: &'a [u8],
}

impl<'a> PresenceState<'a> {
    /// Reads a relayed presence message; `None` when it is shorter than
    /// its header.
    pub fn parse(message: &'a [u8]) -> Option<Self> {
        if message.len() < PRESENCE_HEADER_LEN {
            return None;
        }
        Some(PresenceState {
            peer_id: Id::from_slice(&message[..16]).ok()?,
            version: u64::from_le_bytes(message[16..24].try_into().ok()?),
            state: &message[PRESENCE_HEADER_LEN..],
        })
    }

    /// The relayed message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PRESENCE_HEADER_LEN + self.state.len());
        out.extend_from_slice(&self.peer_id.0);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(self.state);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_in_the_documented_layout() {
        let state = PresenceState {
            peer_id: Id([3; 16]),
            version: 7,
            state: b"cursor",
        };
        let bytes = state.encode();
        assert_eq!(&bytes[..16], &[3; 16]);
        assert_eq!(&bytes[16..24], &7u64.to_le_bytes());
        assert_eq!(&bytes[24..], b"cursor");
        assert_eq!(PresenceState::parse(&bytes), Some(state));
        assert_eq!(PresenceState::parse(&bytes[..23]), None);
    }
}

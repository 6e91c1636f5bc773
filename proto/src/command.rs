//! The command channel codec: one protobuf [`Command`](pb::Command) per
//! data-channel message, and the mapping from frame errors to reject reasons.

use prost::Message;

use crate::frame::FrameError;
use crate::pb::{self, command::Body};

/// Why bytes on the `command` channel are not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not a protobuf `Command`.
    #[error("command does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A `Command` with no body set (or one this version does not know).
    #[error("command has no known body")]
    Empty,
}

/// Encodes one command message.
pub fn encode(body: Body) -> Vec<u8> {
    pb::Command { body: Some(body) }.encode_to_vec()
}

/// Decodes one command message into its body.
pub fn decode(bytes: &[u8]) -> Result<Body, CommandError> {
    pb::Command::decode(bytes)?.body.ok_or(CommandError::Empty)
}

impl From<&FrameError> for pb::RejectReason {
    fn from(error: &FrameError) -> Self {
        use pb::RejectReason as R;
        match error {
            FrameError::Truncated { .. } => R::Truncated,
            FrameError::BadMagic { .. } => R::BadMagic,
            FrameError::BadVersion { .. } => R::BadVersion,
            FrameError::ReservedFlags { .. } => R::ReservedFlags,
            FrameError::ReservedNonZero { .. } => R::ReservedNonzero,
            FrameError::LengthMismatch { .. } => R::LengthMismatch,
            FrameError::BadChecksum { .. } => R::BadChecksum,
            FrameError::PayloadTooLarge { .. } => R::TooLarge,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_round_trips() {
        let bytes = encode(Body::Ack(pb::Ack {
            client_seq: 3,
            seq: 9,
        }));
        assert_eq!(
            decode(&bytes),
            Ok(Body::Ack(pb::Ack {
                client_seq: 3,
                seq: 9
            }))
        );
    }

    #[test]
    fn garbage_and_empty_commands_are_errors() {
        assert_eq!(decode(&[]), Err(CommandError::Empty));
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff]),
            Err(CommandError::Decode(_))
        ));
    }
}

//! The WebSocket lane's messages (PROTOCOL §11) as the sans-IO core sees
//! them: what a socket's driver hands the core ([`SocketInput`]), what the
//! core asks the driver to do ([`SocketOutput`]), and the one rule that
//! splits a binary message into its channel and the message that channel
//! would carry. No socket here: the I/O lives in `socket_lane`.

use std::sync::Arc;

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;
use opentelemetry::global::BoxedSpan;

use crate::command::PeerAccess;

/// Close code for a message the lane does not take (RFC 6455 §7.4.1:
/// "unsupported data"): a text message, an unknown channel id, an empty
/// message (PROTOCOL §11).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// Close code for a connection that ended normally (left, replaced,
/// deleted, timed out, or disconnected with an `Error` before).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code when the relay stops.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// A WebSocket peer to admit, before its socket arrives.
pub struct SocketOpen {
    /// The id the new peer gets.
    pub peer_id: Id,
    /// Its session.
    pub session: Arc<str>,
    /// Its identity and grants.
    pub access: PeerAccess,
    /// The span of the connection's life, started with the request.
    pub connection: BoxedSpan,
}

/// What a socket's driver tells the core about one WebSocket peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketInput {
    /// The socket arrived with the peer's ticket: its channels are open.
    Attached,
    /// A binary message (channel id byte first).
    Binary(Vec<u8>),
    /// A text message, which the lane does not take.
    Text,
    /// A sign of life without data (a pong).
    Alive,
    /// The driver wrote a message of this many bytes to the socket.
    Written(usize),
    /// The socket closed or failed.
    Closed,
}

/// What the core asks a socket's driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketOutput {
    /// Write this binary message (channel id byte first) to `peer`'s socket.
    Message {
        /// The WebSocket peer.
        peer: Id,
        /// The message.
        bytes: Vec<u8>,
    },
    /// Write what is queued, then close `peer`'s socket with `code` and `reason`.
    Close {
        /// The WebSocket peer.
        peer: Id,
        /// The close code.
        code: u16,
        /// Why (at most 123 bytes, as a close frame allows).
        reason: String,
    },
}

/// A binary message the lane refuses, and why (the close reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// An empty message.
    Empty,
    /// A first byte that names no channel.
    UnknownChannel(u8),
}

impl Refused {
    /// The close reason.
    pub(crate) fn reason(self) -> String {
        match self {
            Refused::Empty => {
                "empty message: a message is a channel id byte and its message".into()
            }
            Refused::UnknownChannel(id) => format!("unknown channel id {id}"),
        }
    }
}

/// Splits a lane message into its channel and the message that channel
/// would carry (PROTOCOL §11).
pub(crate) fn split(message: &[u8]) -> Result<(Channel, &[u8]), Refused> {
    let (&id, rest) = message.split_first().ok_or(Refused::Empty)?;
    let channel = Channel::from_stream_id(u16::from(id)).ok_or(Refused::UnknownChannel(id))?;
    Ok((channel, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_a_channel_id_byte_and_that_channels_message() {
        assert_eq!(split(&[1, 7, 8]), Ok((Channel::Send, &[7u8, 8][..])));
        assert_eq!(split(&[0]), Ok((Channel::Command, &[][..])));
        assert_eq!(split(&[3, 9]), Ok((Channel::Presence, &[9u8][..])));
        assert_eq!(split(&[]), Err(Refused::Empty));
        assert_eq!(split(&[4, 1]), Err(Refused::UnknownChannel(4)));
        assert_eq!(split(&[255]), Err(Refused::UnknownChannel(255)));
    }
}

//! The WebSocket lane's I/O on the relay (PROTOCOL §11): a TCP port of the
//! relay's own where sockets arrive with a single-use, short-lived ticket
//! the relay issued through the same path an offer takes (admission,
//! grants, limits: [`RelayHandle::open_socket`](crate::RelayHandle::open_socket)),
//! one task per socket moving messages (`io`), and the part of a shard's
//! driver that hands them to its core and takes what the core wants
//! written (`shard`). The protocol is all in the core; nothing here
//! judges a message.
//!
//! Signal answers the client's `GET /v1/sessions/{s}/socket` and forwards
//! messages between the client's socket and the relay's, so the socket
//! ends at the relay placement chose, in one process as in a fleet.

mod io;
mod listener;
mod shard;
mod tickets;

pub(crate) use listener::LANE_PATH;
pub(crate) use listener::serve;
pub(crate) use shard::{ShardSockets, SocketEvent};
pub(crate) use tickets::{Admitted, Tickets};

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long a ticket may wait for its socket.
pub(crate) const TICKET_LIFETIME: Duration = Duration::from_secs(10);
/// Events one shard's sockets may have queued for it; a socket's reader
/// waits beyond that, so back-pressure reaches its TCP connection.
pub(crate) const SHARD_EVENTS: usize = 1024;

/// What one lane socket reads at most: one message of any channel with its
/// id byte, up to the largest a WebRTC peer could send (SCTP's message
/// limit). Larger messages end the socket (1009, message too big); smaller
/// ones over a channel's limit get what WebRTC gives them.
pub(crate) fn socket_config() -> WebSocketConfig {
    let largest = crate::config::SCTP_MAX_MESSAGE_SIZE as usize + 1;
    // Read 8 KiB per call, not tungstenite's 128 KiB allocated up front: a
    // relay holds many lane sockets, most of them idle.
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(largest))
        .max_frame_size(Some(largest))
}

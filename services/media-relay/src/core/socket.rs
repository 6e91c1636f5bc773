//! The WebSocket lane in the shard core (PROTOCOL §11): admitting a peer
//! whose socket is still to come, feeding it what its socket's driver
//! read, and handing the driver what to write or close. A WebSocket peer
//! is a [`Peer`] like any other; only its link differs, so the rules
//! above the link (welcome, acks, resume, fragments, batches, presence,
//! limits, slow consumers) are the same code.

use std::sync::Arc;
use std::time::Instant;

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;

use super::{MAX_TIMER, PeerKey, RelayCore};
use crate::config::SCTP_SEND_BUFFER;
use crate::error::RelayError;
use crate::log::AckTo;
use crate::peer::{Link, Peer, SocketLink};
use crate::timeline::{self, Timeline};
use crate::websocket::{
    self, CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_UNSUPPORTED, SocketInput, SocketOpen, SocketOutput,
};

/// Longest close reason a close frame carries (RFC 6455 §5.5).
const MAX_CLOSE_REASON: usize = 123;

impl RelayCore {
    /// Admits a WebSocket peer at `now`, if the relay's limits allow it;
    /// its socket must arrive ([`SocketInput::Attached`]) within
    /// `connect_timeout`, as an offer's ICE must.
    pub fn open_socket(&mut self, now: Instant, open: SocketOpen) -> Result<(), RelayError> {
        let SocketOpen {
            peer_id,
            session,
            access,
            connection,
        } = open;
        let grants = access.grants;
        if let Err(error) = self.admit(now, peer_id, &session, access) {
            timeline::refused(connection, &error);
            return Err(error);
        }
        let ack_to = AckTo {
            shard: Arc::clone(&self.wake),
            peer: peer_id,
        };
        let timeline = Timeline::new(connection, now, &self.shared.metrics);
        let low_water = self.shared.config.send_window / 2;
        let link = Link::Socket(SocketLink::new(SCTP_SEND_BUFFER, low_water));
        let peer = Peer::new(ack_to, session, grants, link, timeline, &self.shared);
        let key = self.insert_peer(peer);
        self.drive(key, now);
        Ok(())
    }

    /// Handles what `peer_id`'s socket driver saw at `now`.
    pub fn handle_socket(&mut self, now: Instant, peer_id: Id, input: SocketInput) {
        let Some(&key) = self.by_id.get(&peer_id) else {
            if input == SocketInput::Attached {
                // Its ticket outlived it (reaped, or closed meanwhile).
                self.socket_out.push_back(SocketOutput::Close {
                    peer: peer_id,
                    code: CLOSE_NORMAL,
                    reason: "the connection is gone; open a new socket".into(),
                });
            }
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let shared = &self.shared;
        let Some(socket) = peer.link.socket() else {
            return;
        };
        match input {
            SocketInput::Attached if !socket.is_attached() => {
                socket.attach();
                peer.last_rx = now;
                for channel in Channel::ALL {
                    peer.opened(channel, shared, now);
                }
            }
            SocketInput::Attached => {}
            SocketInput::Binary(message) => {
                peer.last_rx = now;
                match websocket::split(&message) {
                    Ok((channel, data)) => peer.on_channel_data(Some(channel), data, shared, now),
                    Err(refused) => refuse(peer, refused.reason()),
                }
            }
            SocketInput::Text => refuse(
                peer,
                "text message: the lane takes binary messages only".into(),
            ),
            SocketInput::Alive => peer.last_rx = now,
            SocketInput::Written(len) => {
                if socket.written(len) || peer.is_blocked() {
                    peer.flush(shared, now);
                }
            }
            SocketInput::Closed => peer.close("socket closed"),
        }
        self.drive(key, now);
        self.reap();
    }

    /// The next thing the socket driver must do, in order.
    pub fn poll_socket(&mut self) -> Option<SocketOutput> {
        self.socket_out.pop_front()
    }

    /// A WebSocket peer's part of `drive`: hands its written messages to
    /// the driver and schedules its next deadline.
    pub(super) fn drive_socket(&mut self, key: PeerKey, now: Instant) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let id = peer.id;
        if let Some(socket) = peer.link.socket() {
            while let Some(bytes) = socket.take_outbound() {
                self.socket_out
                    .push_back(SocketOutput::Message { peer: id, bytes });
            }
        }
        let mut at = now + MAX_TIMER;
        if let Some(presence) = peer.presence_deadline() {
            at = at.min(presence.max(now));
        }
        if peer.timer_at.is_none_or(|current| at < current) {
            peer.timer_at = Some(at);
            self.timers.schedule(key, at);
        }
        if peer.closing.is_some() {
            self.closing.push(key);
        }
    }

    /// A WebSocket peer being removed: what it still had to write, then
    /// its socket's close.
    pub(super) fn socket_closed(&mut self, peer: &mut Peer) {
        let id = peer.id;
        let reason = peer
            .closing
            .as_ref()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let Some(socket) = peer.link.socket() else {
            return;
        };
        while let Some(bytes) = socket.take_outbound() {
            self.socket_out
                .push_back(SocketOutput::Message { peer: id, bytes });
        }
        let code = socket
            .close_code
            .unwrap_or(if reason == "relay shutting down" {
                CLOSE_GOING_AWAY
            } else {
                CLOSE_NORMAL
            });
        self.socket_out.push_back(SocketOutput::Close {
            peer: id,
            code,
            reason: truncate(reason),
        });
    }
}

/// Closes a WebSocket peer for a message the lane does not take (1003).
fn refuse(peer: &mut Peer, reason: String) {
    if let Some(socket) = peer.link.socket() {
        socket.close_code.get_or_insert(CLOSE_UNSUPPORTED);
    }
    tracing::warn!(peer = %peer.id, session = %peer.session, %reason, "socket message refused");
    peer.close(reason);
}

/// `reason` cut to what a close frame carries, on a character boundary.
fn truncate(mut reason: String) -> String {
    if reason.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

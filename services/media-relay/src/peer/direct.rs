//! Direct messages of one connection (PROTOCOL §9): a `PeerSignal` it sends
//! is checked (grant, recipient, size) and routed; one for it is delivered
//! on the command channel with the sender's id.

use deltamesh_proto::Id;
use deltamesh_proto::pb::{self, command::Body};

use super::Peer;
use crate::direct::Undeliverable;
use crate::shared::Shared;
use crate::wake::DirectMessage;

/// The largest `PeerSignal` payload.
pub(crate) const MAX_SIGNAL_PAYLOAD: usize = 16 * 1024;

impl Peer {
    /// Routes a `PeerSignal` this peer sent, or answers why not.
    pub(super) fn on_signal(&mut self, signal: pb::PeerSignal, shared: &Shared) {
        let recipient = Id::from_slice(&signal.peer_id).ok();
        let named = recipient.map_or_else(|| "invalid peer id".to_owned(), |id| id.to_string());
        let refused = |code: pb::ErrorCode, why: &str| {
            Body::Error(pb::Error {
                code: code.into(),
                detail: format!("PeerSignal to {named}: {why}"),
            })
        };
        let error = if !self.grants.signal {
            refused(
                pb::ErrorCode::NotPermitted,
                "sending needs the signal grant",
            )
        } else if let Some(to) = recipient.filter(|&to| to != self.id) {
            if signal.payload.len() > MAX_SIGNAL_PAYLOAD {
                refused(
                    pb::ErrorCode::TooLarge,
                    &format!(
                        "payload of {} bytes is over {MAX_SIGNAL_PAYLOAD}",
                        signal.payload.len()
                    ),
                )
            } else {
                let message = DirectMessage {
                    session: self.session.clone(),
                    from: self.id,
                    to,
                    payload: signal.payload,
                };
                match shared.route_signal(message) {
                    Ok(()) => return,
                    Err(Undeliverable::UnknownPeer) => refused(
                        pb::ErrorCode::UnknownPeer,
                        "not a connected peer of this session",
                    ),
                    Err(Undeliverable::Busy) => refused(
                        pb::ErrorCode::RateLimited,
                        "the relay's queue to other relays is full; send it again later",
                    ),
                }
            }
        } else if recipient.is_some() {
            refused(pb::ErrorCode::UnknownPeer, "that is the sender itself")
        } else {
            Body::Error(pb::Error {
                code: pb::ErrorCode::UnknownPeer.into(),
                detail: "invalid peer id".into(),
            })
        };
        self.send_command(error, shared);
    }

    /// Delivers a direct message for this peer, naming its sender.
    pub(crate) fn deliver_signal(&mut self, message: DirectMessage, shared: &Shared) {
        self.send_command(
            Body::Signal(pb::PeerSignal {
                peer_id: message.from.0.to_vec(),
                payload: message.payload,
            }),
            shared,
        );
    }
}

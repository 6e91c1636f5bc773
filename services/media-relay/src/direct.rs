//! Direct messages between peers (PROTOCOL §9): the way to peers on other
//! relays. [`Shared::route_signal`](crate::shared::Shared::route_signal)
//! hands a message for a recipient on this relay to its shard's wake-up (the
//! shard's queue keeps the order they were routed in), and one for a peer on
//! another relay to the fleet's queue here ([`DirectRoutes::to_fleet`],
//! published over core NATS by `fleet::direct`). Nothing is stored.

use std::sync::OnceLock;

use tokio::sync::mpsc;

use crate::wake::DirectMessage;

/// Direct messages waiting to be published to other relays at most.
const FLEET_QUEUE: usize = 4096;

/// Why a direct message could not be routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undeliverable {
    /// The recipient is not a connected peer of the session.
    UnknownPeer,
    /// The queue to other relays is full.
    Busy,
}

/// The way to other relays, once a fleet takes it.
#[derive(Default)]
pub(crate) struct DirectRoutes {
    fleet: OnceLock<mpsc::Sender<DirectMessage>>,
}

impl DirectRoutes {
    /// The direct messages for peers on other relays, in order; `None` if
    /// someone takes them already.
    pub(crate) fn to_fleet(&self) -> Option<mpsc::Receiver<DirectMessage>> {
        let (sender, receiver) = mpsc::channel(FLEET_QUEUE);
        self.fleet.set(sender).ok()?;
        Some(receiver)
    }

    /// Queues `message` for a peer on another relay.
    pub(crate) fn to_other_relay(&self, message: DirectMessage) -> Result<(), Undeliverable> {
        let fleet = self.fleet.get().ok_or(Undeliverable::UnknownPeer)?;
        fleet.try_send(message).map_err(|_| Undeliverable::Busy)
    }
}

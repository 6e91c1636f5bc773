//! Direct messages between peers (PROTOCOL §9): where a `PeerSignal` goes.
//! A recipient on this relay gets it through its shard's wake-up (the
//! shard's queue keeps the order they were routed in); one on another relay
//! through the fleet ([`DirectRoutes::to_fleet`], published over core NATS
//! by `fleet::direct`). Nothing is stored.

use std::sync::{Arc, OnceLock};

use deltamesh_proto::Id;
use tokio::sync::mpsc;

use crate::directory::Location;
use crate::shared::Shared;

/// Direct messages waiting to be published to other relays at most.
const FLEET_QUEUE: usize = 4096;

/// One direct message on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectMessage {
    /// The session both peers are in.
    pub session: Arc<str>,
    /// Who sent it (set by the relay).
    pub from: Id,
    /// Who it is for.
    pub to: Id,
    /// The application's bytes.
    pub payload: Vec<u8>,
}

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
}

/// Routes `message` to its recipient, on this relay or another.
pub(crate) fn route(shared: &Shared, message: DirectMessage) -> Result<(), Undeliverable> {
    match shared.directory.locate(&message.session, message.to) {
        Some(Location::Shard(shard)) => {
            let wake = shared.wake(shard).ok_or(Undeliverable::UnknownPeer)?;
            wake.push_signal(message);
        }
        Some(Location::Remote) => {
            let fleet = shared
                .direct
                .fleet
                .get()
                .ok_or(Undeliverable::UnknownPeer)?;
            fleet.try_send(message).map_err(|_| Undeliverable::Busy)?;
        }
        None => return Err(Undeliverable::UnknownPeer),
    }
    shared.metrics.signals.inc();
    Ok(())
}

/// Hands `message`, from another relay, to its recipient if that is a
/// connected peer of the message's session here; false otherwise (it left,
/// or the message names a session the peer is not in: it is dropped).
pub(crate) fn deliver_here(shared: &Shared, message: DirectMessage) -> bool {
    match shared.directory.locate(&message.session, message.to) {
        Some(Location::Shard(shard)) => match shared.wake(shard) {
            Some(wake) => {
                wake.push_signal(message);
                true
            }
            None => false,
        },
        _ => false,
    }
}

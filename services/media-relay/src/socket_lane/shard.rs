//! The lane's part of a shard's driver: it takes its sockets' events off
//! one bounded queue and hands them to the core, and gives each socket's
//! task what the core wants written or closed. A socket's write queue is
//! unbounded as a channel but bounded by the core, which counts every
//! byte it hands over until the task reports it written and refuses more
//! than a link holds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use deltamesh_proto::Id;
use tokio::sync::{Notify, mpsc};

use crate::core::RelayCore;
use crate::websocket::{SocketInput, SocketOutput};

/// Events read per wake-up before the rest of the shard gets a turn.
const EVENT_BATCH: usize = 64;

/// What a socket's task tells its shard.
pub(crate) enum SocketEvent {
    /// The socket arrived for `peer`: where its writes go, and how to
    /// tell it to finish.
    Attached {
        /// The peer the ticket admitted.
        peer: Id,
        /// The socket task's write queue.
        outbound: mpsc::UnboundedSender<SocketOutput>,
        /// Told when the core closes the socket.
        closing: Arc<Notify>,
    },
    /// What the socket saw.
    Input {
        /// The socket's peer.
        peer: Id,
        /// What happened.
        input: SocketInput,
    },
}

/// One shard's lane sockets.
pub(crate) struct ShardSockets {
    events: mpsc::Receiver<SocketEvent>,
    sockets: HashMap<Id, (mpsc::UnboundedSender<SocketOutput>, Arc<Notify>)>,
}

impl ShardSockets {
    /// The sockets whose tasks send on `events`' sender.
    pub(crate) fn new(events: mpsc::Receiver<SocketEvent>) -> Self {
        ShardSockets {
            events,
            sockets: HashMap::new(),
        }
    }

    /// The next event; pending forever once every sender is gone.
    pub(crate) async fn recv(&mut self) -> SocketEvent {
        match self.events.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }

    /// Hands `first` and what else is queued (a batch) to `core`.
    pub(crate) fn handle(&mut self, core: &mut RelayCore, first: SocketEvent) {
        self.handle_one(core, first);
        for _ in 1..EVENT_BATCH {
            match self.events.try_recv() {
                Ok(event) => self.handle_one(core, event),
                Err(_) => break,
            }
        }
    }

    fn handle_one(&mut self, core: &mut RelayCore, event: SocketEvent) {
        let now = Instant::now();
        match event {
            SocketEvent::Attached {
                peer,
                outbound,
                closing,
            } => {
                self.sockets.insert(peer, (outbound, closing));
                core.handle_socket(now, peer, SocketInput::Attached);
            }
            SocketEvent::Input { peer, input } => core.handle_socket(now, peer, input),
        }
    }

    /// Gives the sockets' tasks everything the core has for them.
    pub(crate) fn send_all(&mut self, core: &mut RelayCore) {
        while let Some(output) = core.poll_socket() {
            match &output {
                SocketOutput::Message { peer, .. } => {
                    if let Some((outbound, _)) = self.sockets.get(peer) {
                        let _ = outbound.send(output);
                    }
                }
                SocketOutput::Close { peer, .. } => {
                    if let Some((outbound, closing)) = self.sockets.remove(peer) {
                        let _ = outbound.send(output);
                        closing.notify_one();
                    }
                }
            }
        }
    }
}

//! What every shard of one relay shares: the configuration, the session log,
//! the directory of members, the presence board, the routes for direct
//! messages, the metrics, the draining flag, and each
//! shard's wake-up handle and peer count. Shards reach each other only
//! through those wake-ups ([`ShardWake`]), never directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use deltamesh_proto::Id;

use crate::clock::WallClock;
use crate::config::RelayConfig;
use crate::direct::{DirectRoutes, Undeliverable};
use crate::directory::{Directory, Location};
use crate::log::DeltaLog;
use crate::metrics::RelayMetrics;
use crate::presence::PresenceBoard;
use crate::reassembly::ReassemblyBudget;
use crate::wake::{DirectMessage, ShardWake};

/// State every shard of a relay shares.
pub struct Shared {
    /// The relay's configuration.
    pub(crate) config: RelayConfig,
    /// Where deltas are sequenced and kept.
    pub(crate) log: Arc<dyn DeltaLog>,
    /// Who is in which session here.
    pub(crate) directory: Directory,
    /// Every session's presence states (PROTOCOL §8).
    pub(crate) presence: PresenceBoard,
    /// The way to peers on other relays for direct messages (PROTOCOL §9).
    pub(crate) direct: DirectRoutes,
    /// Counters exported on `/metrics`.
    pub(crate) metrics: RelayMetrics,
    /// Turns the cores' monotonic `now` into the Unix time deltas carry.
    pub(crate) clock: WallClock,
    /// Bytes every shard's connections hold in frames being reassembled,
    /// bounded by `config.max_reassembly_per_relay`.
    pub(crate) reassembly: Arc<ReassemblyBudget>,
    /// Set once the relay drains: it takes no new peers.
    draining: AtomicBool,
    /// One slot per shard, by shard index.
    shards: Vec<ShardSlot>,
}

/// What the rest of the relay knows of one shard.
struct ShardSlot {
    /// How to wake it with news, log verdicts and closes.
    wake: Arc<ShardWake>,
    /// Its peer connections now.
    peers: AtomicUsize,
}

impl Shared {
    /// The shared state of a relay with `config.shards` shards (at least
    /// one), telling wall-clock time by `clock`.
    pub fn new(
        config: RelayConfig,
        log: Arc<dyn DeltaLog>,
        metrics: RelayMetrics,
        clock: WallClock,
    ) -> Arc<Self> {
        let shards = (0..config.shards.max(1))
            .map(|_| ShardSlot {
                wake: Arc::new(ShardWake::default()),
                peers: AtomicUsize::new(0),
            })
            .collect();
        let reassembly = Arc::new(ReassemblyBudget::new(config.max_reassembly_per_relay));
        Arc::new(Shared {
            reassembly,
            config,
            log,
            directory: Directory::default(),
            presence: PresenceBoard::default(),
            direct: DirectRoutes::default(),
            metrics,
            clock,
            draining: AtomicBool::new(false),
            shards,
        })
    }

    /// How many shards the relay has.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Shard `index`'s wake-up handle.
    pub(crate) fn wake(&self, index: usize) -> Option<&Arc<ShardWake>> {
        self.shards.get(index).map(|slot| &slot.wake)
    }

    /// Peer connections on shard `index` now.
    pub(crate) fn shard_peers(&self, index: usize) -> usize {
        self.shards
            .get(index)
            .map_or(0, |slot| slot.peers.load(Ordering::Relaxed))
    }

    /// Counts a peer in (`true`) or out on shard `index`.
    pub(crate) fn count_peer(&self, index: usize, added: bool) {
        if let Some(slot) = self.shards.get(index) {
            if added {
                slot.peers.fetch_add(1, Ordering::Relaxed);
            } else {
                slot.peers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Peer connections on the relay now.
    pub(crate) fn peer_count(&self) -> usize {
        (0..self.shards.len()).map(|i| self.shard_peers(i)).sum()
    }

    /// Bytes held now in frames being reassembled, on every shard.
    pub fn reassembly_bytes(&self) -> usize {
        self.reassembly.used()
    }

    /// Whether the relay is draining (takes no new peers).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Marks the relay draining: it takes no new peers from now on.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Asks `shard` to close `peer`; the shard does it on its next turn.
    pub(crate) fn close_peer(&self, shard: usize, peer: Id, reason: &str) {
        if let Some(wake) = self.wake(shard) {
            wake.push_close(peer, reason);
        }
    }

    /// Routes a direct message to its recipient, on this relay or another.
    pub(crate) fn route_signal(&self, message: DirectMessage) -> Result<(), Undeliverable> {
        match self.directory.locate(&message.session, message.to) {
            Some(Location::Shard(shard)) => self
                .wake(shard)
                .ok_or(Undeliverable::UnknownPeer)?
                .push_signal(message),
            Some(Location::Remote) => self.direct.to_other_relay(message)?,
            None => return Err(Undeliverable::UnknownPeer),
        }
        self.metrics.signals.inc();
        Ok(())
    }

    /// Hands a direct message from another relay to its recipient if that
    /// is a connected peer of the message's session here; false otherwise
    /// (it left, or is not in that session: the message is dropped).
    pub(crate) fn deliver_signal_here(&self, message: DirectMessage) -> bool {
        match self.directory.locate(&message.session, message.to) {
            Some(Location::Shard(shard)) => match self.wake(shard) {
                Some(wake) => {
                    wake.push_signal(message);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }
}

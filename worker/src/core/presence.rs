//! Other peers' presence states (PROTOCOL §8), as this peer knows them.
//!
//! The presence channel is unordered, so [`PresenceTable`] keeps the
//! highest version seen per peer and ignores older ones. A peer's state
//! goes when it leaves; states that arrive after its `PeerLeft` (the
//! channels are not ordered with each other) are ignored, as peer ids are
//! never reused.

use std::collections::{HashMap, HashSet, VecDeque};

use deltamesh_proto::Id;

/// Peers whose presence is tracked at most (bounded memory).
pub(super) const MAX_PRESENCE_PEERS: usize = 65_536;
/// Departed peers remembered, to ignore their late states.
const DEPARTED_REMEMBERED: usize = 1024;

/// What to do with a relayed presence state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Newer than anything seen from that peer: pass it on.
    Newer,
    /// Older than (or as old as) what was seen, or from a peer that left.
    Stale,
    /// Too many peers tracked already.
    Full,
}

/// The highest presence version per peer, and whether its state is set.
#[derive(Debug, Default)]
pub(super) struct PresenceTable {
    peers: HashMap<Id, (u64, bool)>,
    departed: VecDeque<Id>,
    departed_set: HashSet<Id>,
}

impl PresenceTable {
    /// Judges (and, when newer, records) `peer`'s state `version`.
    pub(super) fn offer(&mut self, peer: Id, version: u64, set: bool) -> Verdict {
        if self.departed_set.contains(&peer) {
            return Verdict::Stale;
        }
        let full = self.peers.len() >= MAX_PRESENCE_PEERS;
        match self.peers.get_mut(&peer) {
            Some((seen, _)) if *seen >= version => Verdict::Stale,
            Some(entry) => {
                *entry = (version, set);
                Verdict::Newer
            }
            None if full => Verdict::Full,
            None => {
                self.peers.insert(peer, (version, set));
                Verdict::Newer
            }
        }
    }

    /// Forgets a peer that left; true when it had a state set (which the
    /// application should now drop).
    pub(super) fn remove(&mut self, peer: Id) -> bool {
        if self.departed_set.insert(peer) {
            self.departed.push_back(peer);
            if self.departed.len() > DEPARTED_REMEMBERED
                && let Some(oldest) = self.departed.pop_front()
            {
                self.departed_set.remove(&oldest);
            }
        }
        self.peers.remove(&peer).is_some_and(|(_, set)| set)
    }

    /// Forgets every peer not in `present`; returns those that had a state.
    pub(super) fn retain_present(&mut self, present: &HashSet<Id>) -> Vec<Id> {
        let gone: Vec<Id> = self
            .peers
            .keys()
            .filter(|peer| !present.contains(peer))
            .copied()
            .collect();
        gone.into_iter().filter(|&peer| self.remove(peer)).collect()
    }
}

//! The presence board (PROTOCOL §8): per session, the latest state of each
//! peer with its version, shared by every shard of the relay. A sending
//! peer's shard puts its states here (after the rate limit); in a fleet,
//! states of peers on other relays are put here too. The session's shards
//! are then woken ([`News::PRESENCE`](crate::wake::News::PRESENCE)) and each
//! local peer with `presence` in force is sent what it has not seen, so a
//! burst of changes costs one wake-up and only the latest state is ever
//! sent: nothing is queued per state.
//!
//! A fleet [`observe`](PresenceBoard::observe)s the board's local changes
//! (coalesced per peer, like a shard's wake-ups) and publishes them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use deltamesh_proto::Id;
use tokio::sync::Notify;

/// Peers of a session whose states were removed, remembered so that a late
/// copy from another relay cannot bring one back; the oldest is forgotten
/// past this many.
const MAX_GONE: usize = 1024;

/// One peer's latest state.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    /// Its version: increases with every state of that peer.
    pub(crate) version: u64,
    /// The state; empty when cleared.
    pub(crate) state: Arc<[u8]>,
    /// The peer is connected to this relay.
    pub(crate) local: bool,
}

#[derive(Default)]
struct SessionBoard {
    states: HashMap<Id, Stored>,
    gone: HashSet<Id>,
    gone_order: VecDeque<Id>,
}

/// Local changes waiting for the fleet to publish them: which peers'
/// states changed, coalesced.
#[derive(Default)]
pub(crate) struct PresenceChanges {
    dirty: Mutex<HashSet<(Arc<str>, Id)>>,
    notify: Notify,
}

impl PresenceChanges {
    fn mark(&self, session: &Arc<str>, peer: Id) {
        let first = {
            let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            let was_empty = dirty.is_empty();
            dirty.insert((Arc::clone(session), peer));
            was_empty
        };
        if first {
            self.notify.notify_one();
        }
    }

    /// Takes the peers whose local state changed (or was removed) since the
    /// last call.
    pub(crate) fn take(&self) -> HashSet<(Arc<str>, Id)> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves once a change was marked.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await
    }
}

/// Every session's presence states on this relay.
#[derive(Default)]
pub(crate) struct PresenceBoard {
    sessions: Mutex<HashMap<Arc<str>, SessionBoard>>,
    changes: OnceLock<Arc<PresenceChanges>>,
}

impl PresenceBoard {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, SessionBoard>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports later local changes; `None` if someone observes already.
    pub(crate) fn observe(&self) -> Option<Arc<PresenceChanges>> {
        let changes = Arc::new(PresenceChanges::default());
        self.changes.set(Arc::clone(&changes)).ok()?;
        Some(changes)
    }

    /// Records `peer`'s state `version` in `session`; true when it is newer
    /// than what the board holds (older and removed peers' are ignored:
    /// another relay's messages may come late).
    pub(crate) fn put(
        &self,
        session: &Arc<str>,
        peer: Id,
        version: u64,
        state: &[u8],
        local: bool,
    ) -> bool {
        let mut sessions = self.sessions();
        let board = sessions.entry(Arc::clone(session)).or_default();
        if board.gone.contains(&peer) {
            return false;
        }
        if board
            .states
            .get(&peer)
            .is_some_and(|s| s.version >= version)
        {
            return false;
        }
        board.states.insert(
            peer,
            Stored {
                version,
                state: state.into(),
                local,
            },
        );
        drop(sessions);
        if local && let Some(changes) = self.changes.get() {
            changes.mark(session, peer);
        }
        true
    }

    /// Drops `peer`'s state: it left `session`. Its later states are ignored.
    pub(crate) fn remove(&self, session: &Arc<str>, peer: Id) {
        let mut sessions = self.sessions();
        let Some(board) = sessions.get_mut(session) else {
            return;
        };
        let local = board.states.remove(&peer).is_some_and(|s| s.local);
        if board.gone.insert(peer) {
            board.gone_order.push_back(peer);
            if board.gone_order.len() > MAX_GONE
                && let Some(oldest) = board.gone_order.pop_front()
            {
                board.gone.remove(&oldest);
            }
        }
        drop(sessions);
        if local && let Some(changes) = self.changes.get() {
            changes.mark(session, peer);
        }
    }

    /// Forgets `session` entirely: no peer of it is on this relay any more.
    pub(crate) fn forget(&self, session: &str) {
        self.sessions().remove(session);
    }

    /// Fills `out` with every state of `session` (local ones only with
    /// `local_only`).
    pub(crate) fn states(&self, session: &str, local_only: bool, out: &mut Vec<(Id, Stored)>) {
        out.clear();
        if let Some(board) = self.sessions().get(session) {
            out.extend(
                board
                    .states
                    .iter()
                    .filter(|(_, s)| s.local || !local_only)
                    .map(|(id, s)| (*id, s.clone())),
            );
        }
    }

    /// `peer`'s state in `session`, if the board holds one.
    pub(crate) fn get(&self, session: &str, peer: Id) -> Option<Stored> {
        self.sessions().get(session)?.states.get(&peer).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_version_and_forgets_a_peer_that_left() {
        let board = PresenceBoard::default();
        let session: Arc<str> = "s".into();
        let peer = Id([1; 16]);
        assert!(board.put(&session, peer, 2, b"two", false));
        assert!(!board.put(&session, peer, 1, b"one", false), "older");
        assert!(!board.put(&session, peer, 2, b"again", false), "same");
        assert_eq!(&*board.get("s", peer).unwrap().state, b"two");
        board.remove(&session, peer);
        assert!(board.get("s", peer).is_none());
        assert!(!board.put(&session, peer, 3, b"late", false), "gone");
    }

    #[test]
    fn reports_local_changes_coalesced() {
        let board = PresenceBoard::default();
        let changes = board.observe().unwrap();
        let session: Arc<str> = "s".into();
        board.put(&session, Id([1; 16]), 1, b"a", true);
        board.put(&session, Id([1; 16]), 2, b"b", true);
        board.put(&session, Id([2; 16]), 1, b"remote", false);
        let taken = changes.take();
        assert_eq!(taken.len(), 1);
        assert!(taken.contains(&(Arc::clone(&session), Id([1; 16]))));
    }
}

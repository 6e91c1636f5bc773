//! Who is in which session on this relay: the source of `GET .../peers`, of
//! the peer list in `Welcome`, and of `PeerJoined`/`PeerLeft`. Shards are not
//! sent events; they are woken and compare each local peer's known members
//! with the current ones, so a burst of changes costs nothing per change and
//! nothing can be lost or reordered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use deltamesh_proto::Id;

use crate::wake::{News, ShardWake, Watchers};

/// How far a peer's connection has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Offer answered; ICE, DTLS and SCTP not up yet.
    Connecting,
    /// Channels open and welcomed.
    Connected,
}

/// One peer of a session on this relay.
#[derive(Debug, Clone)]
pub struct Member {
    /// The peer's id.
    pub peer_id: Id,
    /// The origin its deltas carry: its own id, or an earlier connection's
    /// it resumed.
    pub origin: Id,
    /// Its connection state.
    pub state: MemberState,
    /// When its offer was accepted.
    pub joined_at: SystemTime,
    /// Which shard of this relay hosts it.
    pub shard: usize,
    /// The relay-side ICE ufrag (the HTTP resource's ETag).
    pub ice_ufrag: String,
}

#[derive(Default)]
struct SessionMembers {
    members: HashMap<Id, Member>,
    watchers: Watchers,
}

/// Membership of every session with peers on this relay.
#[derive(Default)]
pub struct Directory {
    sessions: Mutex<HashMap<Arc<str>, SessionMembers>>,
}

impl Directory {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, SessionMembers>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connecting peer hosted by `wake`'s shard.
    pub fn insert(&self, session: &Arc<str>, member: Member, wake: &Arc<ShardWake>) {
        let mut sessions = self.sessions();
        let entry = sessions.entry(Arc::clone(session)).or_default();
        entry.watchers.add(wake);
        entry.members.insert(member.peer_id, member);
    }

    /// Marks a peer connected and wakes the session's shards.
    pub fn set_connected(&self, session: &Arc<str>, peer: Id) {
        let mut sessions = self.sessions();
        if let Some(entry) = sessions.get_mut(session)
            && let Some(member) = entry.members.get_mut(&peer)
        {
            member.state = MemberState::Connected;
            entry.watchers.wake_all(session, News::MEMBERS);
        }
    }

    /// Removes a peer and wakes the session's remaining shards.
    pub fn remove(&self, session: &Arc<str>, peer: Id, wake: &Arc<ShardWake>) {
        let mut sessions = self.sessions();
        let Some(entry) = sessions.get_mut(session) else {
            return;
        };
        if entry.members.remove(&peer).is_none() {
            return;
        }
        entry.watchers.remove(wake);
        entry.watchers.wake_all(session, News::MEMBERS);
        if entry.members.is_empty() {
            sessions.remove(session);
        }
    }

    /// Records that `peer` now sends as `origin` (it resumed an earlier connection).
    pub fn set_origin(&self, session: &str, peer: Id, origin: Id) {
        if let Some(member) = self
            .sessions()
            .get_mut(session)
            .and_then(|entry| entry.members.get_mut(&peer))
        {
            member.origin = origin;
        }
    }

    /// The member currently sending as `origin`.
    pub fn holder_of(&self, session: &str, origin: Id) -> Option<Member> {
        self.sessions()
            .get(session)?
            .members
            .values()
            .find(|m| m.origin == origin)
            .cloned()
    }

    /// One member of a session.
    pub fn member(&self, session: &str, peer: Id) -> Option<Member> {
        self.sessions().get(session)?.members.get(&peer).cloned()
    }

    /// Every member of a session.
    pub fn members(&self, session: &str) -> Vec<Member> {
        self.sessions()
            .get(session)
            .map(|entry| entry.members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Fills `out` with the connected members of a session.
    pub fn connected(&self, session: &str, out: &mut HashSet<Id>) {
        out.clear();
        if let Some(entry) = self.sessions().get(session) {
            out.extend(
                entry
                    .members
                    .values()
                    .filter(|m| m.state == MemberState::Connected)
                    .map(|m| m.peer_id),
            );
        }
    }
}

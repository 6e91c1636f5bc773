//! Who is in which session on this relay: the source of `GET .../peers`, of
//! the peer list in `Welcome`, and of `PeerJoined`/`PeerLeft`. Shards are not
//! sent events; they are woken and compare each local peer's known members
//! with the current ones, so a burst of changes costs nothing per change and
//! nothing can be lost or reordered.
//!
//! In a fleet, the directory also holds the session's peers on other relays
//! ([`Directory::set_remote`]) and reports its own changes to whoever
//! [`observe`](Directory::observe)s them, so they can be published.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use deltamesh_proto::Id;
use tokio::sync::mpsc;

use crate::error::RelayError;
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
    /// The relay-side ICE ufrag (the HTTP resource's ETag); empty until
    /// the offer is accepted.
    pub ice_ufrag: String,
    /// Its identity: the subject of its token.
    pub identity: Arc<str>,
}

/// Where a connected peer is, as [`Directory::locate`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Location {
    /// On this relay, on that shard.
    Shard(usize),
    /// On another relay of the fleet.
    Remote,
}

/// The admission limits [`Directory::admit`] enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Peers on the relay.
    pub max_peers: usize,
    /// Peers of one session on the relay.
    pub max_per_session: usize,
    /// Peers still connecting on the relay.
    pub max_pending: usize,
}

/// A change to a local member, as reported to the directory's observer.
#[derive(Debug, Clone)]
pub struct MemberChange {
    /// The member's session.
    pub session: Arc<str>,
    /// The member as it is now (as it was last, when removed).
    pub member: Member,
    /// It left.
    pub removed: bool,
}

#[derive(Default)]
struct SessionMembers {
    members: HashMap<Id, Member>,
    /// Connected peers of the session on other relays.
    remote: HashSet<Id>,
    watchers: Watchers,
}

#[derive(Default)]
struct Sessions {
    by_name: HashMap<Arc<str>, SessionMembers>,
    /// Members of every session.
    total: usize,
    /// Members still [`MemberState::Connecting`].
    pending: usize,
}

/// Membership of every session with peers on this relay.
#[derive(Default)]
pub(crate) struct Directory {
    sessions: Mutex<Sessions>,
    observer: OnceLock<mpsc::UnboundedSender<MemberChange>>,
}

impl Directory {
    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports every later change to a local member, in order; `None` if
    /// someone observes already.
    pub(crate) fn observe(&self) -> Option<mpsc::UnboundedReceiver<MemberChange>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.observer.set(sender).ok()?;
        Some(receiver)
    }

    /// Reports a change, called with the sessions lock held so reports keep
    /// the order of the changes.
    fn report(&self, session: &Arc<str>, member: &Member, removed: bool) {
        if let Some(observer) = self.observer.get() {
            let _ = observer.send(MemberChange {
                session: Arc::clone(session),
                member: member.clone(),
                removed,
            });
        }
    }

    /// Records whether `peer`, on another relay, is a connected member of
    /// `session`, and wakes the session's shards when that changes; true
    /// when it did. Ignored for a session without local members.
    pub(crate) fn set_remote(&self, session: &Arc<str>, peer: Id, connected: bool) -> bool {
        let mut sessions = self.sessions();
        let Some(entry) = sessions.by_name.get_mut(session) else {
            return false;
        };
        let changed = if connected {
            entry.remote.insert(peer)
        } else {
            entry.remote.remove(&peer)
        };
        if changed {
            entry.watchers.wake_all(session, News::MEMBERS);
        }
        changed
    }

    /// Wakes the shards watching `session` with `news`.
    pub(crate) fn wake(&self, session: &Arc<str>, news: News) {
        if let Some(entry) = self.sessions().by_name.get(session) {
            entry.watchers.wake_all(session, news);
        }
    }

    /// Whether `session` has members on this relay.
    pub(crate) fn hosts(&self, session: &str) -> bool {
        self.sessions().by_name.contains_key(session)
    }

    /// Where `peer` of `session` is connected: a shard of this relay, or
    /// another relay; `None` when it is not a connected peer of `session`.
    pub(crate) fn locate(&self, session: &str, peer: Id) -> Option<Location> {
        let sessions = self.sessions();
        let entry = sessions.by_name.get(session)?;
        match entry.members.get(&peer) {
            Some(member) if member.state == MemberState::Connected => {
                Some(Location::Shard(member.shard))
            }
            Some(_) => None,
            None => entry.remote.contains(&peer).then_some(Location::Remote),
        }
    }

    /// How many sessions have peers on this relay.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions().by_name.len()
    }

    /// Adds a connecting peer hosted by `wake`'s shard if the relay, the
    /// session and the relay's connecting peers are all under their limits;
    /// checked and counted under one lock, so concurrent offers cannot
    /// overshoot.
    pub(crate) fn admit(
        &self,
        session: &Arc<str>,
        member: Member,
        wake: &Arc<ShardWake>,
        limits: Limits,
    ) -> Result<(), RelayError> {
        let mut sessions = self.sessions();
        if sessions.total >= limits.max_peers {
            return Err(RelayError::Full);
        }
        if sessions.pending >= limits.max_pending {
            return Err(RelayError::TooManyPending);
        }
        let in_session = sessions.by_name.get(session).map_or(0, |s| s.members.len());
        if in_session >= limits.max_per_session {
            return Err(RelayError::SessionFull {
                limit: limits.max_per_session,
            });
        }
        sessions.total += 1;
        sessions.pending += 1;
        let entry = sessions.by_name.entry(Arc::clone(session)).or_default();
        entry.watchers.add(wake);
        self.report(session, &member, false);
        entry.members.insert(member.peer_id, member);
        Ok(())
    }

    /// Records the ICE ufrag of a peer whose offer was accepted.
    pub(crate) fn set_ice_ufrag(&self, session: &str, peer: Id, ice_ufrag: &str) {
        if let Some(member) = self
            .sessions()
            .by_name
            .get_mut(session)
            .and_then(|entry| entry.members.get_mut(&peer))
        {
            member.ice_ufrag = ice_ufrag.to_owned();
        }
    }

    /// Marks a peer connected and wakes the session's shards.
    pub(crate) fn set_connected(&self, session: &Arc<str>, peer: Id) {
        let mut sessions = self.sessions();
        let Sessions {
            by_name, pending, ..
        } = &mut *sessions;
        if let Some(entry) = by_name.get_mut(session)
            && let Some(member) = entry.members.get_mut(&peer)
            && member.state == MemberState::Connecting
        {
            member.state = MemberState::Connected;
            *pending -= 1;
            entry.watchers.wake_all(session, News::MEMBERS);
            self.report(session, member, false);
        }
    }

    /// Removes a peer and wakes the session's remaining shards.
    pub(crate) fn remove(&self, session: &Arc<str>, peer: Id, wake: &Arc<ShardWake>) {
        let mut sessions = self.sessions();
        let Some(entry) = sessions.by_name.get_mut(session) else {
            return;
        };
        let Some(member) = entry.members.remove(&peer) else {
            return;
        };
        self.report(session, &member, true);
        entry.watchers.remove(wake);
        entry.watchers.wake_all(session, News::MEMBERS);
        if entry.members.is_empty() {
            sessions.by_name.remove(session);
        }
        sessions.total -= 1;
        if member.state == MemberState::Connecting {
            sessions.pending -= 1;
        }
    }

    /// Records that `peer` now sends as `origin` (it resumed an earlier connection).
    pub(crate) fn set_origin(&self, session: &str, peer: Id, origin: Id) {
        if let Some(member) = self
            .sessions()
            .by_name
            .get_mut(session)
            .and_then(|entry| entry.members.get_mut(&peer))
        {
            member.origin = origin;
        }
    }

    /// The member currently sending as `origin`.
    pub(crate) fn holder_of(&self, session: &str, origin: Id) -> Option<Member> {
        self.sessions()
            .by_name
            .get(session)?
            .members
            .values()
            .find(|m| m.origin == origin)
            .cloned()
    }

    /// One member of a session.
    pub(crate) fn member(&self, session: &str, peer: Id) -> Option<Member> {
        self.sessions()
            .by_name
            .get(session)?
            .members
            .get(&peer)
            .cloned()
    }

    /// Every local member of every session, with its session.
    pub(crate) fn all_members(&self) -> Vec<(Arc<str>, Member)> {
        self.sessions()
            .by_name
            .iter()
            .flat_map(|(session, entry)| {
                entry
                    .members
                    .values()
                    .map(|member| (Arc::clone(session), member.clone()))
            })
            .collect()
    }

    /// Every member of a session.
    pub(crate) fn members(&self, session: &str) -> Vec<Member> {
        self.sessions()
            .by_name
            .get(session)
            .map(|entry| entry.members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Fills `out` with the connected members of a session.
    pub(crate) fn connected(&self, session: &str, out: &mut HashSet<Id>) {
        out.clear();
        if let Some(entry) = self.sessions().by_name.get(session) {
            out.extend(
                entry
                    .members
                    .values()
                    .filter(|m| m.state == MemberState::Connected)
                    .map(|m| m.peer_id),
            );
            out.extend(entry.remote.iter().copied());
        }
    }
}

//! The presence channel of one connection (PROTOCOL §8), both ways. In: a
//! state is checked (`presence` in force, `publish`, size) and forwarded to
//! the board at most `presence_rate` times a second; a state that comes
//! sooner waits as the one pending state, replaced by any newer one, until
//! the peer's presence deadline. Out: the states of the session's other
//! known peers this peer has not seen yet, straight from the board.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::presence::PresenceState;

use deltamesh_proto::channel::Channel;

use super::Peer;
use super::link::Write;
use crate::presence::Stored;
use crate::shared::Shared;
use crate::wake::News;

/// At most one presence `Error` per this long per connection.
const ERROR_EVERY: Duration = Duration::from_secs(1);

/// One connection's presence: what it sends and what it has seen.
pub(super) struct PresenceLink {
    /// `presence` is in force.
    pub(super) on: bool,
    /// The version of this peer's last forwarded state.
    version: u64,
    /// The latest state not forwarded yet (the rate allows the next one at
    /// `next_forward`).
    pending: Option<Vec<u8>>,
    /// When the next state may be forwarded.
    next_forward: Option<Instant>,
    /// When the last presence `Error` was sent.
    error_at: Option<Instant>,
    /// The version sent to this peer, per other peer.
    seen: HashMap<Id, u64>,
    /// A write found the channel full: send again on the next flush.
    retry: bool,
    /// Reused buffer of the board's states.
    scratch: Vec<(Id, Stored)>,
}

impl PresenceLink {
    /// Presence off, nothing sent or seen.
    pub(super) fn new() -> Self {
        PresenceLink {
            on: false,
            version: 0,
            pending: None,
            next_forward: None,
            error_at: None,
            seen: HashMap::new(),
            retry: false,
            scratch: Vec::new(),
        }
    }

    /// Forgets what was sent of `peer`: it left.
    pub(super) fn forget(&mut self, peer: Id) {
        self.seen.remove(&peer);
    }
}

impl Peer {
    /// When a pending presence state may be forwarded.
    pub(crate) fn presence_deadline(&self) -> Option<Instant> {
        self.presence.pending.as_ref()?;
        self.presence.next_forward
    }

    /// Turns `presence` on or off; true when it came into force now (the
    /// peer is then owed every other peer's current state: turning it on
    /// again while in force sends nothing new).
    pub(super) fn set_presence(&mut self, on: bool) -> bool {
        let was = std::mem::replace(&mut self.presence.on, on);
        if !on {
            self.presence.seen.clear();
        }
        on && !was
    }

    /// Handles one message on the presence channel: this peer's whole state.
    pub(super) fn on_presence(&mut self, state: &[u8], shared: &Shared, now: Instant) {
        if !self.presence.on {
            // PROTOCOL §11: on 3 without `presence`, dropped.
            return shared.metrics.presence_drop("off");
        }
        if !self.grants.publish {
            shared.metrics.presence_drop("not_permitted");
            return self.presence_error(
                pb::ErrorCode::NotPermitted,
                "a presence state needs the publish grant".into(),
                shared,
                now,
            );
        }
        let max = shared.config.max_presence_size;
        if state.len() > max {
            shared.metrics.presence_drop("too_large");
            return self.presence_error(
                pb::ErrorCode::TooLarge,
                format!(
                    "presence state of {} bytes is over max_presence_size {max}",
                    state.len()
                ),
                shared,
                now,
            );
        }
        if self.presence.next_forward.is_some_and(|at| now < at) {
            if self.presence.pending.replace(state.to_vec()).is_some() {
                shared.metrics.presence_skipped.inc();
            }
        } else {
            self.forward_presence(state, shared, now);
        }
    }

    /// Forwards the pending state if its time has come.
    pub(crate) fn presence_due(&mut self, shared: &Shared, now: Instant) {
        if self.presence_deadline().is_some_and(|at| at <= now)
            && let Some(state) = self.presence.pending.take()
        {
            self.forward_presence(&state, shared, now);
        }
    }

    fn forward_presence(&mut self, state: &[u8], shared: &Shared, now: Instant) {
        let rate = shared.config.presence_rate.max(1);
        self.presence.next_forward = Some(now + Duration::from_secs(1) / rate);
        self.presence.version += 1;
        shared.metrics.presence_in.inc();
        if shared
            .presence
            .put(&self.session, self.id, self.presence.version, state, true)
        {
            shared.directory.wake(&self.session, News::PRESENCE);
        }
    }

    /// Sends an `Error` about presence, at most one per [`ERROR_EVERY`].
    fn presence_error(
        &mut self,
        code: pb::ErrorCode,
        detail: String,
        shared: &Shared,
        now: Instant,
    ) {
        if self
            .presence
            .error_at
            .is_some_and(|at| now.duration_since(at) < ERROR_EVERY)
        {
            return;
        }
        self.presence.error_at = Some(now);
        self.send_command(
            Body::Error(pb::Error {
                code: code.into(),
                detail,
            }),
            shared,
        );
    }

    /// Writes the states of the session's other known peers that this peer
    /// has not seen yet (only with `presence` in force and `subscribe`).
    pub(crate) fn sync_presence(&mut self, shared: &Shared) {
        self.presence.retry = false;
        if !self.presence.on || !self.grants.subscribe || !self.welcomed || self.closing.is_some() {
            return;
        }
        let mut states = std::mem::take(&mut self.presence.scratch);
        shared.presence.states(&self.session, false, &mut states);
        for (peer, stored) in states.drain(..) {
            if peer == self.id || !self.known_members.contains(&peer) {
                continue;
            }
            let seen = self.presence.seen.get(&peer).copied();
            if seen.is_some_and(|v| v >= stored.version) {
                continue;
            }
            if seen.is_none() && stored.state.is_empty() {
                // A cleared state is no state to a peer that never saw one.
                self.presence.seen.insert(peer, stored.version);
                continue;
            }
            let message = PresenceState {
                peer_id: peer,
                version: stored.version,
                state: &stored.state,
            }
            .encode();
            match self.link.write(Channel::Presence, &message) {
                Write::Done => {
                    self.presence.seen.insert(peer, stored.version);
                    shared.metrics.presence_out.inc();
                }
                Write::Full => {
                    self.presence.retry = true;
                    break;
                }
                Write::Closed => break,
            }
        }
        states.clear();
        self.presence.scratch = states;
    }

    /// Whether a presence write waits for room.
    pub(super) fn presence_retry(&self) -> bool {
        self.presence.retry
    }
}

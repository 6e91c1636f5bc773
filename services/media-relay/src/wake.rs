//! How shared state tells a shard that one of its sessions changed: a set of
//! dirty session names plus a wake-up. Marking is cheap and coalesces, so a
//! burst of deltas costs one wake-up, and nothing is queued per delta. A log
//! that makes deltas durable asynchronously (JetStream) hands its verdicts
//! back the same way, as [`LogAck`]s, and so does another shard that must
//! close one of this shard's peers (a resumed connection replacing it) or
//! hand one of them a direct message (PROTOCOL §9).
//!
//! This is the only way into a shard besides its driver's commands, so the
//! shard core never holds a reference to another shard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deltamesh_proto::Id;
use tokio::sync::Notify;

/// What changed in a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct News {
    /// New deltas were appended.
    pub deltas: bool,
    /// Members joined, connected or left.
    pub members: bool,
    /// Presence states changed (PROTOCOL §8).
    pub presence: bool,
}

impl News {
    /// New deltas.
    pub const DELTAS: News = News {
        deltas: true,
        members: false,
        presence: false,
    };
    /// A membership change.
    pub const MEMBERS: News = News {
        deltas: false,
        members: true,
        presence: false,
    };
    /// A presence change.
    pub const PRESENCE: News = News {
        deltas: false,
        members: false,
        presence: true,
    };
}

/// The late verdict on a delta the log took as
/// [`Appended::Pending`](crate::log::Appended::Pending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAck {
    /// The connection that sent it.
    pub peer: Id,
    /// Its client_seq.
    pub client_seq: u64,
    /// Its session seq once durable, or why it could not be stored.
    pub outcome: Result<u64, String>,
}

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

/// What a shard was woken for since it last looked.
#[derive(Default)]
pub struct Woken {
    /// The sessions marked, with what changed.
    pub sessions: HashMap<Arc<str>, News>,
    /// The log's verdicts on pending deltas.
    pub acks: Vec<LogAck>,
    /// Peers to close, with why.
    pub closes: Vec<(Id, String)>,
    /// Direct messages for this shard's peers, in the order they came.
    pub signals: Vec<DirectMessage>,
}

impl Woken {
    fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.acks.is_empty()
            && self.closes.is_empty()
            && self.signals.is_empty()
    }
}

/// The wake-up handle of one shard.
#[derive(Default)]
pub struct ShardWake {
    woken: Mutex<Woken>,
    notify: Notify,
}

impl ShardWake {
    /// Records that `session` has `news` and wakes the shard.
    pub fn mark(&self, session: &Arc<str>, news: News) {
        self.add(|woken| {
            let entry = woken.sessions.entry(Arc::clone(session)).or_default();
            entry.deltas |= news.deltas;
            entry.members |= news.members;
            entry.presence |= news.presence;
        });
    }

    /// Hands the shard a verdict on a pending delta and wakes it.
    pub fn push_ack(&self, ack: LogAck) {
        self.add(|woken| woken.acks.push(ack));
    }

    /// Asks the shard to close `peer` with `reason` and wakes it.
    pub fn push_close(&self, peer: Id, reason: &str) {
        self.add(|woken| woken.closes.push((peer, reason.to_owned())));
    }

    /// Hands the shard a direct message for one of its peers and wakes it.
    pub fn push_signal(&self, message: DirectMessage) {
        self.add(|woken| woken.signals.push(message));
    }

    /// Applies `change` and wakes the shard if it had nothing waiting (a
    /// waiting shard is already woken: marks coalesce).
    fn add(&self, change: impl FnOnce(&mut Woken)) {
        let first = {
            let mut woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
            let was_empty = woken.is_empty();
            change(&mut woken);
            was_empty
        };
        if first {
            self.notify.notify_one();
        }
    }

    /// Takes everything marked and pushed since the last call.
    pub fn take(&self) -> Woken {
        std::mem::take(&mut *self.woken.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves once something was marked (immediately if a mark is pending).
    pub async fn notified(&self) {
        self.notify.notified().await
    }
}

/// The shards that watch one session, with how many of their peers are in it.
#[derive(Default)]
pub(crate) struct Watchers(Vec<(Arc<ShardWake>, usize)>);

impl Watchers {
    /// Counts one more local peer of the session on `shard`.
    pub(crate) fn add(&mut self, shard: &Arc<ShardWake>) {
        match self.0.iter_mut().find(|(s, _)| Arc::ptr_eq(s, shard)) {
            Some((_, count)) => *count += 1,
            None => self.0.push((Arc::clone(shard), 1)),
        }
    }

    /// Counts one less; forgets the shard at zero.
    pub(crate) fn remove(&mut self, shard: &Arc<ShardWake>) {
        if let Some(i) = self.0.iter().position(|(s, _)| Arc::ptr_eq(s, shard)) {
            self.0[i].1 -= 1;
            if self.0[i].1 == 0 {
                self.0.swap_remove(i);
            }
        }
    }

    /// No shard watches.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Wakes every watching shard with `news` of `session`.
    pub(crate) fn wake_all(&self, session: &Arc<str>, news: News) {
        for (shard, _) in &self.0 {
            shard.mark(session, news);
        }
    }
}

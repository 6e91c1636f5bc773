//! The session delta log: assigns each accepted delta its session `seq`
//! (gap-free, from 1), makes it durable, de-duplicates resends by origin and
//! client_seq, and wakes the shards whose peers must receive it.
//!
//! [`DeltaLog`] is the seam: [`MemoryLog`] serves one process; the
//! JetStream log ([`crate::fleet::JetStreamLog`]) serves a fleet of relays,
//! keeping a `MemoryLog` as its local replica. Both keep the bytes in the
//! relay's [`ChunkStore`], so fan-out reads the same way whichever log is in
//! use.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use deltamesh_proto::{DeltaFrame, Id, SecurityFields, SecurityFlags};

use crate::signing::DeltaSigner;
use crate::store::{ChunkRef, ChunkStore, StoreError, StoredDelta};
use crate::wake::{News, ShardWake, Watchers};

/// Where the verdict on a [`Appended::Pending`] delta goes: the sending
/// connection, on its shard.
#[derive(Clone)]
pub struct AckTo {
    /// The shard hosting the connection.
    pub shard: Arc<ShardWake>,
    /// The connection.
    pub peer: Id,
}

/// How many recent (client_seq → seq) pairs are kept per origin to answer a
/// resent frame with its original seq.
const DEDUP_WINDOW: usize = 4096;
/// How many origins (connections that sent or may resume) a session keeps;
/// beyond it the least recently active is forgotten, so reconnecting over
/// and over cannot grow the log. A forgotten origin can no longer be resumed
/// (its peer gets `ResumeRefused` and renumbers what it had in flight).
pub(crate) const MAX_ORIGINS_PER_SESSION: usize = 4096;

/// Who accepted a delta and when; the log adds the seq (and the signature,
/// once the seq is known).
#[derive(Debug, Clone, Copy)]
pub struct Acceptance<'a> {
    /// The peer the delta is from.
    pub origin: Id,
    /// The relay that validated it.
    pub validator: Id,
    /// Validation time, microseconds since the Unix epoch.
    pub validated_at_us: u64,
    /// The validator's key, when it signs what it accepts.
    pub signer: Option<&'a DeltaSigner>,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this new seq.
    Stored(u64),
    /// This origin already stored this client_seq under this seq.
    Duplicate(u64),
    /// Handed on to be made durable; the verdict reaches the sender's shard
    /// later as a [`LogAck`](crate::wake::LogAck).
    Pending,
}

/// Why the log could not append or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The chunk store refused the record.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client_seq is not above the origin's last stored one, and it is
    /// not among the recent ones stored: it was rejected, or is too old to
    /// say under which seq it was stored.
    #[error("client_seq {client_seq} is behind this origin's stored frames and not a known resend")]
    StaleResend {
        /// The resent client_seq.
        client_seq: u64,
    },
    /// The log cannot take deltas now.
    #[error("the delta log is unavailable: {0}")]
    Unavailable(String),
    /// A replica was handed a seq beyond its head.
    #[error("expected seq {expected}, got {got}")]
    Gap {
        /// The seq that must come next.
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// The requested seq is no longer retained.
    #[error("seq {requested} is no longer retained; the oldest kept is {oldest}")]
    Evicted {
        /// The seq asked for.
        requested: u64,
        /// The oldest seq still readable.
        oldest: u64,
    },
}

/// Sequencing, durability and change notification for session deltas.
pub trait DeltaLog: Send + Sync + 'static {
    /// Appends a validated frame from `by.origin` to `session`. A log that
    /// answers [`Appended::Pending`] sends its verdict to `ack_to` later.
    fn append(
        &self,
        session: &Arc<str>,
        by: Acceptance<'_>,
        frame: DeltaFrame<'_>,
        ack_to: &AckTo,
    ) -> Result<Appended, LogError>;

    /// The session's highest seq (0 when it has none).
    fn head(&self, session: &str) -> u64;

    /// Whether this log has every delta the session had when it was first
    /// watched here: until then, `head` and resume answers may be behind,
    /// so peers are not welcomed yet. Always true for a log that is the
    /// source of truth itself.
    fn is_current(&self, _session: &str) -> bool {
        true
    }

    /// A new secret that lets a later connection continue `origin`.
    fn issue_resume_token(&self, session: &Arc<str>, origin: Id) -> [u8; 16];

    /// If `resume_token` is `origin`'s, the highest client_seq stored from
    /// it (0 for none); `None` for an unknown origin or a wrong token.
    fn claim_origin(&self, session: &str, origin: Id, resume_token: &[u8]) -> Option<u64>;

    /// Appends to `out` up to `max` deltas of `session` from seq `from` on.
    fn read(
        &self,
        session: &str,
        from: u64,
        max: usize,
        out: &mut Vec<StoredDelta>,
    ) -> Result<(), LogError>;

    /// Wakes `shard` whenever `session` gets a delta (counted per local peer).
    fn watch(&self, session: &Arc<str>, shard: &Arc<ShardWake>);

    /// Undoes one [`watch`](DeltaLog::watch).
    fn unwatch(&self, session: &Arc<str>, shard: &Arc<ShardWake>);
}

/// The in-process log: a seq index per session over the shared chunk store.
pub struct MemoryLog {
    store: Arc<ChunkStore>,
    sessions: Mutex<HashMap<Arc<str>, SessionLog>>,
}

#[derive(Default)]
struct SessionLog {
    /// Seq of `index[0]`.
    first_seq: u64,
    index: VecDeque<ChunkRef>,
    origins: HashMap<Id, OriginWindow>,
    /// Counts origin activity, to find the least recently active.
    origin_clock: u64,
    watchers: Watchers,
}

#[derive(Default)]
struct OriginWindow {
    last_client_seq: u64,
    recent: VecDeque<(u64, u64)>,
    resume_token: Option<[u8; 16]>,
    /// `origin_clock` when it last appended or registered.
    active_at: u64,
}

impl SessionLog {
    fn head(&self) -> u64 {
        self.first_seq + self.index.len() as u64 - 1
    }

    /// `Some` when `client_seq` is not above `origin`'s last stored one: the
    /// seq it was stored under, or why that is unknown.
    fn resend(&mut self, origin: Id, client_seq: u64) -> Option<Result<u64, LogError>> {
        let window = self.origin(origin);
        if client_seq > window.last_client_seq {
            return None;
        }
        // `recent` is sorted: client_seqs are stored in increasing order.
        Some(
            match window.recent.binary_search_by_key(&client_seq, |&(c, _)| c) {
                Ok(i) => Ok(window.recent[i].1),
                Err(_) => Err(LogError::StaleResend { client_seq }),
            },
        )
    }

    /// `origin`'s window, made (forgetting the least recently active origin
    /// when the session is at [`MAX_ORIGINS_PER_SESSION`]) and marked active.
    fn origin(&mut self, origin: Id) -> &mut OriginWindow {
        if !self.origins.contains_key(&origin) && self.origins.len() >= MAX_ORIGINS_PER_SESSION {
            let oldest = self
                .origins
                .iter()
                .min_by_key(|(_, window)| window.active_at)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.origins.remove(&oldest);
            }
        }
        self.origin_clock += 1;
        let window = self.origins.entry(origin).or_default();
        window.active_at = self.origin_clock;
        window
    }
}

impl MemoryLog {
    /// A log over `store`.
    pub fn new(store: Arc<ChunkStore>) -> Self {
        MemoryLog {
            store,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// What a resend of `client_seq` from `origin` was stored as: `None`
    /// when it is new (above the origin's last stored client_seq).
    pub fn resend(
        &self,
        session: &str,
        origin: Id,
        client_seq: u64,
    ) -> Option<Result<u64, LogError>> {
        self.sessions().get_mut(session)?.resend(origin, client_seq)
    }

    /// The highest client_seq stored from `origin`, if the session knows it.
    pub fn last_client_seq(&self, session: &str, origin: Id) -> Option<u64> {
        let sessions = self.sessions();
        Some(sessions.get(session)?.origins.get(&origin)?.last_client_seq)
    }

    /// Frees `session`'s index, origins and resume state if no shard
    /// watches it; says whether it did. (Its records age out of the chunk
    /// store as it wraps.)
    pub fn forget(&self, session: &str) -> bool {
        let mut sessions = self.sessions();
        let unwatched = sessions
            .get(session)
            .is_some_and(|log| log.watchers.is_empty());
        if unwatched {
            sessions.remove(session);
        }
        unwatched
    }

    /// Wakes the shards watching `session`, as if it had news.
    pub fn wake_watchers(&self, session: &Arc<str>) {
        if let Some(log) = self.sessions().get(session) {
            log.watchers.wake_all(session, News::DELTAS);
        }
    }

    /// Stores a delta sequenced elsewhere (a replica's feed), under
    /// `fields.seq`, which must follow the session's head: an older seq is
    /// already here and ignored; a later one would leave a gap and is refused.
    pub fn insert(
        &self,
        session: &Arc<str>,
        fields: &SecurityFields,
        frame: DeltaFrame<'_>,
    ) -> Result<(), LogError> {
        let mut sessions = self.sessions();
        let log = sessions
            .entry(Arc::clone(session))
            .or_insert_with(new_session_log);
        if log.index.is_empty() && log.head() < fields.seq {
            // The first delta this replica sees: history before it is
            // beyond the source's retention or not wanted here.
            log.first_seq = fields.seq;
        }
        let head = log.head();
        if fields.seq <= head {
            return Ok(());
        }
        if fields.seq > head + 1 {
            return Err(LogError::Gap {
                expected: head + 1,
                got: fields.seq,
            });
        }
        self.store_at(session, log, fields, frame)
    }

    /// Appends a stamped delta at the session's head and wakes its watchers.
    fn store_at(
        &self,
        session: &Arc<str>,
        log: &mut SessionLog,
        fields: &SecurityFields,
        frame: DeltaFrame<'_>,
    ) -> Result<(), LogError> {
        let at = self.store.append(fields, frame)?;
        let client_seq = frame.client_seq();
        let window = log.origin(fields.origin);
        if client_seq > window.last_client_seq {
            window.last_client_seq = client_seq;
            window.recent.push_back((client_seq, fields.seq));
        } else {
            // Sequenced elsewhere out of client order (a retried publish):
            // `recent` stays sorted by client_seq.
            let at = window.recent.partition_point(|&(c, _)| c < client_seq);
            window.recent.insert(at, (client_seq, fields.seq));
        }
        if window.recent.len() > DEDUP_WINDOW {
            window.recent.pop_front();
        }
        log.index.push_back(at);
        // Forget deltas whose chunks the store has released, so the index
        // stays as long as what is retained.
        while let Some(&oldest) = log.index.front() {
            if self.store.is_retained(oldest) {
                break;
            }
            log.index.pop_front();
            log.first_seq += 1;
        }
        log.watchers.wake_all(session, News::DELTAS);
        Ok(())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, SessionLog>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The security fields of a delta accepted `by` a relay under `seq`, signed
/// when the relay signs.
pub(crate) fn stamp(seq: u64, by: Acceptance<'_>, frame: DeltaFrame<'_>) -> SecurityFields {
    let mut fields = SecurityFields {
        flags: SecurityFlags(
            SecurityFlags::VALID_DELTA | SecurityFlags::VALID_DATA | SecurityFlags::PROCESSED,
        ),
        seq,
        origin: by.origin,
        validator: by.validator,
        validated_at_us: by.validated_at_us,
        signature: [0; 64],
    };
    if let Some(signer) = by.signer {
        fields.flags.0 |= SecurityFlags::SIGNED;
        fields.signature = signer.sign(&fields, frame.as_bytes());
    }
    fields
}

/// Compares secrets without an early exit, so timing does not reveal how
/// much of a guess was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn new_session_log() -> SessionLog {
    SessionLog {
        first_seq: 1,
        ..SessionLog::default()
    }
}

impl DeltaLog for MemoryLog {
    fn append(
        &self,
        session: &Arc<str>,
        by: Acceptance<'_>,
        frame: DeltaFrame<'_>,
        _ack_to: &AckTo,
    ) -> Result<Appended, LogError> {
        let mut sessions = self.sessions();
        let log = sessions
            .entry(Arc::clone(session))
            .or_insert_with(new_session_log);
        if let Some(known) = log.resend(by.origin, frame.client_seq()) {
            return known.map(Appended::Duplicate);
        }
        let seq = log.head() + 1;
        let fields = stamp(seq, by, frame);
        self.store_at(session, log, &fields, frame)?;
        Ok(Appended::Stored(seq))
    }

    fn head(&self, session: &str) -> u64 {
        self.sessions().get(session).map_or(0, SessionLog::head)
    }

    fn issue_resume_token(&self, session: &Arc<str>, origin: Id) -> [u8; 16] {
        let token = Id::random().0;
        self.sessions()
            .entry(Arc::clone(session))
            .or_insert_with(new_session_log)
            .origin(origin)
            .resume_token = Some(token);
        token
    }

    fn claim_origin(&self, session: &str, origin: Id, resume_token: &[u8]) -> Option<u64> {
        let sessions = self.sessions();
        let window = sessions.get(session)?.origins.get(&origin)?;
        let known = window.resume_token?;
        constant_time_eq(&known, resume_token).then_some(window.last_client_seq)
    }

    fn read(
        &self,
        session: &str,
        from: u64,
        max: usize,
        out: &mut Vec<StoredDelta>,
    ) -> Result<(), LogError> {
        let sessions = self.sessions();
        let Some(log) = sessions.get(session) else {
            return Ok(());
        };
        let start = from.max(1);
        if start < log.first_seq {
            return Err(LogError::Evicted {
                requested: start,
                oldest: log.first_seq,
            });
        }
        let skip = usize::try_from(start - log.first_seq).unwrap_or(usize::MAX);
        for (i, at) in log.index.iter().skip(skip).take(max).enumerate() {
            match self.store.get(*at) {
                Some(delta) => out.push(delta),
                None => {
                    return Err(LogError::Evicted {
                        requested: start + i as u64,
                        oldest: start + i as u64 + 1,
                    });
                }
            }
        }
        Ok(())
    }

    fn watch(&self, session: &Arc<str>, shard: &Arc<ShardWake>) {
        self.sessions()
            .entry(Arc::clone(session))
            .or_insert_with(new_session_log)
            .watchers
            .add(shard);
    }

    fn unwatch(&self, session: &Arc<str>, shard: &Arc<ShardWake>) {
        if let Some(log) = self.sessions().get_mut(session) {
            log.watchers.remove(shard);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltamesh_proto::FrameHeader;

    fn frame(client_seq: u64) -> Vec<u8> {
        FrameHeader {
            client_seq,
            ..FrameHeader::default()
        }
        .encode(&client_seq.to_le_bytes())
        .unwrap()
    }

    fn ack_to() -> AckTo {
        AckTo {
            shard: Arc::new(ShardWake::default()),
            peer: Id::default(),
        }
    }

    fn by(origin: u8) -> Acceptance<'static> {
        Acceptance {
            signer: None,
            origin: Id([origin; 16]),
            validator: Id([0; 16]),
            validated_at_us: 0,
        }
    }

    #[test]
    fn a_session_keeps_a_bounded_number_of_origins_forgetting_the_least_active() {
        let log = MemoryLog::new(Arc::new(ChunkStore::new(1 << 20, 4)));
        let session: Arc<str> = "churn".into();
        let id = |n: usize| Id(uuid::Uuid::from_u128(n as u128).into_bytes());
        for n in 0..MAX_ORIGINS_PER_SESSION + 10 {
            log.issue_resume_token(&session, id(n));
            if n == 0 {
                // The first origin stays active: it sends.
                let f = frame(1);
                let by = Acceptance {
                    origin: id(0),
                    ..by(0)
                };
                log.append(&session, by, DeltaFrame::parse(&f).unwrap(), &ack_to())
                    .unwrap();
            }
        }
        // Touch the first origin again, late, so it is not the least active.
        let f = frame(2);
        let by0 = Acceptance {
            origin: id(0),
            ..by(0)
        };
        log.append(&session, by0, DeltaFrame::parse(&f).unwrap(), &ack_to())
            .unwrap();
        log.issue_resume_token(&session, id(999_999));
        let sessions = log.sessions();
        let origins = &sessions[&session].origins;
        assert_eq!(origins.len(), MAX_ORIGINS_PER_SESSION);
        assert!(origins.contains_key(&id(0)), "the active origin is kept");
        assert!(origins.contains_key(&id(999_999)));
        assert!(!origins.contains_key(&id(1)), "the least active went first");
    }

    #[test]
    fn evicted_deltas_leave_the_index_and_reading_them_is_a_clear_error() {
        let log = MemoryLog::new(Arc::new(ChunkStore::new(4096, 2)));
        let session: Arc<str> = "s".into();
        let payload = vec![7u8; 1500];
        for client_seq in 1..=20 {
            let f = FrameHeader {
                client_seq,
                ..FrameHeader::default()
            }
            .encode(&payload)
            .unwrap();
            log.append(&session, by(1), DeltaFrame::parse(&f).unwrap(), &ack_to())
                .unwrap();
        }
        assert_eq!(log.head("s"), 20, "seqs keep counting");
        let mut out = Vec::new();
        let error = log.read("s", 1, 10, &mut out).unwrap_err();
        assert!(
            matches!(error, LogError::Evicted { requested: 1, .. }),
            "{error}"
        );
        out.clear();
        log.read("s", 20, 10, &mut out).unwrap();
        assert_eq!(out.len(), 1, "the newest delta is still there");
        let sessions = log.sessions();
        assert!(
            sessions["s"].index.len() <= 4,
            "the index shrank with the store"
        );
    }

    #[test]
    fn seqs_are_gap_free_per_session_and_resends_keep_their_seq() {
        let log = MemoryLog::new(Arc::new(ChunkStore::new(1 << 16, 8)));
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let wake = Arc::new(ShardWake::default());
        log.watch(&a, &wake);
        for client_seq in 1..=3 {
            let f = frame(client_seq);
            let got = log
                .append(&a, by(1), DeltaFrame::parse(&f).unwrap(), &ack_to())
                .unwrap();
            assert_eq!(got, Appended::Stored(client_seq));
        }
        let f = frame(1);
        assert_eq!(
            log.append(&b, by(1), DeltaFrame::parse(&f).unwrap(), &ack_to())
                .unwrap(),
            Appended::Stored(1)
        );
        let f = frame(2);
        assert_eq!(
            log.append(&a, by(1), DeltaFrame::parse(&f).unwrap(), &ack_to())
                .unwrap(),
            Appended::Duplicate(2)
        );
        assert_eq!(log.head("a"), 3);
        let token = log.issue_resume_token(&a, Id([1; 16]));
        assert_eq!(log.claim_origin("a", Id([1; 16]), &token), Some(3));
        let mut wrong = token;
        wrong[0] ^= 1;
        assert_eq!(
            log.claim_origin("a", Id([1; 16]), &wrong),
            None,
            "wrong token"
        );
        assert_eq!(
            log.claim_origin("a", Id([2; 16]), &token),
            None,
            "unknown origin"
        );
        assert_eq!(wake.take().sessions.get("a"), Some(&News::DELTAS));
        let mut out = Vec::new();
        log.read("a", 2, 10, &mut out).unwrap();
        let seqs: Vec<u64> = out.iter().map(|d| d.view().seq()).collect();
        assert_eq!(seqs, vec![2, 3]);
    }
}

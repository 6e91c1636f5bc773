//! Reassembly of fragmented delta frames on one connection (PROTOCOL §6).
//!
//! Fragments of one frame come back to back on `send`, so a connection
//! collects at most one frame at a time. [`Reassembly`] is that frame's
//! state machine: idle, collecting (the bytes so far, where the next
//! fragment must start, when the last one came), or skipping the rest of a
//! frame that was rejected. It decides where a message stands
//! ([`Reassembly::position`]) and takes continuing fragments; judging a
//! frame's header, rates and grants is the peer's (`peer/inbound.rs`).
//!
//! Memory is bounded twice: per connection, and per relay by one
//! [`ReassemblyBudget`] every shard shares. A frame reserves its buffer's
//! capacity as it grows (doubling, so reassembly copies each byte O(1)
//! times), and gives it back when it completes, breaks, stalls, or the
//! connection goes (on drop).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deltamesh_proto::fragment::{FRAGMENT_HEADER_LEN, FragmentHeader};
use deltamesh_proto::pb;

/// The smallest buffer a frame being collected reserves.
const MIN_BUFFER: usize = 64 * 1024;
/// The step a buffer grows by when doubling does not fit the budget.
const FALLBACK_STEP: usize = 1 << 20;

/// Bytes held in frames being reassembled by every connection of a relay,
/// against one bound.
#[derive(Debug)]
pub(crate) struct ReassemblyBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ReassemblyBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        ReassemblyBudget {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes reserved now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit under the limit.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Where a message on `send` stands against the frame being reassembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// No frame is being collected: judge the message on its own.
    Fresh,
    /// A fragment at a non-zero offset (or one too short to tell) while a
    /// frame is collected: [`Reassembly::push`] it.
    Continues,
    /// Anything else while a frame is collected: the frame is broken
    /// ([`Reassembly::abandon`]), then the message is judged on its own.
    Interrupts,
    /// The rest of a rejected frame: dropped without an answer.
    Skipped,
}

/// A frame that broke a rule and was dropped; the rest of its fragments
/// are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broken {
    /// The frame's client_seq.
    pub(crate) client_seq: u64,
    /// What the `Reject` says.
    pub(crate) reason: pb::RejectReason,
    /// Why, in words.
    pub(crate) detail: String,
}

/// One connection's frame being reassembled.
pub(crate) struct Reassembly {
    budget: Arc<ReassemblyBudget>,
    per_connection: usize,
    state: State,
}

enum State {
    Idle,
    Collecting(Collecting),
    /// Skipping `FRG1` messages with this `total_len` and a non-zero offset
    /// until one reaches `total_len`.
    Skipping {
        total_len: u32,
    },
}

struct Collecting {
    frame: Vec<u8>,
    total_len: u32,
    client_seq: u64,
    last_at: Instant,
    /// Bytes taken from the budget: the buffer's capacity.
    reserved: usize,
}

impl Reassembly {
    /// Idle, holding at most `per_connection` bytes, and drawing them from
    /// the relay's `budget`.
    pub(crate) fn new(budget: Arc<ReassemblyBudget>, per_connection: usize) -> Self {
        Reassembly {
            budget,
            per_connection,
            state: State::Idle,
        }
    }

    /// Where `message` stands; ends a skip that it does not belong to.
    pub(crate) fn position(&mut self, message: &[u8]) -> Position {
        let fields = peek_fragment(message);
        match &self.state {
            State::Idle => Position::Fresh,
            State::Collecting(_) => match fields {
                Some(header) if header.offset == 0 => Position::Interrupts,
                Some(_) => Position::Continues,
                None if FragmentHeader::is_fragment(message) => Position::Continues,
                None => Position::Interrupts,
            },
            &State::Skipping { total_len } => match fields {
                Some(header) if header.total_len == total_len && header.offset != 0 => {
                    let end = u64::from(header.offset)
                        + message.len().saturating_sub(FRAGMENT_HEADER_LEN) as u64;
                    if end >= u64::from(total_len) {
                        self.state = State::Idle;
                    }
                    Position::Skipped
                }
                _ => {
                    self.state = State::Idle;
                    Position::Fresh
                }
            },
        }
    }

    /// Starts a frame of `total_len` bytes whose header was judged good,
    /// with the first fragment's `body`. The whole frame when `body` is all
    /// of it; an error (the detail of `UNAVAILABLE`) when its memory does
    /// not fit, and the rest of it is then skipped.
    pub(crate) fn begin(
        &mut self,
        total_len: u32,
        client_seq: u64,
        body: &[u8],
        now: Instant,
    ) -> Result<Option<Vec<u8>>, String> {
        self.release();
        if body.len() as u64 == u64::from(total_len) {
            self.state = State::Idle;
            return Ok(Some(body.to_vec()));
        }
        let mut collecting = Collecting {
            frame: Vec::new(),
            total_len,
            client_seq,
            last_at: now,
            reserved: 0,
        };
        if let Err(detail) = self.grow(&mut collecting, body.len()) {
            self.skip(total_len, body.len() as u64);
            return Err(detail);
        }
        collecting.frame.extend_from_slice(body);
        self.state = State::Collecting(collecting);
        Ok(None)
    }

    /// Takes a fragment that [`position`](Self::position) found
    /// [`Position::Continues`]: the whole frame once it is complete.
    pub(crate) fn push(
        &mut self,
        message: &[u8],
        max_frame_size: usize,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, Broken> {
        let State::Collecting(mut collecting) = std::mem::replace(&mut self.state, State::Idle)
        else {
            unreachable!("push is only called while a frame is collected");
        };
        let broken = |collecting: &Collecting, reason, detail: String| Broken {
            client_seq: collecting.client_seq,
            reason,
            detail,
        };
        let checked = if message.len() > max_frame_size {
            Err(broken(
                &collecting,
                pb::RejectReason::TooLarge,
                format!(
                    "a fragment of {} bytes; messages are at most {max_frame_size}",
                    message.len()
                ),
            ))
        } else {
            match FragmentHeader::parse(message) {
                Err(error) => Err(broken(
                    &collecting,
                    pb::RejectReason::Fragment,
                    error.to_string(),
                )),
                Ok((header, _)) if header.total_len != collecting.total_len => Err(broken(
                    &collecting,
                    pb::RejectReason::Fragment,
                    format!(
                        "total_len changed from {} to {}",
                        collecting.total_len, header.total_len
                    ),
                )),
                Ok((header, _)) if header.offset as usize != collecting.frame.len() => Err(broken(
                    &collecting,
                    pb::RejectReason::Fragment,
                    format!(
                        "fragment at offset {}, expected {}",
                        header.offset,
                        collecting.frame.len()
                    ),
                )),
                Ok((_, body)) => {
                    let needed = collecting.frame.len() + body.len();
                    self.grow(&mut collecting, needed)
                        .map(|()| body)
                        .map_err(|detail| {
                            broken(&collecting, pb::RejectReason::Unavailable, detail)
                        })
                }
            }
        };
        match checked {
            Ok(body) => {
                collecting.frame.extend_from_slice(body);
                collecting.last_at = now;
                if collecting.frame.len() as u64 == u64::from(collecting.total_len) {
                    self.budget.release(collecting.reserved);
                    return Ok(Some(collecting.frame));
                }
                self.state = State::Collecting(collecting);
                Ok(None)
            }
            Err(broken) => {
                self.budget.release(collecting.reserved);
                let end = peek_fragment(message).map_or(0, |h| {
                    u64::from(h.offset) + message.len().saturating_sub(FRAGMENT_HEADER_LEN) as u64
                });
                self.skip(collecting.total_len, end);
                Err(broken)
            }
        }
    }

    /// Drops the frame being collected, if any, and skips the rest of its
    /// fragments; its client_seq.
    pub(crate) fn abandon(&mut self) -> Option<u64> {
        let State::Collecting(collecting) = std::mem::replace(&mut self.state, State::Idle) else {
            return None;
        };
        self.budget.release(collecting.reserved);
        self.skip(collecting.total_len, collecting.frame.len() as u64);
        Some(collecting.client_seq)
    }

    /// Skips the rest of a rejected frame of `total_len` bytes, of which
    /// `end` have been seen.
    pub(crate) fn skip(&mut self, total_len: u32, end: u64) {
        self.release();
        self.state = if end < u64::from(total_len) {
            State::Skipping { total_len }
        } else {
            State::Idle
        };
    }

    /// Drops the frame being collected if no fragment came for `timeout`;
    /// its client_seq.
    pub(crate) fn stalled(&mut self, now: Instant, timeout: Duration) -> Option<u64> {
        match &self.state {
            State::Collecting(c) if now.duration_since(c.last_at) >= timeout => self.abandon(),
            _ => None,
        }
    }

    /// Grows the buffer so it holds `needed` bytes, within both bounds.
    fn grow(&self, collecting: &mut Collecting, needed: usize) -> Result<(), String> {
        if needed <= collecting.reserved {
            return Ok(());
        }
        let total = collecting.total_len as usize;
        let doubled = (collecting.reserved * 2)
            .max(MIN_BUFFER)
            .max(needed)
            .min(total);
        let stepped = needed.next_multiple_of(FALLBACK_STEP).min(total);
        for target in [doubled, stepped, needed] {
            if target <= self.per_connection && self.budget.reserve(target - collecting.reserved) {
                collecting
                    .frame
                    .reserve_exact(target - collecting.frame.len());
                collecting.reserved = target;
                return Ok(());
            }
        }
        Err(if needed > self.per_connection {
            format!(
                "reassembly needs {needed} bytes, over this connection's {} (send it again later)",
                self.per_connection
            )
        } else {
            "the relay's reassembly memory is full; send it again later".into()
        })
    }

    /// Gives back what a frame being collected holds.
    fn release(&mut self) {
        if let State::Collecting(collecting) = std::mem::replace(&mut self.state, State::Idle) {
            self.budget.release(collecting.reserved);
        }
    }
}

impl Drop for Reassembly {
    fn drop(&mut self) {
        self.release();
    }
}

/// A fragment's `total_len` and `offset`, when `message` is an `FRG1`
/// long enough to hold them (well-formed or not).
pub(crate) fn peek_fragment(message: &[u8]) -> Option<FragmentHeader> {
    if !FragmentHeader::is_fragment(message) || message.len() < 12 {
        return None;
    }
    let u32_at = |at: usize| {
        let mut field = [0; 4];
        field.copy_from_slice(&message[at..at + 4]);
        u32::from_le_bytes(field)
    };
    Some(FragmentHeader {
        total_len: u32_at(4),
        offset: u32_at(8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltamesh_proto::fragment::fragments;

    fn reassembly(limit: usize) -> (Arc<ReassemblyBudget>, Reassembly) {
        let budget = Arc::new(ReassemblyBudget::new(limit));
        (Arc::clone(&budget), Reassembly::new(budget, limit))
    }

    #[test]
    fn fragments_in_order_make_the_frame_and_give_their_memory_back() {
        let (budget, mut r) = reassembly(1 << 20);
        let frame: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let now = Instant::now();
        let mut parts = fragments(&frame, 56, 16 * 1024);
        let first = parts.next().unwrap();
        assert_eq!(r.position(&first), Position::Fresh);
        assert_eq!(r.begin(200_000, 1, &first[16..], now), Ok(None));
        assert!(budget.used() >= 16 * 1024);
        let mut whole = None;
        for part in parts {
            assert_eq!(r.position(&part), Position::Continues);
            whole = r.push(&part, 64 * 1024, now).unwrap();
        }
        assert_eq!(whole.as_deref(), Some(&frame[..]));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn memory_over_a_bound_is_refused_and_dropping_frees_it() {
        let (budget, mut r) = reassembly(100_000);
        let now = Instant::now();
        let first = fragments(&[0; 200_000], 1024, 1024).next().unwrap();
        assert_eq!(r.begin(200_000, 1, &first[16..], now), Ok(None));
        let held = budget.used();
        assert!(held > 0);
        let mut other = Reassembly::new(Arc::clone(&budget), 1 << 20);
        assert!(other.begin(200_000, 1, &[0; 60_000], now).is_err());
        drop(r);
        assert_eq!(budget.used(), 0);
    }
}

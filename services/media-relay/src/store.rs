//! The append-only chunk store: the one owner of delta bytes in a relay.
//!
//! A delta is written once, as `security header + frame`, into a large chunk;
//! everything else passes a [`ChunkRef`] around and reads through a
//! short-lived [`Delta`] view. Writers reserve exactly the bytes they need by
//! an atomic add on the chunk's fill offset (no lock, records laid down in
//! reservation order), copy once, then publish the record with a release
//! store of its length; readers load it with acquire before touching bytes.
//! The security header's flags byte is the only byte that changes after that,
//! and only through atomic ORs (one-way flags, never cleared), so readers
//! never see a torn record.
//!
//! Record layout inside a chunk, 8-byte aligned:
//! `[commit: u32][pad: u32][security header: 120][frame: len]`.
//!
//! This module holds the crate's only `unsafe` code; each block says why it
//! is sound, and the tests exercise it from several threads.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use deltamesh_proto::security::{FLAGS_OFFSET, SECURITY_HEADER_LEN};
use deltamesh_proto::{DeltaFrame, Id, SecurityFields, SecurityFlags};

/// Bytes before the security header in each record: the commit word and padding.
const RECORD_PREFIX: usize = 8;
const ALIGN: usize = 8;

/// Where one committed delta lives: chunk, offset of its record, frame length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    chunk: u64,
    offset: u32,
    frame_len: u32,
}

/// Why a delta could not be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The record would not fit in an empty chunk.
    #[error("a {len}-byte record exceeds the {chunk_size}-byte chunk size")]
    RecordTooLarge {
        /// The record length.
        len: usize,
        /// The configured chunk size.
        chunk_size: usize,
    },
}

/// One fixed-size, 8-byte-aligned buffer that records are appended into.
struct Chunk {
    id: u64,
    base: NonNull<u8>,
    capacity: usize,
    /// Bytes handed out so far; may exceed `capacity` once the chunk is full.
    reserved: AtomicUsize,
}

// SAFETY: the buffer is only written through disjoint ranges handed out by
// the atomic `reserved` counter, and each range is read only after its commit
// word was published with release ordering (see `ChunkStore::append`/`get`).
unsafe impl Send for Chunk {}
// SAFETY: as above; shared access never creates overlapping `&mut` regions.
unsafe impl Sync for Chunk {}

impl Chunk {
    fn new(id: u64, capacity: usize) -> Arc<Chunk> {
        let layout = Layout::from_size_align(capacity, ALIGN).expect("chunk size is validated");
        // SAFETY: `layout` has a non-zero size (validated by `ChunkStore::new`).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(base) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Arc::new(Chunk {
            id,
            base,
            capacity,
            reserved: AtomicUsize::new(0),
        })
    }

    /// Reserves `len` bytes (already aligned); `None` when the chunk is full.
    fn reserve(&self, len: usize) -> Option<usize> {
        let offset = self.reserved.fetch_add(len, Ordering::Relaxed);
        (offset + len <= self.capacity).then_some(offset)
    }

    fn commit_word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset.is_multiple_of(ALIGN) && offset + RECORD_PREFIX <= self.capacity);
        // SAFETY: `offset` is 8-aligned inside the allocation (records are
        // reserved in multiples of 8 from an 8-aligned base), the word is only
        // ever accessed atomically, and it lives as long as `self`.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }

    fn flags_byte(&self, offset: usize) -> &AtomicU8 {
        // SAFETY: the flags byte lies inside a committed record of this
        // allocation and, after commit, is only ever accessed atomically.
        unsafe {
            AtomicU8::from_ptr(
                self.base
                    .as_ptr()
                    .add(offset + RECORD_PREFIX + FLAGS_OFFSET),
            )
        }
    }

    /// The bytes `[start, start + len)` of a committed record that never
    /// change after commit (everything but the flags byte).
    fn immutable(&self, start: usize, len: usize) -> &[u8] {
        debug_assert!(start + len <= self.capacity);
        // SAFETY: the caller only asks for ranges inside a record whose commit
        // word it loaded with acquire ordering, so the writer's copy happened
        // before; those bytes are never written again, and the range excludes
        // the atomically updated flags byte.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len) }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let layout =
            Layout::from_size_align(self.capacity, ALIGN).expect("chunk size is validated");
        // SAFETY: `base` came from `alloc_zeroed` with this same layout, and
        // no reference into the chunk outlives the last `Arc<Chunk>`.
        unsafe { alloc::dealloc(self.base.as_ptr(), layout) }
    }
}

/// Append-only store of relayed deltas, shared by every shard of a relay.
pub struct ChunkStore {
    chunk_size: usize,
    max_chunks: usize,
    /// Live chunks, oldest first; the last one is being filled.
    chunks: RwLock<VecDeque<Arc<Chunk>>>,
    /// Serialises chunk rotation (rare) so only one writer allocates.
    rotate: Mutex<()>,
}

impl ChunkStore {
    /// A store of `chunk_size`-byte chunks keeping at most `max_chunks` of
    /// them; older chunks are released once every reader has let go.
    pub fn new(chunk_size: usize, max_chunks: usize) -> Self {
        let chunk_size = chunk_size.max(4096).next_multiple_of(ALIGN);
        let max_chunks = max_chunks.max(2);
        ChunkStore {
            chunk_size,
            max_chunks,
            chunks: RwLock::new(VecDeque::from([Chunk::new(0, chunk_size)])),
            rotate: Mutex::new(()),
        }
    }

    /// Bytes of chunks the store keeps at most (older chunks go first).
    fn retained_bytes(&self) -> usize {
        self.chunk_size * self.max_chunks
    }

    /// Writes `fields` and `frame` as one record and commits it. A record
    /// larger than a chunk gets a chunk of its own (a large delta from
    /// fragments, PROTOCOL §6), so every delta is stored once, whole.
    pub fn append(
        &self,
        fields: &SecurityFields,
        frame: DeltaFrame<'_>,
    ) -> Result<ChunkRef, StoreError> {
        let frame = frame.as_bytes();
        let record_len =
            (RECORD_PREFIX + SECURITY_HEADER_LEN + frame.len()).next_multiple_of(ALIGN);
        if record_len > self.retained_bytes() || u32::try_from(frame.len()).is_err() {
            return Err(StoreError::RecordTooLarge {
                len: record_len,
                chunk_size: self.retained_bytes(),
            });
        }
        let (chunk, offset) = if record_len > self.chunk_size {
            self.reserve_own_chunk(record_len)
        } else {
            self.reserve(record_len)
        };
        let mut header = [0u8; SECURITY_HEADER_LEN];
        fields.write_to(&mut header);
        // SAFETY: `reserve` handed this writer the range [offset, offset +
        // record_len) exclusively (atomic add), it lies inside the
        // allocation, and no reader touches it before the commit below.
        unsafe {
            let record = chunk.base.as_ptr().add(offset + RECORD_PREFIX);
            std::ptr::copy_nonoverlapping(header.as_ptr(), record, SECURITY_HEADER_LEN);
            std::ptr::copy_nonoverlapping(
                frame.as_ptr(),
                record.add(SECURITY_HEADER_LEN),
                frame.len(),
            );
        }
        let frame_len = u32::try_from(frame.len()).expect("bounded by chunk size");
        chunk
            .commit_word(offset)
            .store(frame_len + 1, Ordering::Release);
        Ok(ChunkRef {
            chunk: chunk.id,
            offset: u32::try_from(offset).expect("bounded by chunk size"),
            frame_len,
        })
    }

    /// The committed delta at `at`; `None` once its chunk has been released.
    pub fn get(&self, at: ChunkRef) -> Option<StoredDelta> {
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let first = chunks.front()?.id;
        let chunk = chunks.get(usize::try_from(at.chunk.checked_sub(first)?).ok()?)?;
        // A reference must name a whole, aligned record inside the chunk
        // (checked in release builds too: the unsafe reads below rely on it).
        let offset = at.offset as usize;
        let end = offset + RECORD_PREFIX + SECURITY_HEADER_LEN + at.frame_len as usize;
        if !offset.is_multiple_of(ALIGN) || end > chunk.capacity {
            return None;
        }
        let committed = chunk
            .commit_word(at.offset as usize)
            .load(Ordering::Acquire);
        (committed == at.frame_len + 1).then(|| StoredDelta {
            chunk: Arc::clone(chunk),
            at,
        })
    }

    /// Whether the chunk holding `at` is still retained.
    pub fn is_retained(&self, at: ChunkRef) -> bool {
        let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        chunks.front().is_some_and(|oldest| at.chunk >= oldest.id)
    }

    /// Sets `bits` on the record's flags (one-way: bits are never cleared).
    pub fn mark(&self, delta: &StoredDelta, bits: u8) {
        delta
            .chunk
            .flags_byte(delta.at.offset as usize)
            .fetch_or(bits, Ordering::AcqRel);
    }

    fn reserve(&self, record_len: usize) -> (Arc<Chunk>, usize) {
        loop {
            let current = {
                let chunks = self.chunks.read().unwrap_or_else(|e| e.into_inner());
                Arc::clone(chunks.back().expect("the store always has a chunk"))
            };
            if let Some(offset) = current.reserve(record_len) {
                return (current, offset);
            }
            let _rotating = self.rotate.lock().unwrap_or_else(|e| e.into_inner());
            let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
            let newest = chunks.back().expect("the store always has a chunk");
            if newest.id == current.id {
                chunks.push_back(Chunk::new(current.id + 1, self.chunk_size));
                self.evict(&mut chunks);
            }
        }
    }

    /// A chunk of exactly `record_len` bytes for one large record, made
    /// the newest (the next small record starts a fresh chunk after it).
    fn reserve_own_chunk(&self, record_len: usize) -> (Arc<Chunk>, usize) {
        let _rotating = self.rotate.lock().unwrap_or_else(|e| e.into_inner());
        let mut chunks = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        let id = chunks.back().expect("the store always has a chunk").id + 1;
        let chunk = Chunk::new(id, record_len);
        let offset = chunk
            .reserve(record_len)
            .expect("a fresh chunk of its size");
        chunks.push_back(Arc::clone(&chunk));
        self.evict(&mut chunks);
        (chunk, offset)
    }

    /// Releases the oldest chunks while more than `chunk_size *
    /// max_chunks` bytes are kept (at least `max_chunks` small chunks, or
    /// fewer when large ones are among them); the newest always stays.
    fn evict(&self, chunks: &mut VecDeque<Arc<Chunk>>) {
        let mut kept: usize = chunks.iter().map(|c| c.capacity).sum();
        while chunks.len() > 1 && kept > self.retained_bytes() {
            if let Some(oldest) = chunks.pop_front() {
                kept -= oldest.capacity;
            }
        }
    }
}

/// A committed delta, keeping its chunk alive while it is read.
pub struct StoredDelta {
    chunk: Arc<Chunk>,
    at: ChunkRef,
}

impl StoredDelta {
    /// A view over the record.
    pub fn view(&self) -> Delta<'_> {
        let start = self.at.offset as usize + RECORD_PREFIX;
        Delta {
            flags: self.chunk.flags_byte(self.at.offset as usize),
            head: self.chunk.immutable(start, FLAGS_OFFSET),
            rest: self.chunk.immutable(
                start + FLAGS_OFFSET + 1,
                SECURITY_HEADER_LEN - FLAGS_OFFSET - 1 + self.at.frame_len as usize,
            ),
        }
    }
}

/// A throw-away view over one stored delta that reads fields on demand.
pub struct Delta<'a> {
    flags: &'a AtomicU8,
    /// Security header bytes before the flags byte.
    head: &'a [u8],
    /// Security header bytes after the flags byte, then the frame.
    rest: &'a [u8],
}

impl<'a> Delta<'a> {
    /// The current flags.
    pub fn flags(&self) -> SecurityFlags {
        SecurityFlags(self.flags.load(Ordering::Acquire))
    }

    /// The session sequence number.
    pub fn seq(&self) -> u64 {
        u64::from_le_bytes(self.header_array(8))
    }

    /// The peer that sent the delta.
    pub fn origin(&self) -> Id {
        Id(self.header_array(16))
    }

    /// The original delta frame (validated before it was stored).
    pub fn frame_bytes(&self) -> &'a [u8] {
        &self.rest[SECURITY_HEADER_LEN - FLAGS_OFFSET - 1..]
    }

    /// Appends the relayed message (security header with current flags, then
    /// the frame) to `out`.
    pub fn write_relayed(&self, out: &mut Vec<u8>) {
        out.reserve(FLAGS_OFFSET + 1 + self.rest.len());
        out.extend_from_slice(self.head);
        out.push(self.flags().0);
        out.extend_from_slice(self.rest);
    }

    /// Length of the relayed message: security header and frame.
    pub fn relayed_len(&self) -> usize {
        FLAGS_OFFSET + 1 + self.rest.len()
    }

    /// Appends bytes `range` of the relayed message to `out`, with `flags`
    /// as its flags byte (read once, so every fragment of one relayed frame
    /// carries the same flags).
    pub fn write_relayed_range(&self, flags: u8, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
        let flags = [flags];
        let mut start = 0;
        for part in [self.head, &flags[..], self.rest] {
            let end = start + part.len();
            let from = range.start.clamp(start, end);
            let to = range.end.clamp(start, end);
            out.extend_from_slice(&part[from - start..to - start]);
            start = end;
        }
    }

    /// Reads `N` bytes at `offset` of the security header (not the flags byte).
    fn header_array<const N: usize>(&self, offset: usize) -> [u8; N] {
        let start = offset - FLAGS_OFFSET - 1;
        let mut out = [0; N];
        out.copy_from_slice(&self.rest[start..start + N]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltamesh_proto::{FrameHeader, RelayedFrame};

    fn frame(client_seq: u64, payload: &[u8]) -> Vec<u8> {
        FrameHeader {
            client_seq,
            ..FrameHeader::default()
        }
        .encode(payload)
        .unwrap()
    }

    fn fields(seq: u64) -> SecurityFields {
        SecurityFields {
            flags: SecurityFlags(SecurityFlags::VALID_DELTA),
            seq,
            origin: Id([seq as u8; 16]),
            validator: Id([7; 16]),
            validated_at_us: 1,
            signature: [0; 64],
        }
    }

    #[test]
    fn a_stored_delta_reads_back_as_a_valid_relayed_frame() {
        let store = ChunkStore::new(64 * 1024, 4);
        let bytes = frame(1, b"payload");
        let at = store
            .append(&fields(3), DeltaFrame::parse(&bytes).unwrap())
            .unwrap();
        let stored = store.get(at).unwrap();
        store.mark(&stored, SecurityFlags::PROCESSED);
        let view = stored.view();
        assert_eq!(view.seq(), 3);
        assert_eq!(view.origin(), Id([3; 16]));
        assert_eq!(view.frame_bytes(), &bytes[..]);
        let mut out = Vec::new();
        view.write_relayed(&mut out);
        let relayed = RelayedFrame::parse(&out).unwrap();
        assert_eq!(relayed.seq(), 3);
        assert!(
            relayed
                .flags()
                .contains(SecurityFlags::VALID_DELTA | SecurityFlags::PROCESSED)
        );
        assert_eq!(relayed.frame().payload(), b"payload");
    }

    #[test]
    fn concurrent_writers_never_overlap_and_old_chunks_are_released() {
        let store = Arc::new(ChunkStore::new(8 * 1024, 1000));
        let writers: Vec<_> = (0..4u8)
            .map(|w| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    (0..500u64)
                        .map(|i| {
                            let payload = vec![w; (i % 300) as usize];
                            let bytes = frame(i + 1, &payload);
                            let at = store
                                .append(&fields(i), DeltaFrame::parse(&bytes).unwrap())
                                .unwrap();
                            (at, bytes)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for writer in writers {
            for (at, bytes) in writer.join().unwrap() {
                let stored = store.get(at).expect("committed and retained");
                assert_eq!(stored.view().frame_bytes(), &bytes[..]);
            }
        }
        let small = ChunkStore::new(4096, 2);
        let bytes = frame(1, &[1; 1000]);
        let first = small
            .append(&fields(1), DeltaFrame::parse(&bytes).unwrap())
            .unwrap();
        for seq in 2..20 {
            small
                .append(&fields(seq), DeltaFrame::parse(&bytes).unwrap())
                .unwrap();
        }
        assert!(small.get(first).is_none(), "evicted chunk is gone");
    }

    #[test]
    fn a_record_larger_than_a_chunk_gets_its_own_and_the_store_stays_bounded() {
        let store = ChunkStore::new(4096, 4);
        let small = frame(1, &[1; 100]);
        let before = store
            .append(&fields(1), DeltaFrame::parse(&small).unwrap())
            .unwrap();
        let large = frame(2, &[2; 5000]);
        let at = store
            .append(&fields(2), DeltaFrame::parse(&large).unwrap())
            .unwrap();
        let after = store
            .append(&fields(3), DeltaFrame::parse(&small).unwrap())
            .unwrap();
        let stored = store.get(at).expect("stored whole");
        assert_eq!(stored.view().frame_bytes(), &large[..]);
        let mut relayed = Vec::new();
        stored.view().write_relayed(&mut relayed);
        assert_eq!(stored.view().relayed_len(), relayed.len());
        let mut pieces = Vec::new();
        for range in [0..3, 3..121, 121..relayed.len()] {
            stored
                .view()
                .write_relayed_range(relayed[FLAGS_OFFSET], range, &mut pieces);
        }
        assert_eq!(pieces, relayed);
        assert!(store.get(before).is_some() && store.get(after).is_some());
        // Two more large records push the bytes kept past 4 x 4096: the
        // oldest chunks go.
        for seq in 4..6 {
            store
                .append(&fields(seq), DeltaFrame::parse(&large).unwrap())
                .unwrap();
        }
        assert!(store.get(before).is_none(), "oldest chunk released");
        let huge = frame(9, &[0; 20_000]);
        assert!(matches!(
            store.append(&fields(9), DeltaFrame::parse(&huge).unwrap()),
            Err(StoreError::RecordTooLarge { .. })
        ));
    }
}

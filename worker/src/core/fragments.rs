//! Reassembly of fragmented relayed frames on `receive` (PROTOCOL §6).
//!
//! The relay sends the fragments of one relayed frame back to back on
//! `receive`, offset 0 first. [`Reassembler`] collects them into the whole
//! relayed frame, bounded by the relay's `max_delta_size`: a sequence that
//! breaks a rule is dropped whole and reported, and the next message is
//! judged on its own.

use deltamesh_proto::fragment::{FragmentError, FragmentHeader};
use deltamesh_proto::frame::FRAME_HEADER_LEN;
use deltamesh_proto::security::SECURITY_HEADER_LEN;

/// The relayed frame header: security header and delta frame header.
const RELAYED_HEADER_LEN: usize = SECURITY_HEADER_LEN + FRAME_HEADER_LEN;
/// Where a relayed frame's `payload_len` is.
const PAYLOAD_LEN_AT: usize = SECURITY_HEADER_LEN + 12;

/// Why a fragment sequence on `receive` was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// The fragment itself is malformed.
    #[error(transparent)]
    Fragment(#[from] FragmentError),
    /// The frame would be larger than this peer takes.
    #[error("a fragmented frame of {total_len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The declared total length.
        total_len: u32,
        /// The limit.
        max: usize,
    },
    /// The first fragment does not hold the whole relayed frame header.
    #[error(
        "the first fragment carries {len} bytes, fewer than the {RELAYED_HEADER_LEN}-byte header"
    )]
    ShortFirst {
        /// The bytes it carried.
        len: usize,
    },
    /// `total_len` is not the header's frame length.
    #[error("total_len {total_len} differs from the header's frame length {frame_len}")]
    LengthMismatch {
        /// The declared total length.
        total_len: u32,
        /// `176 + payload_len` from the header.
        frame_len: u64,
    },
    /// A fragment that does not continue the frame in progress (or none is).
    #[error(
        "fragment at offset {offset} (total_len {total_len}) does not continue a frame at {expected}"
    )]
    OutOfSequence {
        /// The fragment's offset.
        offset: u32,
        /// Its total length.
        total_len: u32,
        /// The offset expected next (0 when no frame was in progress).
        expected: usize,
    },
    /// Something other than the next fragment arrived mid-frame.
    #[error("a fragmented frame was interrupted at {received} of {total_len} bytes")]
    Interrupted {
        /// Bytes received so far.
        received: usize,
        /// The frame's length.
        total_len: u32,
    },
}

/// The relayed frame being reassembled, if any.
#[derive(Debug, Default)]
pub(super) struct Reassembler {
    /// The frame in progress: its declared length and the bytes so far.
    partial: Option<(u32, Vec<u8>)>,
}

impl Reassembler {
    /// Drops a frame in progress because a message other than its next
    /// fragment arrived; reports it if there was one.
    pub(super) fn interrupt(&mut self) -> Result<(), ReassemblyError> {
        match self.partial.take() {
            Some((total_len, bytes)) => Err(ReassemblyError::Interrupted {
                received: bytes.len(),
                total_len,
            }),
            None => Ok(()),
        }
    }

    /// Forgets any frame in progress (the connection ended).
    pub(super) fn reset(&mut self) {
        self.partial = None;
    }

    /// Takes one `FRG1` message; returns the whole relayed frame once its
    /// last fragment is in. `max_total` bounds the frame's length.
    pub(super) fn push(
        &mut self,
        message: &[u8],
        max_total: usize,
    ) -> Result<Option<Vec<u8>>, ReassemblyError> {
        let parsed = FragmentHeader::parse(message);
        let (header, body) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                self.partial = None;
                return Err(error.into());
            }
        };
        if header.offset == 0 {
            // A new frame; one still in progress was interrupted.
            let interrupted = self.interrupt();
            self.start(header.total_len, body, max_total)?;
            interrupted?;
        } else {
            match &mut self.partial {
                Some((total_len, bytes))
                    if *total_len == header.total_len && bytes.len() == header.offset as usize =>
                {
                    bytes.extend_from_slice(body);
                }
                _ => {
                    let expected = self.partial.take().map_or(0, |(_, b)| b.len());
                    return Err(ReassemblyError::OutOfSequence {
                        offset: header.offset,
                        total_len: header.total_len,
                        expected,
                    });
                }
            }
        }
        match &self.partial {
            Some((total_len, bytes)) if bytes.len() == *total_len as usize => {
                Ok(self.partial.take().map(|(_, bytes)| bytes))
            }
            _ => Ok(None),
        }
    }

    fn start(
        &mut self,
        total_len: u32,
        body: &[u8],
        max_total: usize,
    ) -> Result<(), ReassemblyError> {
        if total_len as usize > max_total {
            return Err(ReassemblyError::TooLarge {
                total_len,
                max: max_total,
            });
        }
        if body.len() < RELAYED_HEADER_LEN {
            return Err(ReassemblyError::ShortFirst { len: body.len() });
        }
        let payload_len = u32::from_le_bytes(
            body[PAYLOAD_LEN_AT..PAYLOAD_LEN_AT + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let frame_len = RELAYED_HEADER_LEN as u64 + u64::from(payload_len);
        if frame_len != u64::from(total_len) {
            return Err(ReassemblyError::LengthMismatch {
                total_len,
                frame_len,
            });
        }
        // Grown fragment by fragment: a declared length is not trusted
        // with an allocation before its bytes arrive.
        self.partial = Some((total_len, body.to_vec()));
        Ok(())
    }
}

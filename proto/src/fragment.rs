//! Fragments (PROTOCOL §6): a frame longer than `max_frame_size` travels as
//! `FRG1` messages, each a 16-byte header and the next bytes of the frame.
//! [`FragmentHeader`] reads and writes the header; [`fragments`] cuts a
//! frame into messages. Reassembly, with its rules and bounds, belongs to
//! the receiver.

/// Length of the fragment header in bytes.
pub const FRAGMENT_HEADER_LEN: usize = 16;
/// The fragment magic, ASCII `FRG1`.
pub const FRAGMENT_MAGIC: [u8; 4] = *b"FRG1";
/// The bytes a sender should carry per fragment, so that other channels'
/// messages pass between fragments.
pub const FRAGMENT_BODY: usize = 16 * 1024;
/// The default largest delta frame taken in fragments
/// (`Welcome.max_delta_size` 0): 16 MiB.
pub const DEFAULT_MAX_DELTA_SIZE: usize = 16 * 1024 * 1024;

/// Why a message is not a well-formed fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    /// Not even a whole fragment header.
    #[error("fragment is {len} bytes, shorter than the {FRAGMENT_HEADER_LEN}-byte header")]
    Truncated {
        /// The message's length.
        len: usize,
    },
    /// The reserved field (offset 12) is not zero.
    #[error("fragment's reserved field is not zero")]
    ReservedNonZero,
    /// No bytes after the header.
    #[error("empty fragment")]
    Empty,
    /// The bytes run past `total_len`.
    #[error("fragment at offset {offset} with {len} bytes runs past total_len {total_len}")]
    PastEnd {
        /// The fragment's offset.
        offset: u32,
        /// Its byte count.
        len: usize,
        /// The frame's declared length.
        total_len: u32,
    },
}

/// A fragment's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// The length of the whole frame being carried.
    pub total_len: u32,
    /// Where this fragment's bytes go in that frame.
    pub offset: u32,
}

impl FragmentHeader {
    /// Whether `message` starts with the fragment magic (and so is a
    /// fragment, well-formed or not).
    pub fn is_fragment(message: &[u8]) -> bool {
        message.starts_with(&FRAGMENT_MAGIC)
    }

    /// Reads a fragment: its header and its bytes. The caller checked
    /// [`FragmentHeader::is_fragment`].
    pub fn parse(message: &[u8]) -> Result<(FragmentHeader, &[u8]), FragmentError> {
        if message.len() < FRAGMENT_HEADER_LEN {
            return Err(FragmentError::Truncated { len: message.len() });
        }
        let u32_at =
            |at: usize| u32::from_le_bytes(message[at..at + 4].try_into().expect("4 bytes"));
        let header = FragmentHeader {
            total_len: u32_at(4),
            offset: u32_at(8),
        };
        if u32_at(12) != 0 {
            return Err(FragmentError::ReservedNonZero);
        }
        let body = &message[FRAGMENT_HEADER_LEN..];
        if body.is_empty() {
            return Err(FragmentError::Empty);
        }
        if u64::from(header.offset) + body.len() as u64 > u64::from(header.total_len) {
            return Err(FragmentError::PastEnd {
                offset: header.offset,
                len: body.len(),
                total_len: header.total_len,
            });
        }
        Ok((header, body))
    }

    /// Appends this header to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&FRAGMENT_MAGIC);
        out.extend_from_slice(&self.total_len.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
    }
}

/// Cuts `frame` into fragment messages carrying at most `body` bytes each
/// (the first at least `first_body`, so the whole frame header is in it).
/// `frame` must be shorter than 4 GiB.
pub fn fragments(frame: &[u8], first_body: usize, body: usize) -> Fragments<'_> {
    Fragments {
        frame,
        offset: 0,
        first_body: first_body.max(body).max(1),
        body: body.max(1),
    }
}

/// The fragment messages of one frame, offset 0 first ([`fragments`]).
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    frame: &'a [u8],
    offset: usize,
    first_body: usize,
    body: usize,
}

impl Iterator for Fragments<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if self.offset >= self.frame.len() {
            return None;
        }
        let take = if self.offset == 0 {
            self.first_body
        } else {
            self.body
        };
        let end = (self.offset + take).min(self.frame.len());
        let mut message = Vec::with_capacity(FRAGMENT_HEADER_LEN + end - self.offset);
        FragmentHeader {
            total_len: u32::try_from(self.frame.len()).expect("a frame under 4 GiB"),
            offset: u32::try_from(self.offset).expect("a frame under 4 GiB"),
        }
        .encode_into(&mut message);
        message.extend_from_slice(&self.frame[self.offset..end]);
        self.offset = end;
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_has_the_documented_layout() {
        let message = fragments(&[7; 40], 16, 16).nth(1).unwrap();
        assert_eq!(&message[0..4], b"FRG1");
        assert_eq!(&message[4..8], &40u32.to_le_bytes());
        assert_eq!(&message[8..12], &16u32.to_le_bytes());
        assert_eq!(&message[12..16], &[0; 4]);
        assert_eq!(&message[16..], &[7; 16]);
    }

    #[test]
    fn fragments_reassemble_to_the_frame() {
        let frame: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        for message in fragments(&frame, 176, FRAGMENT_BODY) {
            let (header, body) = FragmentHeader::parse(&message).unwrap();
            assert_eq!(header.offset as usize, out.len());
            assert_eq!(header.total_len as usize, frame.len());
            out.extend_from_slice(body);
        }
        assert_eq!(out, frame);
    }

    #[test]
    fn broken_fragments_are_errors() {
        assert_eq!(
            FragmentHeader::parse(b"FRG1"),
            Err(FragmentError::Truncated { len: 4 })
        );
        let mut message = fragments(&[1; 8], 8, 8).next().unwrap();
        assert_eq!(
            FragmentHeader::parse(&message[..16]),
            Err(FragmentError::Empty)
        );
        message[12] = 1;
        assert_eq!(
            FragmentHeader::parse(&message),
            Err(FragmentError::ReservedNonZero)
        );
        message[12] = 0;
        message[4] = 4;
        assert!(matches!(
            FragmentHeader::parse(&message),
            Err(FragmentError::PastEnd { .. })
        ));
    }
}

//! The delta frame (PROTOCOL §3): a 56-byte little-endian header and an opaque
//! payload. [`DeltaFrame`] is a validated, zero-copy view over received bytes;
//! [`FrameHeader::encode`] builds a frame.

use crate::id::Id;

/// Length of the delta frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 56;
/// The frame magic, ASCII `DLT1`.
pub const FRAME_MAGIC: [u8; 4] = *b"DLT1";
/// The only frame version this crate speaks.
pub const FRAME_VERSION: u16 = 1;
/// Flag bits 12..15 are reserved and must be zero.
pub const RESERVED_FLAG_BITS: u16 = 0xF000;

/// Why bytes are not a valid delta frame. Each variant is one rule of PROTOCOL §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the fixed header.
    #[error("frame is {len} bytes, shorter than the {FRAME_HEADER_LEN}-byte header")]
    Truncated {
        /// The length that was received.
        len: usize,
    },
    /// The first four bytes are not `DLT1`.
    #[error("bad magic {found:02x?}, expected \"DLT1\"")]
    BadMagic {
        /// The bytes found instead.
        found: [u8; 4],
    },
    /// A version other than 1.
    #[error("unsupported version {version}, expected {FRAME_VERSION}")]
    BadVersion {
        /// The version found.
        version: u16,
    },
    /// One of flag bits 12..15 is set.
    #[error("reserved flag bits set: {flags:#06x}")]
    ReservedFlags {
        /// The flags found.
        flags: u16,
    },
    /// A reserved field (offset 10 or 52) is not zero.
    #[error("reserved field at offset {offset} is not zero")]
    ReservedNonZero {
        /// Offset of the reserved field.
        offset: usize,
    },
    /// `payload_len` disagrees with the frame's actual length.
    #[error("payload_len says {declared} bytes but {actual} follow the header")]
    LengthMismatch {
        /// The header's `payload_len`.
        declared: u32,
        /// The bytes actually after the header.
        actual: usize,
    },
    /// The payload's CRC-32C differs from the header's checksum.
    #[error("checksum {declared:#010x} does not match payload CRC-32C {computed:#010x}")]
    BadChecksum {
        /// The header's checksum.
        declared: u32,
        /// The CRC-32C of the payload received.
        computed: u32,
    },
    /// The payload is longer than `u32::MAX` bytes (builder only).
    #[error("payload of {len} bytes does not fit a frame")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
    },
}

/// A validated delta frame borrowed from a receive buffer. Accessors read the
/// fields straight from the bytes; nothing is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaFrame<'a> {
    bytes: &'a [u8],
}

impl<'a> DeltaFrame<'a> {
    /// Validates `bytes` as one whole delta frame: magic, version, reserved
    /// bits and fields, exact length and CRC-32C. Allocates nothing.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FrameError> {
        let frame = Self::check_header(bytes)?;
        let actual = bytes.len() - FRAME_HEADER_LEN;
        if frame.payload_len() as usize != actual {
            return Err(FrameError::LengthMismatch {
                declared: frame.payload_len(),
                actual,
            });
        }
        let computed = crc32c::crc32c(frame.payload());
        if computed != frame.checksum() {
            return Err(FrameError::BadChecksum {
                declared: frame.checksum(),
                computed,
            });
        }
        Ok(frame)
    }

    /// Checks the header rules that need no payload (magic, version,
    /// reserved bits and fields) on `bytes`, which start with a header and
    /// may hold only part of the payload: the first fragment of a frame
    /// (PROTOCOL §6). The returned view is not a validated frame: its
    /// length and checksum are unchecked.
    pub fn check_header(bytes: &'a [u8]) -> Result<Self, FrameError> {
        if bytes.len() < FRAME_HEADER_LEN {
            return Err(FrameError::Truncated { len: bytes.len() });
        }
        let frame = DeltaFrame { bytes };
        let magic = frame.array::<4>(0);
        if magic != FRAME_MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        if frame.version() != FRAME_VERSION {
            return Err(FrameError::BadVersion {
                version: frame.version(),
            });
        }
        if frame.flags() & RESERVED_FLAG_BITS != 0 {
            return Err(FrameError::ReservedFlags {
                flags: frame.flags(),
            });
        }
        for offset in [10, 52] {
            let width = if offset == 10 { 2 } else { 4 };
            if bytes[offset..offset + width].iter().any(|&b| b != 0) {
                return Err(FrameError::ReservedNonZero { offset });
            }
        }
        Ok(frame)
    }

    /// Reads `client_seq` from bytes that may not be a valid frame, so a
    /// rejection can name it. `None` when the bytes are too short to hold it.
    pub fn peek_client_seq(bytes: &[u8]) -> Option<u64> {
        let field = bytes.get(32..40)?;
        Some(u64::from_le_bytes(field.try_into().ok()?))
    }

    /// The whole frame, header and payload.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Application-defined kind.
    pub fn kind(&self) -> u16 {
        self.u16_at(6)
    }

    /// Application-defined flags (bits 0..11).
    pub fn flags(&self) -> u16 {
        self.u16_at(8)
    }

    /// Length of the payload in bytes.
    pub fn payload_len(&self) -> u32 {
        u32::from_le_bytes(self.array(12))
    }

    /// Application-defined document id.
    pub fn doc_id(&self) -> Id {
        Id(self.array(16))
    }

    /// The sender's per-connection sequence number.
    pub fn client_seq(&self) -> u64 {
        u64::from_le_bytes(self.array(32))
    }

    /// Sender clock, microseconds since the Unix epoch.
    pub fn timestamp_us(&self) -> u64 {
        u64::from_le_bytes(self.array(40))
    }

    /// CRC-32C of the payload, as sent.
    pub fn checksum(&self) -> u32 {
        u32::from_le_bytes(self.array(48))
    }

    /// The opaque payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[FRAME_HEADER_LEN..]
    }

    fn version(&self) -> u16 {
        self.u16_at(4)
    }

    fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes(self.array(offset))
    }

    fn array<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.bytes[offset..offset + N]);
        out
    }
}

/// The sender-chosen fields of a delta frame; the rest (magic, version,
/// length, checksum) are derived when encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameHeader {
    /// Application-defined kind.
    pub kind: u16,
    /// Application-defined flags; bits 12..15 must be zero.
    pub flags: u16,
    /// Application-defined document id.
    pub doc_id: Id,
    /// Per-connection sequence number, from 1.
    pub client_seq: u64,
    /// Sender clock, microseconds since the Unix epoch.
    pub timestamp_us: u64,
}

impl FrameHeader {
    /// Encodes a frame with this header and `payload`.
    pub fn encode(&self, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        self.encode_into(payload, &mut out)?;
        Ok(out)
    }

    /// Appends an encoded frame with this header and `payload` to `out`.
    pub fn encode_into(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if self.flags & RESERVED_FLAG_BITS != 0 {
            return Err(FrameError::ReservedFlags { flags: self.flags });
        }
        let payload_len = u32::try_from(payload.len())
            .map_err(|_| FrameError::PayloadTooLarge { len: payload.len() })?;
        out.reserve(FRAME_HEADER_LEN + payload.len());
        out.extend_from_slice(&FRAME_MAGIC);
        out.extend_from_slice(&FRAME_VERSION.to_le_bytes());
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&payload_len.to_le_bytes());
        out.extend_from_slice(&self.doc_id.0);
        out.extend_from_slice(&self.client_seq.to_le_bytes());
        out.extend_from_slice(&self.timestamp_us.to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        FrameHeader {
            kind: 7,
            flags: 0x0abc,
            doc_id: Id([9; 16]),
            client_seq: 42,
            timestamp_us: 1_700_000_000_000_000,
        }
        .encode(b"hello delta")
        .unwrap()
    }

    #[test]
    fn encoded_frame_has_the_documented_layout() {
        let bytes = sample();
        assert_eq!(&bytes[0..4], b"DLT1");
        assert_eq!(&bytes[4..6], &[1, 0]);
        assert_eq!(&bytes[6..8], &[7, 0]);
        assert_eq!(&bytes[8..10], &[0xbc, 0x0a]);
        assert_eq!(&bytes[12..16], &[11, 0, 0, 0]);
        assert_eq!(&bytes[16..32], &[9; 16]);
        assert_eq!(&bytes[32..40], &42u64.to_le_bytes());
        assert_eq!(
            &bytes[48..52],
            &crc32c::crc32c(b"hello delta").to_le_bytes()
        );
        assert_eq!(&bytes[56..], b"hello delta");
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // The standard check value of CRC-32C over "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn peek_reads_client_seq_of_a_broken_frame() {
        let mut bytes = sample();
        bytes[0] = b'X';
        assert_eq!(DeltaFrame::peek_client_seq(&bytes), Some(42));
        assert_eq!(DeltaFrame::peek_client_seq(&bytes[..39]), None);
    }

    #[test]
    fn builder_refuses_reserved_flags() {
        let header = FrameHeader {
            flags: 0x8000,
            ..FrameHeader::default()
        };
        assert_eq!(
            header.encode(b""),
            Err(FrameError::ReservedFlags { flags: 0x8000 })
        );
    }
}

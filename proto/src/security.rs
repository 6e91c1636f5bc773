//! The security header (PROTOCOL §4): 120 bytes the relay puts in front of a
//! delta frame it accepted, naming the session seq, origin and validator.
//! [`RelayedFrame`] is a validated, zero-copy view over header and frame.

use crate::frame::{DeltaFrame, FrameError};
use crate::id::Id;

/// Length of the security header in bytes.
pub const SECURITY_HEADER_LEN: usize = 120;
/// The security header magic, ASCII `SEC1`.
pub const SECURITY_MAGIC: [u8; 4] = *b"SEC1";
/// Offset of the flags byte, the only byte that changes after stamping.
pub const FLAGS_OFFSET: usize = 4;

/// One-way flags of a relayed delta (set, never cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SecurityFlags(pub u8);

impl SecurityFlags {
    /// The frame header passed validation.
    pub const VALID_DELTA: u8 = 1;
    /// The payload passed validation (checksum).
    pub const VALID_DATA: u8 = 1 << 1;
    /// The delta was stored and sequenced.
    pub const PROCESSED: u8 = 1 << 2;
    /// The signature field holds the validator's Ed25519 signature.
    pub const SIGNED: u8 = 1 << 3;
    /// The delta was rejected (kept for audit, never forwarded).
    pub const REJECTED: u8 = 1 << 7;

    /// Whether every bit of `bits` is set.
    pub fn contains(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
}

/// Why bytes are not a valid relayed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    /// Fewer bytes than the security header.
    #[error(
        "relayed frame is {len} bytes, shorter than the {SECURITY_HEADER_LEN}-byte security header"
    )]
    Truncated {
        /// The length received.
        len: usize,
    },
    /// The first four bytes are not `SEC1`.
    #[error("bad security header magic {found:02x?}, expected \"SEC1\"")]
    BadMagic {
        /// The bytes found instead.
        found: [u8; 4],
    },
    /// Bytes 5..8 are not zero.
    #[error("security header reserved bytes are not zero")]
    ReservedNonZero,
    /// The signed bit is clear but the signature field is not zero.
    #[error("unsigned security header carries a signature")]
    UnexpectedSignature,
    /// The frame after the header is invalid.
    #[error("relayed delta frame: {0}")]
    Frame(#[from] FrameError),
}

/// The fields a relay stamps on an accepted delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityFields {
    /// Flags at stamping time.
    pub flags: SecurityFlags,
    /// The session's sequence number, from 1, gap-free.
    pub seq: u64,
    /// The peer that sent the delta.
    pub origin: Id,
    /// The relay instance that accepted it.
    pub validator: Id,
    /// When it was accepted, microseconds since the Unix epoch.
    pub validated_at_us: u64,
    /// Ed25519 signature, zero when unsigned.
    pub signature: [u8; 64],
}

impl SecurityFields {
    /// Writes the 120-byte header into `out`.
    pub fn write_to(&self, out: &mut [u8; SECURITY_HEADER_LEN]) {
        out[0..4].copy_from_slice(&SECURITY_MAGIC);
        out[4] = self.flags.0;
        out[5..8].fill(0);
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..32].copy_from_slice(&self.origin.0);
        out[32..48].copy_from_slice(&self.validator.0);
        out[48..56].copy_from_slice(&self.validated_at_us.to_le_bytes());
        out[56..120].copy_from_slice(&self.signature);
    }

    /// Encodes header plus `frame` as one relayed message.
    pub fn encode(&self, frame: &[u8]) -> Vec<u8> {
        let mut header = [0u8; SECURITY_HEADER_LEN];
        self.write_to(&mut header);
        let mut out = Vec::with_capacity(SECURITY_HEADER_LEN + frame.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(frame);
        out
    }
}

/// A validated relayed message (security header + delta frame) borrowed
/// from a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayedFrame<'a> {
    bytes: &'a [u8],
    frame: DeltaFrame<'a>,
}

impl<'a> RelayedFrame<'a> {
    /// Validates the security header and the delta frame after it.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, SecurityError> {
        if bytes.len() < SECURITY_HEADER_LEN {
            return Err(SecurityError::Truncated { len: bytes.len() });
        }
        let mut magic = [0; 4];
        magic.copy_from_slice(&bytes[0..4]);
        if magic != SECURITY_MAGIC {
            return Err(SecurityError::BadMagic { found: magic });
        }
        if bytes[5..8] != [0, 0, 0] {
            return Err(SecurityError::ReservedNonZero);
        }
        let signed = SecurityFlags(bytes[FLAGS_OFFSET]).contains(SecurityFlags::SIGNED);
        if !signed && bytes[56..120].iter().any(|&b| b != 0) {
            return Err(SecurityError::UnexpectedSignature);
        }
        let frame = DeltaFrame::parse(&bytes[SECURITY_HEADER_LEN..])?;
        Ok(RelayedFrame { bytes, frame })
    }

    /// The security flags.
    pub fn flags(&self) -> SecurityFlags {
        SecurityFlags(self.bytes[FLAGS_OFFSET])
    }

    /// The session sequence number.
    pub fn seq(&self) -> u64 {
        u64::from_le_bytes(self.array(8))
    }

    /// The peer that sent the delta.
    pub fn origin(&self) -> Id {
        Id(self.array(16))
    }

    /// The relay that accepted the delta.
    pub fn validator(&self) -> Id {
        Id(self.array(32))
    }

    /// When the relay accepted it, microseconds since the Unix epoch.
    pub fn validated_at_us(&self) -> u64 {
        u64::from_le_bytes(self.array(48))
    }

    /// The signature field (zero when unsigned).
    pub fn signature(&self) -> [u8; 64] {
        self.array(56)
    }

    /// The bytes a signature covers: header bytes 8..56, then the frame.
    pub fn signed_parts(&self) -> [&'a [u8]; 2] {
        [&self.bytes[8..56], self.frame.as_bytes()]
    }

    /// The original delta frame.
    pub fn frame(&self) -> DeltaFrame<'a> {
        self.frame
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn array<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0; N];
        out.copy_from_slice(&self.bytes[offset..offset + N]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameHeader;

    #[test]
    fn stamped_header_has_the_documented_layout() {
        let frame = FrameHeader::default().encode(b"x").unwrap();
        let fields = SecurityFields {
            flags: SecurityFlags(SecurityFlags::VALID_DELTA | SecurityFlags::PROCESSED),
            seq: 5,
            origin: Id([1; 16]),
            validator: Id([2; 16]),
            validated_at_us: 99,
            signature: [0; 64],
        };
        let bytes = fields.encode(&frame);
        assert_eq!(&bytes[0..4], b"SEC1");
        assert_eq!(bytes[4], 0b101);
        assert_eq!(&bytes[8..16], &5u64.to_le_bytes());
        assert_eq!(&bytes[16..32], &[1; 16]);
        assert_eq!(&bytes[32..48], &[2; 16]);
        assert_eq!(&bytes[48..56], &99u64.to_le_bytes());
        assert_eq!(&bytes[120..], &frame[..]);
        let relayed = RelayedFrame::parse(&bytes).unwrap();
        assert_eq!(relayed.seq(), 5);
        assert_eq!(relayed.frame().payload(), b"x");
    }
}

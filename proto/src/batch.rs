//! Batches (PROTOCOL §7): with `batch` in force, one message on `send`
//! carries several whole delta frames back to back, and one on `receive`
//! several whole relayed frames. [`Batch`] delimits them by each header's
//! `payload_len`; judging each frame is the receiver's job.

use crate::frame::FRAME_HEADER_LEN;
use crate::security::SECURITY_HEADER_LEN;

/// Why the rest of a batched message cannot be delimited. The frames
/// before it stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes are left than a frame header (`TRUNCATED`, client_seq 0).
    #[error("{left} bytes left, fewer than a frame header")]
    Truncated {
        /// The bytes left.
        left: usize,
    },
    /// A frame's `payload_len` runs past the end of the message
    /// (`LENGTH_MISMATCH`, that frame's client_seq).
    #[error("payload_len {payload_len} runs past the end of the message ({left} bytes left)")]
    PastEnd {
        /// The frame's `client_seq` (0 on `receive`, where it is not needed).
        client_seq: u64,
        /// Its declared payload length.
        payload_len: u32,
        /// The bytes left in the message, its header included.
        left: usize,
    },
}

/// The frames of one batched message, in order; after an error, nothing.
#[derive(Debug, Clone)]
pub struct Batch<'a> {
    rest: &'a [u8],
    /// Bytes before the delta frame header in each frame (0 on `send`,
    /// the security header on `receive`).
    prefix: usize,
}

impl<'a> Batch<'a> {
    /// The delta frames of a message on `send`.
    pub fn deltas(message: &'a [u8]) -> Self {
        Batch {
            rest: message,
            prefix: 0,
        }
    }

    /// The relayed frames of a message on `receive`.
    pub fn relayed(message: &'a [u8]) -> Self {
        Batch {
            rest: message,
            prefix: SECURITY_HEADER_LEN,
        }
    }
}

impl<'a> Iterator for Batch<'a> {
    type Item = Result<&'a [u8], BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let header = self.prefix + FRAME_HEADER_LEN;
        if rest.len() < header {
            return Some(Err(BatchError::Truncated { left: rest.len() }));
        }
        let u64_at = |at: usize| u64::from_le_bytes(rest[at..at + 8].try_into().expect("8"));
        let payload_len = u32::from_le_bytes(
            rest[self.prefix + 12..self.prefix + 16]
                .try_into()
                .expect("4 bytes"),
        );
        let len = header as u64 + u64::from(payload_len);
        if len > rest.len() as u64 {
            let client_seq = if self.prefix == 0 { u64_at(32) } else { 0 };
            return Some(Err(BatchError::PastEnd {
                client_seq,
                payload_len,
                left: rest.len(),
            }));
        }
        let (frame, after) = rest.split_at(len as usize);
        self.rest = after;
        Some(Ok(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameHeader;

    fn frame(client_seq: u64, payload: &[u8]) -> Vec<u8> {
        FrameHeader {
            client_seq,
            ..FrameHeader::default()
        }
        .encode(payload)
        .unwrap()
    }

    #[test]
    fn frames_back_to_back_come_apart() {
        let mut message = frame(1, b"one");
        message.extend(frame(2, b""));
        message.extend(frame(3, b"three"));
        let frames: Vec<&[u8]> = Batch::deltas(&message).map(Result::unwrap).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2], frame(3, b"three").as_slice());
    }

    #[test]
    fn the_frames_before_a_broken_one_stand() {
        let mut message = frame(1, b"one");
        message.extend(&frame(2, b"two")[..58]);
        let items: Vec<_> = Batch::deltas(&message).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert_eq!(
            items[1],
            Err(BatchError::PastEnd {
                client_seq: 2,
                payload_len: 3,
                left: 58
            })
        );
        let mut message = frame(1, b"one");
        message.extend([0; 20]);
        let items: Vec<_> = Batch::deltas(&message).collect();
        assert_eq!(items[1], Err(BatchError::Truncated { left: 20 }));
    }
}

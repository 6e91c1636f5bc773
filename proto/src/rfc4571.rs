//! RFC 4571 framing of ICE-TCP (RFC 6544): every datagram (STUN, DTLS) on a
//! TCP stream is preceded by its length, two bytes big-endian. Sans-IO: a
//! [`FrameDecoder`] is fed whatever bytes a read returned and yields whole
//! datagrams; [`encode`] frames one datagram for writing. The relay's
//! ICE-TCP driver and the native peer's both use it.

/// Largest datagram a deltamesh endpoint takes in one frame: str0m's
/// datagrams stay below its 2,000-byte packet limit, and the UDP drivers
/// read into 2 KiB, so a longer frame is not a datagram of ours.
pub const MAX_FRAME_LEN: usize = 2048;

/// The length prefix's size.
const PREFIX: usize = 2;

/// Why a stream is not RFC 4571 framing we take; the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A frame announced length 0 (no datagram is empty).
    #[error("RFC 4571 frame of length 0")]
    Empty,
    /// A frame announced more than [`MAX_FRAME_LEN`] bytes.
    #[error("RFC 4571 frame of {0} bytes, more than {MAX_FRAME_LEN}")]
    TooLong(usize),
}

/// `datagram` with its length prefix, ready to write. `None` when it is
/// empty or longer than [`MAX_FRAME_LEN`], which no peer would accept.
pub fn encode(datagram: &[u8]) -> Option<Vec<u8>> {
    if datagram.is_empty() || datagram.len() > MAX_FRAME_LEN {
        return None;
    }
    let len = u16::try_from(datagram.len()).ok()?;
    let mut framed = Vec::with_capacity(PREFIX + datagram.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(datagram);
    Some(framed)
}

/// Reassembles datagrams from a TCP byte stream. It holds at most one
/// partial frame (≤ `2 + MAX_FRAME_LEN` bytes), so a connection's read
/// buffer is bounded whatever the remote sends.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// Set once a bad length was seen: the stream has no frames after it.
    failed: Option<FramingError>,
}

impl FrameDecoder {
    /// Appends `bytes` read from the stream. Call [`next_frame`](Self::next_frame)
    /// until it returns `Ok(None)` before pushing more, or the buffer grows
    /// by what was pushed (at most one read's worth).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// The next whole datagram, `Ok(None)` when more bytes are needed, or
    /// the error that ends the stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let Some(prefix) = self.buffer.first_chunk::<PREFIX>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes(*prefix));
        let error = match len {
            0 => Some(FramingError::Empty),
            len if len > MAX_FRAME_LEN => Some(FramingError::TooLong(len)),
            _ => None,
        };
        if let Some(error) = error {
            self.failed = Some(error);
            self.buffer = Vec::new();
            return Err(error);
        }
        if self.buffer.len() < PREFIX + len {
            return Ok(None);
        }
        let frame = self.buffer[PREFIX..PREFIX + len].to_vec();
        self.buffer.drain(..PREFIX + len);
        Ok(Some(frame))
    }

    /// Bytes held: a partial frame, or whole frames not yet taken.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(decoder: &mut FrameDecoder) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| decoder.next_frame().unwrap()).collect()
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let stream: Vec<u8> = [b"stun".as_slice(), &[7; 300], &[1]]
            .iter()
            .flat_map(|d| encode(d).unwrap())
            .collect();
        for split in 1..stream.len() {
            let mut decoder = FrameDecoder::default();
            let mut out = Vec::new();
            for piece in stream.chunks(split) {
                decoder.push(piece);
                out.extend(frames(&mut decoder));
            }
            assert_eq!(out, vec![b"stun".to_vec(), vec![7; 300], vec![1]]);
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn a_zero_length_ends_the_stream() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[0, 1, 9, 0, 0, 0, 1, 5]);
        assert_eq!(decoder.next_frame(), Ok(Some(vec![9])));
        assert_eq!(decoder.next_frame(), Err(FramingError::Empty));
        decoder.push(&[0, 1, 5]);
        assert_eq!(decoder.next_frame(), Err(FramingError::Empty));
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn a_length_over_the_largest_datagram_is_refused_before_its_bytes_arrive() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[0xff, 0xff]);
        assert_eq!(decoder.next_frame(), Err(FramingError::TooLong(0xffff)));
        let mut decoder = FrameDecoder::default();
        let longest = u16::try_from(MAX_FRAME_LEN).unwrap();
        decoder.push(&(longest + 1).to_be_bytes());
        assert!(decoder.next_frame().is_err());
        let mut decoder = FrameDecoder::default();
        decoder.push(&encode(&[3; MAX_FRAME_LEN]).unwrap());
        assert_eq!(decoder.next_frame(), Ok(Some(vec![3; MAX_FRAME_LEN])));
    }

    #[test]
    fn encode_refuses_what_no_decoder_takes() {
        assert_eq!(encode(&[]), None);
        assert_eq!(encode(&[0; MAX_FRAME_LEN + 1]), None);
        assert_eq!(encode(&[1, 2]), Some(vec![0, 2, 1, 2]));
    }
}

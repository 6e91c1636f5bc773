//! 16-byte ids (peers, relays, documents): raw bytes on the wire, lowercase
//! hyphenated UUID text in HTTP and logs. [`Id::random`] is the one way
//! every crate makes a new one.

use std::fmt;
use std::str::FromStr;

/// A 16-byte id: a UUID on the wire, as raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; 16]);

/// Why text or bytes are not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not 16 raw bytes.
    #[error("an id is 16 bytes, got {0}")]
    Length(usize),
    /// Not hyphenated UUID text.
    #[error("not a hyphenated UUID: {0:?}")]
    Text(String),
}

impl Id {
    /// A new random (version 4) UUID from the system's secure random source
    /// (`crypto.getRandomValues` in a browser), fit for ids that must not be
    /// guessed, such as resume tokens.
    pub fn random() -> Self {
        Id(uuid::Uuid::new_v4().into_bytes())
    }

    /// The id in `bytes`, which must be exactly 16 long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        let raw: [u8; 16] = bytes.try_into().map_err(|_| IdError::Length(bytes.len()))?;
        Ok(Id(raw))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Id {
    type Err = IdError;

    /// Parses hyphenated UUID text (`8-4-4-4-12` hex digits).
    fn from_str(text: &str) -> Result<Self, IdError> {
        let bad = || IdError::Text(text.chars().take(64).collect());
        let bytes = text.as_bytes();
        if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
            return Err(bad());
        }
        let mut digits = bytes.iter().filter(|&&b| b != b'-');
        let mut out = [0u8; 16];
        for byte in &mut out {
            let hi = digits.next().and_then(|&c| (c as char).to_digit(16));
            let lo = digits.next().and_then(|&c| (c as char).to_digit(16));
            match (hi, lo) {
                (Some(hi), Some(lo)) => *byte = (hi * 16 + lo) as u8,
                _ => return Err(bad()),
            }
        }
        Ok(Id(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_is_lowercase_hyphenated() {
        let id = Id([0xAB; 16]);
        let text = id.to_string();
        assert_eq!(text, "abababab-abab-abab-abab-abababababab");
        assert_eq!(text.parse::<Id>(), Ok(id));
        assert_eq!("ABABABAB-ABAB-ABAB-ABAB-ABABABABABAB".parse::<Id>(), Ok(id));
    }

    #[test]
    fn random_ids_are_version_4_uuids_and_differ() {
        let (a, b) = (Id::random(), Id::random());
        assert_ne!(a, b);
        assert_eq!(a.0[6] >> 4, 4);
        assert_eq!(a.0[8] >> 6, 0b10);
    }

    #[test]
    fn malformed_text_is_refused() {
        for bad in [
            "",
            "abc",
            "abababab-abab-abab-abab-ababababababx",
            "abababababababababababababababababab",
            "gbababab-abab-abab-abab-abababababab",
        ] {
            assert!(bad.parse::<Id>().is_err(), "{bad}");
        }
        assert_eq!(Id::from_slice(&[1; 15]), Err(IdError::Length(15)));
    }
}

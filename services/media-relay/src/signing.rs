//! Signing accepted deltas (PROTOCOL §4): when a relay has a key, it signs
//! each delta's security header (bytes 8..56: seq, origin, validator, time)
//! together with the frame, with Ed25519, and sets the `signed` flag. A peer
//! holding the relay's public key can then check that the relay accepted
//! exactly these bytes under exactly this seq.

use std::fmt;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use deltamesh_proto::SecurityFields;
use deltamesh_proto::security::SECURITY_HEADER_LEN;

/// Why a signing key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningKeyError {
    /// Not PEM.
    #[error("not a PEM file: {0}")]
    NotPem(String),
    /// PEM, but not an Ed25519 private key in PKCS#8.
    #[error("not an Ed25519 private key (PKCS#8, `BEGIN PRIVATE KEY`): {0}")]
    NotEd25519(String),
}

/// A relay's Ed25519 signing key.
pub struct DeltaSigner {
    key: Ed25519KeyPair,
}

impl fmt::Debug for DeltaSigner {
    /// The public key only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaSigner")
            .field("public_key", &hex(&self.public_key()))
            .finish()
    }
}

impl DeltaSigner {
    /// A signer from a PKCS#8 PEM (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem(pem_text: &[u8]) -> Result<Self, SigningKeyError> {
        let block = pem::parse(pem_text).map_err(|e| SigningKeyError::NotPem(e.to_string()))?;
        let key = Ed25519KeyPair::from_pkcs8(block.contents())
            .map_err(|e| SigningKeyError::NotEd25519(e.to_string()))?;
        Ok(DeltaSigner { key })
    }

    /// The 32-byte public key peers verify with.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0; 32];
        out.copy_from_slice(self.key.public_key().as_ref());
        out
    }

    /// The signature over `fields` (whose own signature is ignored) and `frame`.
    pub fn sign(&self, fields: &SecurityFields, frame: &[u8]) -> [u8; 64] {
        let mut header = [0u8; SECURITY_HEADER_LEN];
        fields.write_to(&mut header);
        let mut message = Vec::with_capacity(48 + frame.len());
        message.extend_from_slice(&header[8..56]);
        message.extend_from_slice(frame);
        let mut out = [0; 64];
        out.copy_from_slice(self.key.sign(&message).as_ref());
        out
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIVATE: &[u8] = include_bytes!("../../signal/tests/keys/ed25519-a.pem");
    const PUBLIC: &[u8] = include_bytes!("../../signal/tests/keys/ed25519-a.pub.pem");

    #[test]
    fn only_an_ed25519_private_key_in_pem_is_a_signing_key() {
        let signer = DeltaSigner::from_pem(PRIVATE).unwrap();
        assert!(format!("{signer:?}").contains(&hex(&signer.public_key())));
        assert!(matches!(
            DeltaSigner::from_pem(b"not pem at all"),
            Err(SigningKeyError::NotPem(_))
        ));
        assert!(matches!(
            DeltaSigner::from_pem(PUBLIC),
            Err(SigningKeyError::NotEd25519(_))
        ));
    }
}

//! Checking a relay's signature on a received delta (PROTOCOL §4): the
//! relay signs security header bytes 8..56 and the frame with Ed25519; a
//! peer that holds the relay's public key confirms the relay accepted
//! exactly these bytes under exactly this seq, origin and time.

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use deltamesh_proto::SecurityFlags;
use deltamesh_proto::security::{RelayedFrame, SecurityError};

/// Why a relayed message does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The bytes are not a valid relayed frame.
    #[error(transparent)]
    Malformed(#[from] SecurityError),
    /// The relay did not sign it.
    #[error("the delta is not signed")]
    Unsigned,
    /// The signature does not match the bytes and the key.
    #[error("the signature does not verify with this relay key")]
    BadSignature,
}

/// Checks `message` (security header and frame, as received) against the
/// relay's 32-byte Ed25519 `public_key`.
pub fn verify_relayed(message: &[u8], public_key: &[u8; 32]) -> Result<(), VerifyError> {
    let relayed = RelayedFrame::parse(message)?;
    if !relayed.flags().contains(SecurityFlags::SIGNED) {
        return Err(VerifyError::Unsigned);
    }
    let [header, frame] = relayed.signed_parts();
    let mut signed = Vec::with_capacity(header.len() + frame.len());
    signed.extend_from_slice(header);
    signed.extend_from_slice(frame);
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signed, &relayed.signature())
        .map_err(|_| VerifyError::BadSignature)
}

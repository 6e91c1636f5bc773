//! The ids in request paths: a `{session}` is 1 to 128 characters of
//! `[A-Za-z0-9._-]`, a `{peer}` is hyphenated UUID text. Anything else is a
//! 400 before the network is asked.

use deltamesh_proto::Id;
use deltamesh_proto::session::{SESSION_MAX, is_valid_session};

use crate::problem::ApiError;

/// `session` when it follows the session id rules.
pub(crate) fn session(session: String) -> Result<String, ApiError> {
    if !is_valid_session(&session) {
        return Err(ApiError::InvalidId(format!(
            "a session id is 1 to {SESSION_MAX} characters of [A-Za-z0-9._-]"
        )));
    }
    Ok(session)
}

/// The peer id in `peer`, hyphenated UUID text.
pub(crate) fn peer(peer: &str) -> Result<Id, ApiError> {
    peer.parse()
        .map_err(|_| ApiError::InvalidId("a peer id is hyphenated UUID text".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_id_against_the_rules_is_an_invalid_id_error() {
        assert_eq!(
            session("Doc-1.v2_x".to_owned()).ok().as_deref(),
            Some("Doc-1.v2_x")
        );
        assert!(matches!(
            session("a/b".to_owned()),
            Err(ApiError::InvalidId(_))
        ));
    }

    #[test]
    fn peer_ids_are_uuid_text() {
        let id = peer("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        assert_eq!(id.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
        assert!(peer("not-a-uuid").is_err());
    }
}

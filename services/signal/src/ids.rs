//! The ids in request paths: a `{session}` is 1 to 128 characters of
//! `[A-Za-z0-9._-]`, a `{peer}` is hyphenated UUID text. Anything else is a
//! 400 before the network is asked.

use deltamesh_proto::Id;

use crate::problem::ApiError;

/// The longest session id, in characters.
const SESSION_MAX: usize = 128;

/// `session` when it follows the session id rules.
pub(crate) fn session(session: String) -> Result<String, ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if session.is_empty() || session.len() > SESSION_MAX || !session.chars().all(allowed) {
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
    fn session_ids_follow_the_protocol_rules() {
        for good in ["a", "Doc-1.v2_x", &"z".repeat(128)] {
            assert!(session(good.to_owned()).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "a%2F", &"z".repeat(129)] {
            assert!(session(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn peer_ids_are_uuid_text() {
        let id = peer("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        assert_eq!(id.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
        assert!(peer("not-a-uuid").is_err());
    }
}

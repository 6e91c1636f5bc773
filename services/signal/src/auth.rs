//! Who may use the `/v1` API. Today one fixed development token opens every
//! session; signed tokens naming a session and its grants replace it later,
//! behind the same [`Authenticator::check`].

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

/// Why a request is not authorized (always a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// No `Authorization` header.
    #[error("this request needs an `Authorization: Bearer <token>` header")]
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    Malformed,
    /// A bearer token that is not accepted.
    #[error("the bearer token is not accepted")]
    Rejected,
}

/// Checks the bearer token of a request.
#[derive(Debug, Clone)]
pub(crate) struct Authenticator {
    dev_token: String,
}

impl Authenticator {
    /// Accepts exactly `dev_token` (an empty one accepts nothing).
    pub(crate) fn new(dev_token: String) -> Self {
        Authenticator { dev_token }
    }

    /// `Ok` when `headers` carry an accepted bearer token.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let value = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthError::Malformed);
        }
        if self.dev_token.is_empty() || !same_bytes(token.as_bytes(), self.dev_token.as_bytes()) {
            return Err(AuthError::Rejected);
        }
        Ok(())
    }
}

/// Compares in time that depends on the lengths only, not on where the
/// first difference is, so a token cannot be guessed byte by byte.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn check(auth: &Authenticator, value: Option<&str>) -> Result<(), AuthError> {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        auth.check(&headers)
    }

    #[test]
    fn only_the_dev_token_as_a_bearer_token_is_accepted() {
        let auth = Authenticator::new("s3cret".into());
        assert_eq!(check(&auth, Some("Bearer s3cret")), Ok(()));
        assert_eq!(check(&auth, Some("bearer  s3cret ")), Ok(()));
        assert_eq!(check(&auth, None), Err(AuthError::Missing));
        assert_eq!(
            check(&auth, Some("Basic s3cret")),
            Err(AuthError::Malformed)
        );
        assert_eq!(check(&auth, Some("Bearer")), Err(AuthError::Malformed));
        assert_eq!(check(&auth, Some("Bearer s3cre")), Err(AuthError::Rejected));
        assert_eq!(
            check(&auth, Some("Bearer s3cret2")),
            Err(AuthError::Rejected)
        );
    }

    #[test]
    fn an_empty_dev_token_accepts_nothing() {
        let auth = Authenticator::new(String::new());
        assert_eq!(check(&auth, Some("Bearer x")), Err(AuthError::Rejected));
    }
}

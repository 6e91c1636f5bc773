//! Who may use the `/v1` API: a signed token for one session (see
//! [`token`](crate::token)), or in development mode a fixed token that opens
//! every session with every grant.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use deltamesh_proto::Grants;

use crate::token::{Access, TokenError, TokenVerifier};

/// The identity every development-token connection has.
pub const DEV_SUBJECT: &str = "dev";

/// Why a request is not authorized: 401 for a missing or refused token,
/// 403 for a good token used outside what it allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// No `Authorization` header.
    #[error("this request needs an `Authorization: Bearer <token>` header")]
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    Malformed,
    /// A bearer token that is not accepted.
    #[error("the bearer token is not accepted: {0}")]
    Rejected(String),
    /// The token is for another session: 403.
    #[error("the token is for another session")]
    WrongSession,
}

impl AuthError {
    /// Whether the token was good but does not reach this resource (403).
    pub(crate) fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::WrongSession)
    }
}

impl From<TokenError> for AuthError {
    fn from(error: TokenError) -> Self {
        AuthError::Rejected(error.to_string())
    }
}

/// What an accepted token lets a request do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The peer identity the token names.
    pub(crate) subject: String,
    /// The one session it opens, `None` for every session (development).
    pub(crate) session: Option<String>,
    /// The connection's grants.
    pub(crate) grants: Grants,
    /// The raw token, the key of the per-token rate limit.
    pub(crate) token: String,
    /// The token's expiry, seconds since the Unix epoch; `None` for the
    /// development token.
    pub(crate) expires_at: Option<u64>,
}

impl Caller {
    /// `Ok` when the caller may act in `session`.
    pub(crate) fn may_enter(&self, session: &str) -> Result<(), AuthError> {
        match &self.session {
            Some(own) if own != session => Err(AuthError::WrongSession),
            _ => Ok(()),
        }
    }
}

/// Checks the bearer token of a request.
#[derive(Debug, Clone)]
pub(crate) struct Authenticator {
    dev_token: String,
    verifier: Arc<TokenVerifier>,
}

impl Authenticator {
    /// Accepts tokens `verifier` verifies, and exactly `dev_token` (an empty
    /// one accepts nothing) for any session.
    pub(crate) fn new(dev_token: String, verifier: Arc<TokenVerifier>) -> Self {
        Authenticator {
            dev_token,
            verifier,
        }
    }

    /// The caller named by the bearer token in `headers`.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let value = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthError::Malformed);
        }
        if !self.dev_token.is_empty() && same_bytes(token.as_bytes(), self.dev_token.as_bytes()) {
            return Ok(Caller {
                subject: DEV_SUBJECT.to_owned(),
                session: None,
                grants: Grants::ALL,
                token: token.to_owned(),
                expires_at: None,
            });
        }
        if self.verifier.is_empty() {
            return Err(AuthError::Rejected("no such token".into()));
        }
        let Access {
            subject,
            session,
            grants,
            expires_at,
        } = self.verifier.verify(token)?;
        Ok(Caller {
            subject,
            session: Some(session),
            grants,
            token: token.to_owned(),
            expires_at: Some(expires_at),
        })
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

    fn check(auth: &Authenticator, value: Option<&str>) -> Result<Caller, AuthError> {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        auth.check(&headers)
    }

    fn dev(token: &str) -> Authenticator {
        Authenticator::new(token.into(), Arc::new(TokenVerifier::default()))
    }

    #[test]
    fn only_the_dev_token_as_a_bearer_token_is_accepted() {
        let auth = dev("s3cret");
        let caller = check(&auth, Some("Bearer s3cret")).unwrap();
        assert_eq!(caller.grants, Grants::ALL);
        assert_eq!(caller.may_enter("any-session"), Ok(()));
        assert!(check(&auth, Some("bearer  s3cret ")).is_ok());
        assert_eq!(check(&auth, None), Err(AuthError::Missing));
        assert_eq!(
            check(&auth, Some("Basic s3cret")),
            Err(AuthError::Malformed)
        );
        assert_eq!(check(&auth, Some("Bearer")), Err(AuthError::Malformed));
        assert!(matches!(
            check(&auth, Some("Bearer s3cre")),
            Err(AuthError::Rejected(_))
        ));
        assert!(matches!(
            check(&auth, Some("Bearer s3cret2")),
            Err(AuthError::Rejected(_))
        ));
    }

    #[test]
    fn an_empty_dev_token_accepts_nothing() {
        let auth = dev("");
        assert!(matches!(
            check(&auth, Some("Bearer x")),
            Err(AuthError::Rejected(_))
        ));
    }

    #[test]
    fn a_token_opens_its_own_session_only() {
        let caller = Caller {
            subject: "alice".into(),
            session: Some("a".into()),
            grants: Grants::default(),
            token: "t".into(),
            expires_at: None,
        };
        assert_eq!(caller.may_enter("a"), Ok(()));
        assert_eq!(caller.may_enter("b"), Err(AuthError::WrongSession));
        assert!(AuthError::WrongSession.is_forbidden());
        assert!(!AuthError::Missing.is_forbidden());
    }
}

//! Every way a request can fail, and how each is told to the client: an RFC
//! 9457 `application/problem+json` body `{"type","title","status","detail"}`
//! with the status PROTOCOL.md §1 gives it. `type` is a stable URN per kind;
//! the kind's short name also labels the failed-offer metric.

use std::time::Duration;

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::config::BODY_LIMIT;
use crate::network::NetworkError;
use crate::sdp::SdpError;

/// The media type of every error body.
const PROBLEM_JSON: &str = "application/problem+json";

/// A request signal refuses or could not serve.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// No accepted bearer token (401), or one that does not reach this
    /// resource (403).
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// Over a request rate limit: 429 with `Retry-After`.
    #[error("too many requests from this {scope}; retry in {retry_after:?}")]
    RateLimited {
        /// What is limited: `client address` or `token`.
        scope: &'static str,
        /// When the next request would be allowed.
        retry_after: Duration,
    },
    /// A session or peer id in the path breaks its rules: 400.
    #[error("{0}")]
    InvalidId(String),
    /// The body is not of the one media type the route takes: 415.
    #[error("Content-Type must be {0}")]
    UnsupportedMediaType(&'static str),
    /// The body is over [`BODY_LIMIT`]: 413.
    #[error("the body is over the limit of {BODY_LIMIT} bytes")]
    BodyTooLarge,
    /// The body could not be read (the client went away mid-way): 400.
    #[error("the body could not be read: {0}")]
    UnreadableBody(String),
    /// The body is not the SDP the route needs: 400.
    #[error(transparent)]
    BadSdp(#[from] SdpError),
    /// A PATCH without `If-Match`: 428.
    #[error("a PATCH needs If-Match: the peer's ETag from its POST, or * for an ICE restart")]
    MissingIfMatch,
    /// An `If-Match` that is neither one strong ETag nor `*`: 400.
    #[error("If-Match must be one quoted ETag, as the POST answered it, or *")]
    BadIfMatch,
    /// The network refused or failed; `retry_after` is set for the 503s.
    #[error("{error}")]
    Network {
        /// What the network said.
        error: NetworkError,
        /// The delay for `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The network cannot take new peers: `/readyz` is 503.
    #[error("not ready: {0}")]
    NotReady(String),
    /// No route has this path: 404.
    #[error("no resource at {0}")]
    NotFound(String),
    /// The route exists but not for this method: 405.
    #[error("{0} is not allowed on this resource")]
    MethodNotAllowed(Method),
    /// A `GET .../socket` that is not a WebSocket upgrade: 400.
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(&'static str),
    /// Signal itself could not build an answer: 500.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// `error` as told to the client; a 503 without a delay of its own gets
    /// `fallback_retry`.
    pub(crate) fn network(error: NetworkError, fallback_retry: Duration) -> Self {
        let retry_after = match &error {
            NetworkError::NoCapacity { retry_after, .. }
            | NetworkError::SessionFull { retry_after, .. } => Some(*retry_after),
            NetworkError::Unavailable(_) => Some(fallback_retry),
            _ => None,
        };
        ApiError::Network { error, retry_after }
    }

    /// The kind's short stable name: the end of the problem `type` and the
    /// `reason` label of failed offers.
    pub(crate) fn kind(&self) -> &'static str {
        self.describe().0
    }

    /// The HTTP status of the kind.
    pub(crate) fn status(&self) -> StatusCode {
        self.describe().1
    }

    /// `(kind, status, title)`: a title is the same for every problem of a kind.
    fn describe(&self) -> (&'static str, StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Unauthorized(error) if error.is_forbidden() => {
                ("forbidden", S::FORBIDDEN, "Token does not allow this")
            }
            ApiError::Unauthorized(_) => (
                "unauthorized",
                S::UNAUTHORIZED,
                "Missing or rejected bearer token",
            ),
            ApiError::RateLimited { .. } => {
                ("rate-limited", S::TOO_MANY_REQUESTS, "Too many requests")
            }
            ApiError::InvalidId(_) => ("invalid-id", S::BAD_REQUEST, "Invalid session or peer id"),
            ApiError::UnsupportedMediaType(_) => (
                "unsupported-media-type",
                S::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
            ),
            ApiError::BodyTooLarge => (
                "body-too-large",
                S::PAYLOAD_TOO_LARGE,
                "Request body too large",
            ),
            ApiError::UnreadableBody(_) => (
                "unreadable-body",
                S::BAD_REQUEST,
                "Request body could not be read",
            ),
            ApiError::BadSdp(_) => ("bad-sdp", S::BAD_REQUEST, "Malformed SDP"),
            ApiError::MissingIfMatch => (
                "if-match-required",
                S::PRECONDITION_REQUIRED,
                "If-Match required",
            ),
            ApiError::BadIfMatch => ("bad-if-match", S::BAD_REQUEST, "Malformed If-Match"),
            ApiError::Network { error, .. } => match error {
                NetworkError::BadOffer(_) => ("offer-refused", S::BAD_REQUEST, "Offer refused"),
                NetworkError::UnknownPeer => ("unknown-peer", S::NOT_FOUND, "Unknown peer"),
                NetworkError::NotOwner => ("forbidden", S::FORBIDDEN, "Token does not allow this"),
                NetworkError::SessionFull { .. } => {
                    ("session-full", S::SERVICE_UNAVAILABLE, "Session is full")
                }
                NetworkError::EtagMismatch => (
                    "etag-mismatch",
                    S::PRECONDITION_FAILED,
                    "ETag does not match",
                ),
                NetworkError::Unsupported(_) => {
                    ("not-implemented", S::NOT_IMPLEMENTED, "Not implemented")
                }
                NetworkError::NoCapacity { .. } => (
                    "no-capacity",
                    S::SERVICE_UNAVAILABLE,
                    "No relay has capacity",
                ),
                NetworkError::Timeout(_) => {
                    ("network-timeout", S::GATEWAY_TIMEOUT, "Network timed out")
                }
                NetworkError::Unavailable(_) => (
                    "network-unavailable",
                    S::SERVICE_UNAVAILABLE,
                    "Network unavailable",
                ),
            },
            ApiError::NotReady(_) => ("not-ready", S::SERVICE_UNAVAILABLE, "Not ready"),
            ApiError::NotFound(_) => ("not-found", S::NOT_FOUND, "Not found"),
            ApiError::MethodNotAllowed(_) => (
                "method-not-allowed",
                S::METHOD_NOT_ALLOWED,
                "Method not allowed",
            ),
            ApiError::NotUpgrade(_) => ("not-websocket", S::BAD_REQUEST, "Not a WebSocket upgrade"),
            ApiError::Internal(_) => ("internal", S::INTERNAL_SERVER_ERROR, "Internal error"),
        }
    }
}

/// The RFC 9457 body.
#[derive(Serialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, status, title) = self.describe();
        let problem = Problem {
            kind: format!("urn:deltamesh:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
        };
        // A struct of strings and a number always serializes.
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, [(CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        let headers = response.headers_mut();
        let retry_after = match self {
            ApiError::Network { retry_after, .. } => retry_after,
            ApiError::RateLimited { retry_after, .. } => Some(retry_after),
            _ => None,
        };
        if let Some(delay) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(delay)));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: no error code when the request carried no token.
            let challenge = match self {
                ApiError::Unauthorized(AuthError::Missing) => "Bearer",
                _ => "Bearer error=\"invalid_token\"",
            };
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// `Retry-After` in whole seconds: rounded up, at least 1.
fn retry_after_secs(delay: Duration) -> u64 {
    let rounded_up = delay
        .as_secs()
        .saturating_add(u64::from(delay.subsec_nanos() > 0));
    rounded_up.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_of_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }
}

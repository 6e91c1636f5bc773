//! Request bodies: the one media type a route takes, and reading at most
//! [`BODY_LIMIT`](crate::BODY_LIMIT) bytes (the limit itself is the router's
//! `DefaultBodyLimit` layer, so an oversize body is a 413 problem, not
//! axum's plain-text one).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};

use crate::problem::ApiError;

/// The media type of an offer and an answer.
pub(super) const SDP: &str = "application/sdp";

/// The media type of a trickle or ICE restart PATCH (RFC 8840).
pub(super) const TRICKLE_ICE: &str = "application/trickle-ice-sdpfrag";

/// `Ok` when `Content-Type` is `expected`, in any case, parameters such as
/// `; charset=utf-8` aside; else a 415.
pub(super) fn require_content_type(
    headers: &HeaderMap,
    expected: &'static str,
) -> Result<(), ApiError> {
    let matches = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(expected));
    if matches {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(expected))
    }
}

/// The whole body of `request`: a 413 past the limit, a 400 if the client
/// broke off.
pub(super) async fn read(request: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge
            } else {
                ApiError::UnreadableBody(rejection.body_text())
            }
        })
}

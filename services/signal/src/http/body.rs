//! Request bodies: every body is read before the request is judged
//! ([`read_first`]), so an early error answer (bad id, token, content type,
//! rate) reaches a client that is still writing its body instead of a
//! connection reset; the one media type a route takes; and reading at most
//! [`BODY_LIMIT`] bytes (413 past it).

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::BODY_LIMIT;
use crate::problem::ApiError;

/// Bytes past [`BODY_LIMIT`] that are still read (and thrown away) so that
/// the client of an oversize body sees its 413; a longer body is answered
/// and the connection closed.
const DRAIN_LIMIT: usize = 1024 * 1024;
/// How long a body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The whole body of `request`, which [`read_first`] has already read
/// and bounded.
pub(super) async fn read(request: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, &())
        .await
        .map_err(|rejection| ApiError::UnreadableBody(rejection.body_text()))
}

/// Reads the whole body (at most [`BODY_LIMIT`] bytes kept, up to
/// [`DRAIN_LIMIT`] more drained) before the request goes on, so that no
/// answer is sent while the client is still writing: answering early and
/// closing with unread bytes makes the kernel reset the connection, and the
/// client never sees the answer. Memory per request stays bounded.
pub(super) async fn read_first(request: Request, next: Next) -> Response {
    let (parts, mut body) = request.into_parts();
    let mut kept = Vec::new();
    let mut total = 0usize;
    let read = tokio::time::timeout(BODY_TIMEOUT, async {
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(|error| ApiError::UnreadableBody(error.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total = total.saturating_add(data.len());
            if total <= BODY_LIMIT {
                kept.extend_from_slice(&data);
            } else if total > BODY_LIMIT + DRAIN_LIMIT {
                break;
            }
        }
        Ok(())
    })
    .await;
    let outcome = match read {
        Ok(Ok(())) if total > BODY_LIMIT => Err(ApiError::BodyTooLarge),
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(ApiError::UnreadableBody(format!(
            "the body did not arrive within {BODY_TIMEOUT:?}"
        ))),
    };
    match outcome {
        Ok(()) => next.run(Request::from_parts(parts, Body::from(kept))).await,
        Err(error) => error.into_response(),
    }
}

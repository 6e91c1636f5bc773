//! CORS, so that pages on any origin can signal from a browser: preflight
//! answers for the `/v1` resources, and the headers that let scripts read
//! every response (including `Location`, `ETag`, `Retry-After` and the ICE
//! servers' `Link`s).

use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::body::SDP;

/// The methods of `/v1/sessions/{session}/peers`.
pub(super) const COLLECTION_METHODS: &str = "GET, POST, OPTIONS";

/// The methods of `/v1/sessions/{session}/peers/{peer}`.
pub(super) const PEER_METHODS: &str = "PATCH, DELETE, OPTIONS";

/// WHIP's header naming the media types a resource takes in a POST.
const ACCEPT_POST: HeaderName = HeaderName::from_static("accept-post");

/// The `204` answer to a preflight `OPTIONS` on a resource with `methods`.
pub(super) fn preflight(methods: &'static str) -> Response {
    let headers = [
        (ACCESS_CONTROL_ALLOW_METHODS, methods),
        (
            ACCESS_CONTROL_ALLOW_HEADERS,
            "Authorization, Content-Type, If-Match, traceparent, tracestate",
        ),
        (ACCESS_CONTROL_MAX_AGE, "86400"),
        (ACCEPT_POST, SDP),
    ];
    (StatusCode::NO_CONTENT, headers).into_response()
}

/// Adds the headers that let a page on any origin read `response`.
pub(super) async fn expose(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Retry-After, Accept-Post, Link"),
    );
    response
}

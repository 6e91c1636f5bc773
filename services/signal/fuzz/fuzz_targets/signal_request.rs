//! Signal's public router on arbitrary HTTP requests: it never panics, never
//! wedges (libFuzzer's `-timeout`), never answers 5xx (its network below never
//! fails), answers every error outside the web bundle's `/pkg/` as an
//! `application/problem+json` problem, and serves what lies outside the
//! bundle's `pkg/` only at `/`.
//!
//! An input is HTTP/1.1 request text, as hyper hands it to the router: the
//! request line `METHOD TARGET VERSION` (the version is ignored), `Name: value`
//! header lines, an empty line, then the body (all the rest). Lines end in LF
//! or CRLF. An input no `http::Request` can hold (a bad method, target or
//! header) is skipped: hyper refuses those before signal sees them. The seeds
//! (`corpus/signal_request/seed-*`) are written by
//! `services/signal/tests/seed_corpus.rs`.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;
use tower::ServiceExt;

#[path = "../fuzzed_signal.rs"]
mod fuzzed_signal;

// ---- the target

/// Text of the bundle's `index.html`, outside `pkg/`: only `GET /` serves it.
const OUTSIDE_PKG: &[u8] = b"signal fuzz: outside pkg/";

/// Signal and the runtime it runs on, built once.
static SIGNAL: LazyLock<(Runtime, Router)> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    (runtime, fuzzed_signal::signal(fuzz_dir))
});

fuzz_target!(|data: &[u8]| {
    let Some(request) = request(data) else {
        return;
    };
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let (runtime, signal) = &*SIGNAL;
    let (status, content_type, body) = runtime.block_on(async {
        let response = signal
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|never| match never {});
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("a response body reads");
        (parts.status, parts.headers.get(CONTENT_TYPE).cloned(), body)
    });
    let answer = || {
        format!(
            "{method} {path}: {status}\n{}",
            String::from_utf8_lossy(&body)
        )
    };

    assert!(!status.is_server_error(), "{}", answer());
    let in_bundle = path == "/pkg" || path.starts_with("/pkg/");
    if status.is_client_error() && !in_bundle {
        assert_eq!(
            content_type.as_ref().map(HeaderValue::as_bytes),
            Some(&b"application/problem+json"[..]),
            "{}",
            answer()
        );
    }
    if body.windows(OUTSIDE_PKG.len()).any(|w| w == OUTSIDE_PKG) {
        assert_eq!(path, "/", "{}", answer());
    }
});

/// `data` as the request hyper would hand signal, when it can be one.
fn request(data: &[u8]) -> Option<Request<Body>> {
    let (request_line, mut rest) = line(data);
    let mut words = request_line.split(|&b| b == b' ');
    let method = Method::from_bytes(words.next()?).ok()?;
    let uri = Uri::try_from(words.next()?).ok()?;
    let mut request = Request::builder().method(method).uri(uri);
    while !rest.is_empty() {
        let (header, after) = line(rest);
        rest = after;
        if header.is_empty() {
            break;
        }
        let colon = header.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&header[..colon]).ok()?;
        let value = HeaderValue::from_bytes(header[colon + 1..].trim_ascii()).ok()?;
        // hyper frames the body itself: the length below is the real one.
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            request = request.header(name, value);
        }
    }
    if !rest.is_empty() {
        request = request.header(CONTENT_LENGTH, rest.len());
    }
    request.body(Body::from(rest.to_vec())).ok()
}

/// The first line of `data` without its LF or CRLF, and what follows it.
fn line(data: &[u8]) -> (&[u8], &[u8]) {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(end) => (&data[..end], &data[end + 1..]),
        None => (data, &data[data.len()..]),
    };
    (line.strip_suffix(b"\r").unwrap_or(line), rest)
}

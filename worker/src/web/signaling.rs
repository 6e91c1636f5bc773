//! The HTTP half of connecting, from the worker: ask `signal` for the ICE
//! servers with an authenticated `OPTIONS` (§10), `POST` the offer and read
//! the answer (PROTOCOL §1), `PATCH` late candidates (trickle), `DELETE`
//! the peer resource on close. Every failure becomes a [`SignalError`] that says what happened and
//! whether the server asked for a pause (`Retry-After`).

use std::fmt;
use std::time::Duration;

use deltamesh_proto::trace::{TRACEPARENT, random_traceparent};
use js_sys::JSON;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, Headers, Request, RequestInit, Response, WorkerGlobalScope};

use super::js::{error_text, get};
use super::messages::Config;
use crate::ice_restart::RestartFrag;
use crate::ice_servers::{IceServer, parse_links};
use crate::trickle;

/// How long one request may take before it is abandoned.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay's answer to an offer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The SDP answer.
    pub sdp: String,
    /// The peer resource's URL (from `Location`), for `PATCH` and `DELETE`.
    pub resource: String,
    /// The resource's `ETag` as sent (quoted), for `If-Match` on a trickle.
    pub etag: Option<String>,
}

/// What a request carries.
enum Body<'a> {
    /// An SDP offer (and a fresh `traceparent`).
    Offer(&'a str),
    /// Trickled candidates for the resource whose ETag is `etag`.
    Trickle { etag: &'a str, sdpfrag: String },
}

/// Why an offer got no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalError {
    /// `signal` answered with an error status.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The problem's title and detail, or the body's start.
        detail: String,
        /// How long the server asked clients to wait, if it did.
        retry_after: Option<Duration>,
    },
    /// No HTTP answer: connection refused, DNS, CORS, or the timeout.
    Unreachable(String),
    /// A success status without a usable answer.
    BadAnswer(String),
}

impl SignalError {
    /// Whether the token was refused (401 or 403): trying again with the
    /// same token cannot help.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            SignalError::Refused {
                status: 401 | 403,
                ..
            }
        )
    }

    /// The pause the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SignalError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalError::Refused { status, detail, .. } => {
                write!(f, "signal answered {status}: {detail}")
            }
            SignalError::Unreachable(why) => write!(f, "signal is unreachable: {why}"),
            SignalError::BadAnswer(why) => write!(f, "signal's answer is unusable: {why}"),
        }
    }
}

/// The peers collection of `config.session`.
fn collection(config: &Config) -> String {
    format!(
        "{}/v1/sessions/{}/peers",
        config.signal_url.trim_end_matches('/'),
        config.session
    )
}

/// The ICE servers signal lists for this token (an authenticated
/// `OPTIONS` of the peers collection: TURN credentials included).
pub async fn ice_servers(config: &Config) -> Result<Vec<IceServer>, SignalError> {
    let response = fetch("OPTIONS", &collection(config), &config.token, None).await?;
    if response.status() != 204 && response.status() != 200 {
        return Err(refusal(&response, &body_text(&response).await));
    }
    let links = response.headers().get("link").ok().flatten();
    Ok(parse_links(links.as_deref()))
}

/// Sends `candidates` (`a=candidate:` lines) to the peer resource whose
/// ETag is `etag`, as an sdpfrag.
pub async fn trickle(
    resource: &str,
    token: &str,
    etag: &str,
    candidates: &[String],
) -> Result<(), SignalError> {
    let body = Body::Trickle {
        etag,
        sdpfrag: trickle::sdpfrag(candidates),
    };
    let response = fetch("PATCH", resource, token, Some(body)).await?;
    if response.status() != 204 {
        return Err(refusal(&response, &body_text(&response).await));
    }
    Ok(())
}

/// Restarts ICE on the peer resource (`PATCH` with `If-Match: *` and the
/// new `ufrag`/`pwd`); returns the relay's sdpfrag and the new `ETag`.
pub async fn restart_ice(
    resource: &str,
    token: &str,
    ufrag: String,
    pwd: String,
) -> Result<(RestartFrag, Option<String>), SignalError> {
    let ours = RestartFrag {
        ufrag,
        pwd,
        candidates: Vec::new(),
    };
    let body = Body::Trickle {
        etag: "*",
        sdpfrag: ours.to_sdpfrag("0"),
    };
    let response = fetch("PATCH", resource, token, Some(body)).await?;
    let text = body_text(&response).await;
    if response.status() != 200 {
        return Err(refusal(&response, &text));
    }
    let theirs = RestartFrag::parse(&text).ok_or_else(|| {
        SignalError::BadAnswer("the ICE restart answer has no ice-ufrag and ice-pwd".into())
    })?;
    Ok((theirs, response.headers().get("etag").ok().flatten()))
}

/// An error status as a [`SignalError`], with the server's `Retry-After`.
fn refusal(response: &Response, text: &str) -> SignalError {
    SignalError::Refused {
        status: response.status(),
        detail: problem_detail(text, &response.status_text()),
        retry_after: response
            .headers()
            .get("retry-after")
            .ok()
            .flatten()
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
    }
}

/// Posts `offer` for `config.session` and returns the relay's answer.
pub async fn post_offer(config: &Config, offer: &str) -> Result<Answer, SignalError> {
    let url = collection(config);
    let response = fetch("POST", &url, &config.token, Some(Body::Offer(offer))).await?;
    let status = response.status();
    let text = body_text(&response).await;
    if status != 201 {
        return Err(refusal(&response, &text));
    }
    let location = response
        .headers()
        .get("location")
        .ok()
        .flatten()
        .ok_or_else(|| SignalError::BadAnswer("201 without a Location".into()))?;
    if !text.starts_with("v=0") {
        return Err(SignalError::BadAnswer(
            "the body is not an SDP answer".into(),
        ));
    }
    let resource = if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", config.signal_url.trim_end_matches('/'))
    };
    Ok(Answer {
        sdp: text,
        resource,
        etag: response.headers().get("etag").ok().flatten(),
    })
}

/// Why signal refused the lane socket of `config.session`, asked after a
/// WebSocket closed before it opened (a browser cannot read a refused
/// upgrade): the same `GET` over `fetch`, with the token as a header,
/// judged as the upgrade was (rate, token, session) up to the upgrade
/// itself. `None`: signal accepts it that far (its `400
/// not-websocket`), so the refusal came later (no relay, the relay's
/// lane) or the network dropped the socket.
pub async fn socket_refusal(config: &Config) -> Option<SignalError> {
    let url = format!(
        "{}/v1/sessions/{}/socket",
        config.signal_url.trim_end_matches('/'),
        config.session
    );
    let response = match fetch("GET", &url, &config.token, None).await {
        Ok(response) => response,
        Err(error) => return Some(error),
    };
    let text = body_text(&response).await;
    let not_upgrade = response.status() == 400
        && JSON::parse(&text)
            .ok()
            .and_then(|problem| get(&problem, "type").as_string())
            .is_some_and(|kind| kind.ends_with(":not-websocket"));
    (response.status() >= 400 && !not_upgrade).then(|| refusal(&response, &text))
}

/// Deletes the peer resource (leaving the session at once rather than when
/// the relay notices the silence). Best effort: failures are only logged.
pub async fn delete(resource: &str, token: &str) {
    match fetch("DELETE", resource, token, None).await {
        Ok(response) if response.status() == 204 || response.status() == 404 => {}
        Ok(response) => tracing::warn!(status = response.status(), "DELETE of {resource} failed"),
        Err(error) => tracing::warn!("DELETE of {resource} failed: {error}"),
    }
}

async fn fetch(
    method: &str,
    url: &str,
    token: &str,
    body: Option<Body<'_>>,
) -> Result<Response, SignalError> {
    let unreachable = |e: JsValue| SignalError::Unreachable(error_text(&e));
    let scope: WorkerGlobalScope = js_sys::global().unchecked_into();
    let headers = Headers::new().map_err(unreachable)?;
    headers
        .set("authorization", &format!("Bearer {token}"))
        .map_err(unreachable)?;
    let init = RequestInit::new();
    init.set_method(method);
    match body {
        Some(Body::Offer(sdp)) => {
            headers
                .set("content-type", "application/sdp")
                .map_err(unreachable)?;
            // Each connection is one trace, which the services continue.
            let traceparent = random_traceparent();
            tracing::info!(%traceparent, "posting the offer");
            headers
                .set(TRACEPARENT, &traceparent)
                .map_err(unreachable)?;
            init.set_body(&JsValue::from_str(sdp));
        }
        Some(Body::Trickle { etag, sdpfrag }) => {
            headers
                .set("content-type", "application/trickle-ice-sdpfrag")
                .map_err(unreachable)?;
            headers.set("if-match", etag).map_err(unreachable)?;
            init.set_body(&JsValue::from_str(&sdpfrag));
        }
        None => {}
    }
    init.set_headers(&headers);
    let abort = AbortController::new().map_err(unreachable)?;
    init.set_signal(Some(&abort.signal()));
    let request = Request::new_with_str_and_init(url, &init).map_err(unreachable)?;
    let timer = {
        let abort = abort.clone();
        let on_timeout = Closure::once_into_js(move || abort.abort());
        scope
            .set_timeout_with_callback_and_timeout_and_arguments_0(
                on_timeout.unchecked_ref(),
                REQUEST_TIMEOUT.as_millis() as i32,
            )
            .map_err(unreachable)?
    };
    let result = JsFuture::from(scope.fetch_with_request(&request)).await;
    scope.clear_timeout_with_handle(timer);
    match result {
        Ok(response) => Ok(response.unchecked_into()),
        Err(_) if abort.signal().aborted() => Err(SignalError::Unreachable(format!(
            "no answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
        Err(error) => Err(unreachable(error)),
    }
}

async fn body_text(response: &Response) -> String {
    let Ok(promise) = response.text() else {
        return String::new();
    };
    match JsFuture::from(promise).await {
        Ok(text) => text.as_string().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The problem+json title and detail, or the start of a non-JSON body.
fn problem_detail(body: &str, status_text: &str) -> String {
    if let Ok(problem) = JSON::parse(body) {
        let title = get(&problem, "title").as_string().unwrap_or_default();
        let detail = get(&problem, "detail").as_string().unwrap_or_default();
        match (title.is_empty(), detail.is_empty()) {
            (false, false) => return format!("{title}: {detail}"),
            (false, true) => return title,
            (true, false) => return detail,
            (true, true) => {}
        }
    }
    let start: String = body.chars().take(200).collect();
    if start.trim().is_empty() {
        status_text.to_owned()
    } else {
        start
    }
}

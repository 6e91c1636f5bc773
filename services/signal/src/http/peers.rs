//! The `/v1` API: one resource per peer connection. Each handler checks what
//! came from outside in a fixed order (rate and token, path ids and the
//! token's session, content type, preconditions, body), asks the network,
//! and answers; a refusal at any step is a problem, logged at warn.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, LINK, LOCATION};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use deltamesh_proto::Id;
use deltamesh_proto::trace::{self, attribute};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{KeyValue, global};
use serde::Serialize;

use super::App;
use super::body::{self, SDP, TRICKLE_ICE};
use super::cors;
use crate::auth::Caller;
use crate::ice_servers::Holder;
use crate::network::{ConnectRequest, ICE_RESTART, Network, PeerInfo};
use crate::problem::ApiError;
use crate::{etag, ids, sdp};

/// Path parameters, with a failure to decode them kept for the handler so it
/// becomes a problem in the handler's order of checks.
pub(super) type PathParams<T> = Result<Path<T>, PathRejection>;

/// `POST /v1/sessions/{session}/peers`: a new peer connection from an SDP
/// offer, answered `201` with the SDP answer.
pub(super) async fn create<N: Network>(
    State(app): State<Arc<App<N>>>,
    path: PathParams<String>,
    request: Request,
) -> Response {
    let headers = request.headers();
    let parent = trace::extract(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    let tracer = global::tracer("deltamesh-signal");
    let span = tracer
        .span_builder("POST /v1/sessions/{session}/peers")
        .with_kind(SpanKind::Server)
        .start_with_context(&tracer, &parent);
    let trace = parent.with_span(span);
    let result = offer(&app, path, request, &trace).await;
    let span = trace.span();
    match &result {
        Ok(_) => app.metrics.offer_accepted(),
        Err(error) => {
            app.metrics.offer_failed(error.kind());
            span.set_status(Status::error(error.to_string()));
        }
    }
    let response = answer("offer", result);
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(response.status().as_u16()),
    ));
    response
}

async fn offer<N: Network>(
    app: &App<N>,
    path: PathParams<String>,
    request: Request,
    trace: &opentelemetry::Context,
) -> Result<Response, ApiError> {
    let caller = app.admit(&request)?;
    let session = session(path)?;
    trace
        .span()
        .set_attribute(KeyValue::new(attribute::SESSION, session.clone()));
    caller.may_enter(&session)?;
    body::require_content_type(request.headers(), SDP)?;
    let body = body::read(request).await?;
    let offer_sdp = sdp::check_offer(&body)?.to_owned();
    let connect = ConnectRequest {
        session: session.clone(),
        identity: caller.subject.clone(),
        grants: caller.grants,
        offer_sdp,
        trace: trace.clone(),
    };
    let connected = app
        .network
        .connect(connect)
        .await
        .map_err(|e| app.network_error(e))?;

    let etag = etag::header(&connected.ice_ufrag)?;
    let location = format!("/v1/sessions/{session}/peers/{}", connected.peer_id);
    let location = HeaderValue::try_from(location)
        .map_err(|_| ApiError::Internal("the Location header could not be built".to_owned()))?;
    trace.span().set_attributes([
        KeyValue::new(attribute::PEER_ID, connected.peer_id.to_string()),
        KeyValue::new(attribute::RELAY_ID, connected.relay_id.to_string()),
    ]);
    tracing::info!(
        session,
        peer = %connected.peer_id,
        relay = %connected.relay_id,
        trace_id = %trace::trace_id(trace),
        "offer accepted"
    );
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(SDP)),
        (LOCATION, location),
        (ETAG, etag),
    ];
    let mut response = (StatusCode::CREATED, headers, connected.answer_sdp).into_response();
    add_ice_servers(app, Some(&caller), &mut response);
    Ok(response)
}

/// `OPTIONS /v1/sessions/{session}/peers`: the CORS preflight answer and
/// the ICE servers (§10). A request with a token (not a preflight: browsers
/// send none there) must carry a valid one for the session and gets TURN
/// credentials bound to it; one without gets the STUN servers only.
pub(super) async fn options<N: Network>(
    State(app): State<Arc<App<N>>>,
    path: PathParams<String>,
    request: Request,
) -> Response {
    answer("ice servers", ice_servers(&app, path, request))
}

fn ice_servers<N: Network>(
    app: &App<N>,
    path: PathParams<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = if request.headers().contains_key(AUTHORIZATION) {
        let caller = app.admit(&request)?;
        caller.may_enter(&session(path)?)?;
        Some(caller)
    } else {
        None
    };
    let mut response = cors::preflight(cors::COLLECTION_METHODS);
    add_ice_servers(app, caller.as_ref(), &mut response);
    Ok(response)
}

/// Appends the configured ICE servers to `response` as `Link` headers, with
/// TURN credentials for `caller` when there is one.
fn add_ice_servers<N>(app: &App<N>, caller: Option<&Caller>, response: &mut Response) {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let holder = caller.map(|caller| Holder {
        identity: &caller.subject,
        expires_at: caller.expires_at,
    });
    let headers = response.headers_mut();
    for link in app.config.ice_servers.links(holder, now_unix) {
        headers.append(LINK, link);
    }
}

/// `PATCH /v1/sessions/{session}/peers/{peer}`: trickled ICE candidates
/// (`204` when the network took them), or an ICE restart with
/// `If-Match: *` (`200` with the relay's sdpfrag).
pub(super) async fn trickle<N: Network>(
    State(app): State<Arc<App<N>>>,
    path: PathParams<(String, String)>,
    request: Request,
) -> Response {
    answer("trickle", trickle_ice(&app, path, request).await)
}

async fn trickle_ice<N: Network>(
    app: &App<N>,
    path: PathParams<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = app.admit(&request)?;
    let (session, peer) = session_and_peer(path)?;
    caller.may_enter(&session)?;
    body::require_content_type(request.headers(), TRICKLE_ICE)?;
    let if_match = etag::if_match(request.headers())?.to_owned();
    let body = body::read(request).await?;
    if if_match == ICE_RESTART {
        return restart_ice(app, &session, peer, &caller.subject, &body).await;
    }
    let candidates = sdp::trickle_candidates(&body)?;
    app.network
        .trickle(&session, peer, &caller.subject, Some(&if_match), candidates)
        .await
        .map_err(|e| app.network_error(e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// An ICE restart (`If-Match: *`, RFC 9725 §4.4): the peer's new
/// credentials and candidates to the network, answered `200` with the
/// relay's new ones as an sdpfrag and the new `ETag`.
async fn restart_ice<N: Network>(
    app: &App<N>,
    session: &str,
    peer: Id,
    identity: &str,
    body: &[u8],
) -> Result<Response, ApiError> {
    let (restart, mid) = sdp::ice_restart(body)?;
    let answer = app
        .network
        .restart_ice(session, peer, identity, restart)
        .await
        .map_err(|e| app.network_error(e))?;
    let etag = etag::header(&answer.ufrag)?;
    tracing::info!(session, %peer, "ICE restarted");
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static(TRICKLE_ICE)),
        (ETAG, etag),
    ];
    let frag = sdp::ice_restart_answer(&answer, mid.as_deref());
    Ok((StatusCode::OK, headers, frag).into_response())
}

/// `DELETE /v1/sessions/{session}/peers/{peer}`: closes the peer connection.
pub(super) async fn delete<N: Network>(
    State(app): State<Arc<App<N>>>,
    path: PathParams<(String, String)>,
    request: Request,
) -> Response {
    answer("delete", disconnect(&app, path, request).await)
}

async fn disconnect<N: Network>(
    app: &App<N>,
    path: PathParams<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = app.admit(&request)?;
    let (session, peer) = session_and_peer(path)?;
    caller.may_enter(&session)?;
    app.network
        .disconnect(&session, peer, &caller.subject)
        .await
        .map_err(|e| app.network_error(e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/sessions/{session}/peers`: the session's peers as JSON.
pub(super) async fn list<N: Network>(
    State(app): State<Arc<App<N>>>,
    path: PathParams<String>,
    request: Request,
) -> Response {
    answer("list", list_peers(&app, path, request).await)
}

async fn list_peers<N: Network>(
    app: &App<N>,
    path: PathParams<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let caller = app.admit(&request)?;
    let session = session(path)?;
    caller.may_enter(&session)?;
    let peers = app
        .network
        .peers(&session)
        .await
        .map_err(|e| app.network_error(e))?;
    Ok(Json(peers.iter().map(PeerJson::from).collect::<Vec<_>>()).into_response())
}

/// One element of the `GET .../peers` array.
#[derive(Serialize)]
struct PeerJson {
    peer_id: String,
    relay_id: String,
    state: &'static str,
    joined_at: String,
}

impl From<&PeerInfo> for PeerJson {
    fn from(peer: &PeerInfo) -> Self {
        PeerJson {
            peer_id: peer.peer_id.to_string(),
            relay_id: peer.relay_id.to_string(),
            state: peer.state.as_str(),
            joined_at: rfc3339(peer.joined_at),
        }
    }
}

/// `time` as RFC 3339 UTC with milliseconds, clamped to the years 1970 to
/// 9999 that the format (and humantime) can write.
fn rfc3339(time: SystemTime) -> String {
    const LAST: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .min(LAST);
    humantime::format_rfc3339_millis(UNIX_EPOCH + since_epoch).to_string()
}

/// The checked `{session}`.
pub(super) fn session(path: PathParams<String>) -> Result<String, ApiError> {
    let Path(session) = path.map_err(|rejection| ApiError::InvalidId(rejection.body_text()))?;
    ids::session(session)
}

/// The checked `{session}` and `{peer}`.
fn session_and_peer(path: PathParams<(String, String)>) -> Result<(String, Id), ApiError> {
    let Path((session, peer)) =
        path.map_err(|rejection| ApiError::InvalidId(rejection.body_text()))?;
    Ok((ids::session(session)?, ids::peer(&peer)?))
}

/// `result` as the response, with a refusal logged.
pub(super) fn answer(action: &'static str, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| {
        tracing::warn!(
            action,
            kind = error.kind(),
            status = error.status().as_u16(),
            "{error}"
        );
        error.into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_times_are_rfc3339_utc_and_never_out_of_range() {
        let time = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(time), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.000Z");
    }
}

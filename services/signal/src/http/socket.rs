//! `GET /v1/sessions/{session}/socket` (PROTOCOL §11): the WebSocket lane.
//! The request is judged as an offer is (rate and token, from the
//! `Authorization` header or, for browsers, `?access_token=`; the path's
//! session and the token's; then that it is a WebSocket upgrade), and
//! every refusal is a problem before the upgrade. The network then places
//! the peer on a relay, which admits it and issues a ticket; signal opens
//! the relay's lane socket with it, answers `101`, and forwards messages
//! between the two sockets, one at a time each way, so a side that does
//! not read holds back the other and back-pressure reaches both ends.
//! Signal never judges a message: the relay does, as for WebRTC.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::header::{
    AUTHORIZATION, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use deltamesh_proto::trace::{self, attribute};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{KeyValue, global};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::App;
use super::peers::{PathParams, answer, session};
use crate::network::{Network, NetworkError, SocketRequest};
use crate::problem::ApiError;

/// Longest signal waits for the relay's lane to take the socket.
const RELAY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often signal pings the client.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A client socket silent this long (not even a pong) is closed.
const CLIENT_SILENCE: Duration = Duration::from_secs(15);
/// How long the other direction may take to finish once one side closed.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The largest message forwarded: any channel's message with its id byte,
/// up to SCTP's message limit on WebRTC (1 MiB). The relay judges each
/// channel's own limit.
const MAX_MESSAGE: usize = (1 << 20) + 1;

/// What each of a forwarded socket's two WebSockets reads per call: small,
/// since signal holds two per lane peer, most of them idle (tungstenite's
/// default, 128 KiB, allocated up front, made an idle lane peer cost about
/// 400 KiB of process memory).
const READ_BUFFER: usize = 8 * 1024;

fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// `GET /v1/sessions/{session}/socket`.
pub(super) async fn open<N: Network>(
    State(app): State<Arc<App<N>>>,
    path: PathParams<String>,
    request: Request,
) -> Response {
    answer("socket", upgrade(&app, path, request).await)
}

async fn upgrade<N: Network>(
    app: &App<N>,
    path: PathParams<String>,
    mut request: Request,
) -> Result<Response, ApiError> {
    token_from_query(&mut request);
    let parent = trace::extract(|name| request.headers().get(name).and_then(|v| v.to_str().ok()));
    let tracer = global::tracer("deltamesh-signal");
    let span = tracer
        .span_builder("GET /v1/sessions/{session}/socket")
        .with_kind(SpanKind::Server)
        .start_with_context(&tracer, &parent);
    let trace = parent.with_span(span);
    let caller = app.admit(&request)?;
    let session = session(path)?;
    caller.may_enter(&session)?;
    let key = websocket_key(request.headers())?;
    let on_upgrade = hyper::upgrade::on(&mut request);
    let placed = app
        .network
        .open_socket(SocketRequest {
            session: session.clone(),
            identity: caller.subject,
            grants: caller.grants,
            trace: trace.clone(),
        })
        .await
        .map_err(|e| app.network_error(e))?;
    let connected = tokio::time::timeout(
        RELAY_CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(&placed.url, Some(socket_config()), true),
    )
    .await;
    let relay = match connected {
        Ok(Ok((relay, _))) => relay,
        Ok(Err(error)) => {
            return Err(app.network_error(NetworkError::Unavailable(format!(
                "the relay's WebSocket lane: {error}"
            ))));
        }
        Err(_) => {
            return Err(app.network_error(NetworkError::Timeout("the relay's WebSocket lane")));
        }
    };
    trace.span().set_attributes([
        KeyValue::new(attribute::SESSION, session.clone()),
        KeyValue::new(attribute::PEER_ID, placed.peer_id.to_string()),
        KeyValue::new(attribute::RELAY_ID, placed.relay_id.to_string()),
    ]);
    tracing::info!(
        session,
        peer = %placed.peer_id,
        relay = %placed.relay_id,
        trace_id = %trace::trace_id(&trace),
        "socket accepted"
    );
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let client = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(socket_config()),
            )
            .await;
            forward(client, relay).await;
        }
    });
    let accept = HeaderValue::try_from(derive_accept_key(key.as_bytes()))
        .map_err(|_| ApiError::Internal("the accept key could not be built".into()))?;
    let headers = [
        (UPGRADE, HeaderValue::from_static("websocket")),
        (CONNECTION, HeaderValue::from_static("Upgrade")),
        (SEC_WEBSOCKET_ACCEPT, accept),
    ];
    Ok((StatusCode::SWITCHING_PROTOCOLS, headers).into_response())
}

/// A browser cannot set `Authorization` on a WebSocket: its token comes as
/// `?access_token=` (RFC 6750 §2.3), used only when there is no header.
fn token_from_query(request: &mut Request) {
    if request.headers().contains_key(AUTHORIZATION) {
        return;
    }
    let Ok(Query(query)) = Query::<HashMap<String, String>>::try_from_uri(request.uri()) else {
        return;
    };
    if let Some(token) = query.get("access_token")
        && let Ok(value) = HeaderValue::try_from(format!("Bearer {token}"))
    {
        request.headers_mut().insert(AUTHORIZATION, value);
    }
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade request (RFC 6455 §4.2.1).
fn websocket_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(UPGRADE, "websocket") {
        return Err(ApiError::NotUpgrade("`Upgrade: websocket` is required"));
    }
    if !has_token(CONNECTION, "upgrade") {
        return Err(ApiError::NotUpgrade("`Connection: Upgrade` is required"));
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(ApiError::NotUpgrade(
            "`Sec-WebSocket-Version: 13` is required",
        ));
    }
    headers
        .get(SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .ok_or(ApiError::NotUpgrade("`Sec-WebSocket-Key` is required"))
}

/// Forwards messages between the client's socket and the relay's until
/// either closes; a close (its code and reason) goes on to the other side.
/// The two directions run side by side, each waiting for its own writes
/// only, so a client busy writing can still be read from and the other way
/// round. Pings and pongs are each hop's own: signal pings the client and
/// closes a client silent for [`CLIENT_SILENCE`]; the relay pings signal.
async fn forward<C, R>(client: WebSocketStream<C>, relay: WebSocketStream<R>)
where
    C: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_out, mut client_in) = client.split();
    let (mut relay_out, mut relay_in) = relay.split();
    // Set when the client's side ends the exchange with a close of
    // signal's own making (too big, silent).
    let (close_client, mut closed_by_up) = tokio::sync::oneshot::channel::<CloseFrame>();
    let up = async move {
        let refusal = loop {
            let message = match tokio::time::timeout(CLIENT_SILENCE, client_in.next()).await {
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(WsError::Capacity(_)))) => {
                    break Some(close(CloseCode::Size, "message too big"));
                }
                Ok(Some(Err(_)) | None) => break None,
                Err(_) => break Some(close(CloseCode::Away, "the client was silent too long")),
            };
            let closing = matches!(message, Message::Close(_));
            if relay_out.send(message).await.is_err() || closing {
                return client_in;
            }
        };
        let _ = relay_out.send(Message::Close(None)).await;
        if let Some(frame) = refusal {
            let _ = close_client.send(frame);
        }
        client_in
    };
    let down = async move {
        let first_ping = tokio::time::Instant::now() + PING_EVERY;
        let mut ping = tokio::time::interval_at(first_ping, PING_EVERY);
        let mut up_ended = false;
        loop {
            let message = tokio::select! {
                message = relay_in.next() => match message {
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(message)) => message,
                    Some(Err(_)) | None => {
                        Message::Close(Some(close(CloseCode::Away, "the relay went away")))
                    }
                },
                frame = &mut closed_by_up, if !up_ended => match frame {
                    Ok(frame) => Message::Close(Some(frame)),
                    // The client's side ended without a close of signal's:
                    // the relay's close follows.
                    Err(_) => {
                        up_ended = true;
                        continue;
                    }
                },
                _ = ping.tick() => Message::Ping(Default::default()),
            };
            let closing = matches!(message, Message::Close(_));
            if client_out.send(message).await.is_err() || closing {
                return;
            }
        }
    };
    tokio::pin!(up, down);
    let client_in = tokio::select! {
        client_in = &mut up => {
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut down).await;
            client_in
        }
        () = &mut down => match tokio::time::timeout(CLOSE_GRACE, &mut up).await {
            Ok(client_in) => client_in,
            Err(_) => return,
        },
    };
    // Let the client answer the close, so dropping the connection cannot
    // reset it before the close frame is read.
    let mut client_in = client_in;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = client_in.next().await {}
    })
    .await;
}

fn close(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

//! The native peer's WebSocket lane (PROTOCOL §11): `GET
//! /v1/sessions/{s}/socket` with the bearer token, then binary messages of
//! one channel id byte and the message that channel carries, read into
//! and written from the same [`PeerCore`] as WebRTC's channels. A writer
//! task owns the socket's sending half behind a bounded queue, so reading
//! never waits for a write and the core holds what the queue has no room
//! for (the lane's send window).

use std::time::{Duration, Instant};

use deltamesh_proto::channel::Channel;
use deltamesh_proto::trace::{TRACEPARENT, random_traceparent};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{ConnectError, ConnectOptions, Ended, KEEPALIVE_NONCE, Request, handle_request};
use crate::core::{PeerCore, PeerEvent};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Messages queued for the socket's writer at most.
const WRITE_QUEUE: usize = 16;
/// How long a closing socket may take to write its close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The largest message read: any channel's, with its id byte (SCTP's limit
/// on WebRTC, 1 MiB).
const MAX_MESSAGE: usize = (1 << 20) + 1;

/// An open lane socket, not yet served.
pub(in crate::native) struct SocketLink {
    socket: Socket,
    traceparent: String,
}

impl SocketLink {
    /// Opens the lane of `options.session` (a `http` signal URL becomes
    /// `ws`, `https` becomes `wss`).
    pub(in crate::native) async fn establish(
        options: &ConnectOptions,
    ) -> Result<SocketLink, ConnectError> {
        let base = options
            .signal_url
            .strip_prefix("http")
            .ok_or_else(|| ConnectError::Url(options.signal_url.clone()))?;
        let url = format!("ws{base}/v1/sessions/{}/socket", options.session);
        let mut request = url
            .into_client_request()
            .map_err(|e| ConnectError::Url(e.to_string()))?;
        let traceparent = random_traceparent();
        let bearer = HeaderValue::try_from(format!("Bearer {}", options.token))
            .map_err(|e| ConnectError::WebSocket(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert("authorization", bearer);
        if let Ok(value) = HeaderValue::try_from(traceparent.as_str()) {
            headers.insert(TRACEPARENT, value);
        }
        // 8 KiB read per call, not tungstenite's 128 KiB up front: a load
        // tester or server runs many peers in one process.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let opened = tokio::time::timeout(
            options.connect_timeout,
            tokio_tungstenite::connect_async_with_config(request, Some(config), true),
        )
        .await
        .map_err(|_| ConnectError::Timeout(options.connect_timeout))?;
        match opened {
            Ok((socket, _)) => Ok(SocketLink {
                socket,
                traceparent,
            }),
            Err(WsError::Http(response)) => Err(ConnectError::Refused {
                status: response.status().as_u16(),
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned(),
            }),
            Err(error) => Err(ConnectError::WebSocket(error.to_string())),
        }
    }

    /// The trace the connection is (sent with its request).
    pub(in crate::native) fn traceparent(&self) -> &str {
        &self.traceparent
    }
}

/// One lane socket being served, with what the peer keeps across
/// connections.
pub(in crate::native) struct SocketDriver {
    pub(in crate::native) core: PeerCore,
    pub(in crate::native) events: mpsc::Sender<PeerEvent>,
    pub(in crate::native) options: ConnectOptions,
    /// Where the next WebRTC connection starts from, if the application
    /// moved the peer while it was on the socket.
    pub(in crate::native) local_ip: Option<std::net::IpAddr>,
}

impl SocketDriver {
    /// Serves `link` until it drops or the peer is closed. Closing the
    /// socket leaves the session.
    pub(in crate::native) async fn serve(
        &mut self,
        link: SocketLink,
        requests: &mut mpsc::Receiver<Request>,
    ) -> Ended {
        let (sink, mut stream) = link.socket.split();
        let (writes, queued) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write(sink, queued));
        let (ended, leave) = self.serve_on(&mut stream, &writes, requests).await;
        if leave {
            let _ = writes.send(Message::Close(None)).await;
        }
        drop(writes);
        let _ = tokio::time::timeout(CLOSE_GRACE, writer).await;
        ended
    }

    async fn serve_on(
        &mut self,
        stream: &mut SplitStream<Socket>,
        writes: &mpsc::Sender<Message>,
        requests: &mut mpsc::Receiver<Request>,
    ) -> (Ended, bool) {
        let mut last_rx = Instant::now();
        let mut pinged_at = last_rx;
        let mut nonce = 0u64;
        loop {
            self.write_outbox(writes);
            if let Err(ended) = self.report_events().await {
                return (ended, true);
            }
            let now = Instant::now();
            let silent = now.duration_since(last_rx);
            if silent >= self.options.reconnect.silence_timeout {
                let ended = Ended::Lost(format!("nothing from the relay for {silent:?}"));
                return (ended, true);
            }
            let keepalive = self.options.reconnect.keepalive;
            if silent >= keepalive && now.duration_since(pinged_at) >= keepalive {
                nonce += 1;
                self.core.ping(KEEPALIVE_NONCE | nonce);
                pinged_at = now;
                continue;
            }
            let check_at = (last_rx + keepalive).max(pinged_at + keepalive);
            tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Close { leave, done }) => {
                        let _ = done.send(());
                        return (Ended::Closed, leave);
                    }
                    Some(request) => handle_request(&mut self.core, &mut self.local_ip, request),
                    None => return (Ended::Closed, true),
                },
                message = stream.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        last_rx = Instant::now();
                        let channel = bytes
                            .first()
                            .and_then(|&id| Channel::from_stream_id(u16::from(id)));
                        match channel {
                            Some(channel) => self.core.handle_message(channel, bytes[1..].to_vec()),
                            None => {
                                let event = PeerEvent::ProtocolError(
                                    "a lane message without a known channel id".into(),
                                );
                                let _ = self.events.send(event).await;
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!("{} {}", f.code, f.reason)).unwrap_or_default();
                        return (Ended::Lost(format!("the relay closed the socket: {why}")), false);
                    }
                    Some(Ok(_)) => last_rx = Instant::now(),
                    Some(Err(error)) => return (Ended::Lost(format!("socket: {error}")), false),
                    None => return (Ended::Lost("socket closed".into()), false),
                },
                permit = writes.reserve(), if self.core.wants_to_transmit() => match permit {
                    Ok(permit) => {
                        if let Some((channel, bytes)) = self.core.poll_transmit() {
                            permit.send(lane_message(channel, &bytes));
                        }
                    }
                    Err(_) => return (Ended::Lost("the socket's writer ended".into()), false),
                },
                _ = tokio::time::sleep_until(check_at.into()) => {}
            }
        }
    }

    /// Hands the writer what the core wants written, while it has room.
    fn write_outbox(&mut self, writes: &mpsc::Sender<Message>) {
        while self.core.wants_to_transmit() {
            let Ok(permit) = writes.try_reserve() else {
                return;
            };
            let Some((channel, bytes)) = self.core.poll_transmit() else {
                return;
            };
            permit.send(lane_message(channel, &bytes));
        }
    }

    /// Hands the core's events to the application; a drain or a stop ends
    /// the connection.
    async fn report_events(&mut self) -> Result<(), Ended> {
        while let Some(event) = self.core.poll_event() {
            let ended = match &event {
                PeerEvent::Drain(drain) => Some(Ended::Moved(
                    format!("the relay drains: {}", drain.reason),
                    Duration::from_millis(drain.reconnect_after_ms.into()),
                )),
                PeerEvent::Stopped(_) => Some(Ended::Closed),
                PeerEvent::Pong(nonce) if nonce & KEEPALIVE_NONCE != 0 => continue,
                _ => None,
            };
            self.events.send(event).await.map_err(|_| Ended::Closed)?;
            if let Some(ended) = ended {
                return Err(ended);
            }
        }
        Ok(())
    }
}

/// One lane message: the channel id byte, then the channel's message.
fn lane_message(channel: Channel, bytes: &[u8]) -> Message {
    let mut message = Vec::with_capacity(bytes.len() + 1);
    message.push(channel.stream_id() as u8);
    message.extend_from_slice(bytes);
    Message::Binary(message.into())
}

/// Writes queued messages until the queue closes or the socket fails.
async fn write(mut sink: SplitSink<Socket, Message>, mut queued: mpsc::Receiver<Message>) {
    while let Some(message) = queued.recv().await {
        let closing = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() || closing {
            return;
        }
    }
}

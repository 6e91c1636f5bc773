//! One lane socket's task: reads messages and hands them to its shard
//! (waiting while the shard's queue is full, so a flood holds back its own
//! TCP connection), writes what the core gives it and reports each write
//! (the core's measure of what the socket has taken), pings so an idle
//! socket stays alive and a dead one is noticed, and closes with the
//! core's code and reason.

use std::sync::Arc;
use std::time::Duration;

use deltamesh_proto::Id;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::shard::SocketEvent;
use crate::websocket::{SocketInput, SocketOutput};

/// How often the relay pings an idle socket (ICE consent's period).
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a closing socket may take to write what is left and its close.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Runs `socket` of `peer` until it closes, feeding its shard's `events`.
pub(super) async fn run(
    socket: WebSocketStream<TcpStream>,
    peer: Id,
    events: mpsc::Sender<SocketEvent>,
) {
    let (outbound, writes) = mpsc::unbounded_channel();
    let closing = Arc::new(Notify::new());
    let attached = SocketEvent::Attached {
        peer,
        outbound,
        closing: Arc::clone(&closing),
    };
    if events.send(attached).await.is_err() {
        return;
    }
    let (sink, stream) = socket.split();
    let reader = read(stream, peer, events.clone());
    let writer = write(sink, peer, writes, closing, events);
    tokio::pin!(reader, writer);
    tokio::select! {
        () = &mut reader => {}
        () = &mut writer => {
            // The close is written: read on until the peer answers it, so
            // dropping the connection cannot reset it before it is read.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut reader).await;
        }
    }
}

async fn read(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<TcpStream>>,
    peer: Id,
    events: mpsc::Sender<SocketEvent>,
) {
    while let Some(Ok(message)) = stream.next().await {
        let input = match message {
            Message::Binary(bytes) => SocketInput::Binary(bytes.into()),
            Message::Text(_) => SocketInput::Text,
            Message::Pong(_) | Message::Ping(_) => SocketInput::Alive,
            Message::Close(_) => break,
            Message::Frame(_) => continue,
        };
        if events
            .send(SocketEvent::Input { peer, input })
            .await
            .is_err()
        {
            return;
        }
    }
    let closed = SocketEvent::Input {
        peer,
        input: SocketInput::Closed,
    };
    let _ = events.send(closed).await;
}

async fn write(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<TcpStream>, Message>,
    peer: Id,
    mut writes: mpsc::UnboundedReceiver<SocketOutput>,
    closing: Arc<Notify>,
    events: mpsc::Sender<SocketEvent>,
) {
    // Once the core closes the socket, what is left has CLOSE_GRACE.
    let deadline = async {
        closing.notified().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::pin!(deadline);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        let output = tokio::select! {
            output = writes.recv() => output,
            _ = ping.tick() => {
                let sent = tokio::select! {
                    sent = sink.send(Message::Ping(Default::default())) => sent,
                    () = &mut deadline => return,
                };
                if sent.is_err() { return; }
                continue;
            }
            () = &mut deadline => return,
        };
        match output {
            Some(SocketOutput::Message { bytes, .. }) => {
                let len = bytes.len();
                let sent = tokio::select! {
                    sent = sink.send(Message::Binary(bytes.into())) => sent,
                    () = &mut deadline => return,
                };
                if sent.is_err() {
                    return;
                }
                let written = SocketEvent::Input {
                    peer,
                    input: SocketInput::Written(len),
                };
                if events.send(written).await.is_err() {
                    return;
                }
            }
            Some(SocketOutput::Close { code, reason, .. }) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                tokio::select! {
                    _ = sink.send(Message::Close(Some(frame))) => {}
                    () = &mut deadline => {}
                }
                return;
            }
            None => return,
        }
    }
}

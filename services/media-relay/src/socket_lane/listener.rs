//! The lane's TCP port: accepts connections, completes the WebSocket
//! handshake for `GET /lane/{ticket}` with a ticket the relay issued, and
//! hands the socket to its peer's shard. Anything else is refused in the
//! handshake (404 for another path, 403 for an unknown, used or expired
//! ticket) and a handshake that does not finish in time is dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

use super::io;
use super::shard::SocketEvent;
use super::tickets::{Admitted, Tickets};

/// Longest a connection may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's send buffer per lane socket: small, so a reader that does
/// not read is seen by the core's window soon (the kernel caps it too).
const SEND_BUFFER: usize = 64 * 1024;
/// The path a ticket is redeemed at.
pub(crate) const LANE_PATH: &str = "/lane/";

/// Serves the lane on `listener` until the shards are gone.
pub(crate) async fn serve(
    listener: TcpListener,
    tickets: Arc<Tickets>,
    shards: Vec<mpsc::Sender<SocketEvent>>,
) {
    let shards = Arc::new(shards);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if shards.iter().all(|s| s.is_closed()) {
            return;
        }
        let tickets = Arc::clone(&tickets);
        let shards = Arc::clone(&shards);
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(stream, &tickets)).await;
            if let Ok(Some((socket, admitted))) = accepted
                && let Some(events) = shards.get(admitted.shard)
            {
                io::run(socket, admitted.peer, events.clone()).await;
            }
        });
    }
}

/// Completes the handshake of a socket with a good ticket.
async fn accept(
    stream: TcpStream,
    tickets: &Tickets,
) -> Option<(tokio_tungstenite::WebSocketStream<TcpStream>, Admitted)> {
    let mut admitted = None;
    // The callback's signature is tungstenite's, large error and all.
    #[allow(clippy::result_large_err)]
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let Some(ticket) = request.uri().path().strip_prefix(LANE_PATH) else {
            return Err(refusal(StatusCode::NOT_FOUND, "no such path"));
        };
        match tickets.redeem(ticket, Instant::now()) {
            Some(found) => {
                admitted = Some(found);
                Ok(response)
            }
            None => Err(refusal(
                StatusCode::FORBIDDEN,
                "unknown, used or expired ticket",
            )),
        }
    };
    let socket = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        check,
        Some(super::socket_config()),
    )
    .await
    .ok()?;
    Some((socket, admitted?))
}

fn refusal(status: StatusCode, why: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(why.to_owned()));
    *response.status_mut() = status;
    response
}

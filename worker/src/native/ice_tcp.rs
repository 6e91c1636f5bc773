//! The native peer's active ICE-TCP side (RFC 6544): str0m pairs the
//! peer's active TCP candidate with a relay's passive one and sends its
//! checks and DTLS to that address; [`TcpPaths`] opens one connection per
//! destination on the first datagram, frames what str0m sends with RFC 4571
//! ([`deltamesh_proto::rfc4571`]) and hands back whole datagrams. Bounded:
//! a few destinations, a bounded write queue per connection (more is
//! dropped; SCTP retransmits), one partial frame per reader.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use deltamesh_proto::rfc4571::{self, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Port of an active TCP candidate: it never listens (RFC 6544 §4.5).
pub(super) const ACTIVE_PORT: u16 = 9;
/// Destinations one connection attempt may open TCP to (one per relay
/// shard candidate the answer lists).
const MAX_PATHS: usize = 4;
/// Framed datagrams queued for one connection.
const WRITE_QUEUE: usize = 256;
/// Time to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The peer's TCP connections, by the relay address they go to.
pub(super) struct TcpPaths {
    paths: HashMap<SocketAddr, Path>,
    received_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    received: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

struct Path {
    writes: mpsc::Sender<Vec<u8>>,
    task: JoinHandle<()>,
}

impl Default for TcpPaths {
    fn default() -> Self {
        let (received_tx, received) = mpsc::channel(1024);
        TcpPaths {
            paths: HashMap::new(),
            received_tx,
            received,
        }
    }
}

impl TcpPaths {
    /// Sends `datagram` to `destination` over TCP, connecting first if
    /// this is the first datagram for it; dropped when it cannot be queued.
    pub(super) fn send(&mut self, destination: SocketAddr, datagram: &[u8]) {
        let Some(framed) = rfc4571::encode(datagram) else {
            return;
        };
        if !self.paths.contains_key(&destination) {
            if self.paths.len() >= MAX_PATHS {
                return;
            }
            let (writes, queue) = mpsc::channel(WRITE_QUEUE);
            let task = tokio::spawn(run_path(destination, queue, self.received_tx.clone()));
            self.paths.insert(destination, Path { writes, task });
        }
        if let Some(path) = self.paths.get(&destination) {
            let _ = path.writes.try_send(framed);
        }
    }

    /// The next datagram received on any connection, with the relay
    /// address it came from (cancel-safe; waits forever without one).
    pub(super) async fn recv(&mut self) -> (SocketAddr, Vec<u8>) {
        match self.received.recv().await {
            Some(received) => received,
            None => std::future::pending().await,
        }
    }
}

impl Drop for TcpPaths {
    fn drop(&mut self) {
        for path in self.paths.values() {
            path.task.abort();
        }
    }
}

/// Connects to `destination`, then writes what is queued and reads frames
/// until either side ends, the framing breaks, or the paths are dropped.
async fn run_path(
    destination: SocketAddr,
    mut queue: mpsc::Receiver<Vec<u8>>,
    received: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    let connect = TcpStream::connect(destination);
    let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let mut decoder = FrameDecoder::default();
    let mut chunk = vec![0u8; 4096];
    loop {
        tokio::select! {
            framed = queue.recv() => match framed {
                Some(framed) if write.write_all(&framed).await.is_ok() => {}
                _ => return,
            },
            read = read.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(len) => decoder.push(&chunk[..len]),
            },
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(datagram)) => {
                    if received.send((destination, datagram)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%destination, %error, "ICE-TCP connection to the relay broke its framing");
                    return;
                }
            }
        }
    }
}

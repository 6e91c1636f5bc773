//! One shard's ICE-TCP listener and its connections (RFC 6544 passive
//! candidates, RFC 4571 framing through [`deltamesh_proto::rfc4571`]): the
//! thin I/O part beside the UDP [`driver`](crate::driver). Each connection
//! has a reader task that turns its byte stream into datagrams and a writer
//! task that frames the datagrams the core sends it; the shard's loop owns
//! the table of connections and hands frames to the [`RelayCore`] as TCP
//! inputs, so routing, timers and back-pressure are the core's as for UDP.
//!
//! Bounds:
//! - reads: a connection's reader holds at most one partial frame plus one
//!   read, and waits (TCP flow control pushes back) while the shard's
//!   queue of frames is full;
//! - writes: at most [`WRITE_QUEUE`] framed datagrams per connection; more
//!   are dropped, as a full UDP socket's are: DTLS records are datagrams
//!   and SCTP retransmits what is lost, while closing would end the peer on
//!   a burst. A peer that stops reading for good is the peer layer's
//!   stalled consumer;
//! - abuse: a connection must carry a STUN check some peer's `Rtc` verified
//!   within `tcp_verify_timeout`, or it is closed; at most
//!   `max_unverified_tcp` such connections per relay (more are closed at
//!   once); a bad RFC 4571 length closes that connection with a log line.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deltamesh_proto::rfc4571::{self, FrameDecoder, FramingError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::core::RelayCore;
use crate::metrics::TcpMetrics;

/// Framed datagrams queued for one connection's socket; beyond this they
/// are dropped (about 0.5 MiB at most per connection).
const WRITE_QUEUE: usize = 256;
/// Frames from all of a shard's connections waiting for the shard.
const FRAME_QUEUE: usize = 1024;
/// Frames handled per wake-up before timers and wake-ups get a turn (as
/// the UDP driver's batch).
const EVENT_BATCH: usize = 64;
/// Bytes one read takes from a socket.
const READ_CHUNK: usize = 4096;
/// Longest one write may wait on a remote that does not read before the
/// connection is given up (its writer must not outlive it unbounded).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often connections are checked against their deadlines and peers.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// ICE-TCP connections of the whole relay not verified yet: shared by the
/// shards so the cap is the relay's.
#[derive(Debug, Default)]
pub(crate) struct Unverified(AtomicUsize);

impl Unverified {
    /// Takes one place under `max`; false when none is left.
    fn take(&self, max: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the limits of a lane are (from the relay's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpLimits {
    /// Unverified connections per relay.
    pub(crate) max_unverified: usize,
    /// Time a connection has to be verified.
    pub(crate) verify_timeout: Duration,
}

/// One shard's TCP listener and connections.
pub(crate) struct TcpLane {
    listener: TcpListener,
    limits: TcpLimits,
    unverified: Arc<Unverified>,
    metrics: TcpMetrics,
    frames_tx: mpsc::Sender<Event>,
    frames: mpsc::Receiver<Event>,
    connections: HashMap<SocketAddr, Connection>,
    /// Unverified connections in the order they were accepted, with their
    /// deadline: the sweep looks only at the expired ones.
    deadlines: VecDeque<(SocketAddr, u64, Instant)>,
    next_sweep: Instant,
    next_id: u64,
}

/// A connection as the shard sees it.
struct Connection {
    id: u64,
    writes: mpsc::Sender<Vec<u8>>,
    reader: JoinHandle<()>,
    verified: bool,
}

/// What a connection's reader tells the shard.
#[derive(Debug)]
pub(crate) struct Event {
    id: u64,
    remote: SocketAddr,
    kind: EventKind,
}

#[derive(Debug)]
enum EventKind {
    Frame(Vec<u8>),
    BadFrame(FramingError),
    Ended,
}

/// What woke the lane.
pub(crate) enum TcpInput {
    /// A new connection (or an accept error).
    Accepted(std::io::Result<(TcpStream, SocketAddr)>),
    /// News from a connection.
    Event(Event),
}

impl TcpLane {
    /// The lane around `listener`, sharing `unverified` with the relay's
    /// other shards.
    pub(crate) fn new(
        listener: TcpListener,
        limits: TcpLimits,
        unverified: Arc<Unverified>,
        metrics: TcpMetrics,
    ) -> Self {
        let (frames_tx, frames) = mpsc::channel(FRAME_QUEUE);
        TcpLane {
            listener,
            limits,
            unverified,
            metrics,
            frames_tx,
            frames,
            connections: HashMap::new(),
            deadlines: VecDeque::new(),
            next_sweep: Instant::now() + SWEEP_EVERY,
            next_id: 0,
        }
    }

    /// Waits for a new connection or news from one (cancel-safe).
    pub(crate) async fn next(&mut self) -> TcpInput {
        tokio::select! {
            accepted = self.listener.accept() => TcpInput::Accepted(accepted),
            Some(event) = self.frames.recv() => TcpInput::Event(event),
        }
    }

    /// Handles what [`next`](Self::next) returned, and up to
    /// [`EVENT_BATCH`] more frames already waiting.
    pub(crate) fn handle(&mut self, core: &mut RelayCore, input: TcpInput, now: Instant) {
        match input {
            TcpInput::Accepted(Ok((stream, remote))) => self.accept(stream, remote, now),
            TcpInput::Accepted(Err(error)) => {
                tracing::debug!(%error, "ICE-TCP accept failed");
            }
            TcpInput::Event(event) => self.on_event(core, event, now),
        }
        for _ in 1..EVENT_BATCH {
            match self.frames.try_recv() {
                Ok(event) => self.on_event(core, event, now),
                Err(_) => break,
            }
        }
    }

    /// Sends `datagram` on the connection from `remote`, framed; dropped
    /// when there is none or its queue is full.
    pub(crate) fn send(&mut self, remote: SocketAddr, datagram: &[u8]) {
        let (Some(connection), Some(framed)) =
            (self.connections.get(&remote), rfc4571::encode(datagram))
        else {
            return;
        };
        if connection.writes.try_send(framed).is_err() {
            self.metrics.dropped_datagrams.inc();
        }
    }

    /// Closes connections past their deadline unverified, and verified
    /// ones whose peer is gone; at most every [`SWEEP_EVERY`].
    pub(crate) fn sweep(&mut self, core: &RelayCore, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        while let Some(&(remote, id, deadline)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self
                .connections
                .get(&remote)
                .is_some_and(|c| c.id == id && !c.verified)
            {
                tracing::debug!(%remote, "ICE-TCP connection closed: no verified STUN check in time");
                self.close(remote, "unverified");
            }
        }
        let gone: Vec<SocketAddr> = self
            .connections
            .iter()
            .filter(|(remote, c)| c.verified && !core.is_tcp_path(**remote))
            .map(|(remote, _)| *remote)
            .collect();
        for remote in gone {
            self.close(remote, "peer_gone");
        }
    }

    /// Closes every connection: the shard is stopping (queued datagrams,
    /// such as the peers' goodbyes, are still written).
    pub(crate) fn shutdown(&mut self) {
        let remotes: Vec<SocketAddr> = self.connections.keys().copied().collect();
        for remote in remotes {
            self.close(remote, "peer_gone");
        }
    }

    fn accept(&mut self, stream: TcpStream, remote: SocketAddr, now: Instant) {
        if !self.unverified.take(self.limits.max_unverified) {
            self.metrics.close("refused");
            tracing::debug!(%remote, "ICE-TCP connection refused: too many unverified");
            return;
        }
        let _ = stream.set_nodelay(true);
        let id = self.next_id;
        self.next_id += 1;
        let (read, write) = stream.into_split();
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let reader = tokio::spawn(read_frames(read, id, remote, self.frames_tx.clone()));
        tokio::spawn(write_frames(write, queue));
        let connection = Connection {
            id,
            writes,
            reader,
            verified: false,
        };
        if let Some(old) = self.connections.insert(remote, connection) {
            // The same remote address cannot have two live connections;
            // an old one whose end was not heard of yet is over.
            self.forget(old, "remote");
        }
        self.deadlines
            .push_back((remote, id, now + self.limits.verify_timeout));
        self.metrics.connections.inc();
        self.metrics.unverified.inc();
    }

    fn on_event(&mut self, core: &mut RelayCore, event: Event, now: Instant) {
        let Event { id, remote, kind } = event;
        let Some(connection) = self.connections.get_mut(&remote).filter(|c| c.id == id) else {
            return;
        };
        match kind {
            EventKind::Frame(datagram) => {
                core.handle_tcp_frame(now, remote, &datagram);
                if !connection.verified && core.is_tcp_path(remote) {
                    connection.verified = true;
                    self.unverified.give_back();
                    self.metrics.unverified.dec();
                }
            }
            EventKind::BadFrame(error) => {
                tracing::warn!(%remote, %error, "ICE-TCP connection closed: bad RFC 4571 frame");
                self.close(remote, "bad_frame");
            }
            EventKind::Ended => self.close(remote, "remote"),
        }
    }

    fn close(&mut self, remote: SocketAddr, reason: &'static str) {
        if let Some(connection) = self.connections.remove(&remote) {
            self.forget(connection, reason);
        }
    }

    /// Stops a connection's reader; its writer ends once its queue is
    /// written (or the write times out), closing the socket.
    fn forget(&mut self, connection: Connection, reason: &'static str) {
        connection.reader.abort();
        if !connection.verified {
            self.unverified.give_back();
            self.metrics.unverified.dec();
        }
        self.metrics.connections.dec();
        self.metrics.close(reason);
    }
}

/// Reads `stream` into datagrams for the shard until it ends, breaks its
/// framing, or the shard stops listening.
async fn read_frames(
    mut stream: OwnedReadHalf,
    id: u64,
    remote: SocketAddr,
    shard: mpsc::Sender<Event>,
) {
    let mut decoder = FrameDecoder::default();
    let mut chunk = vec![0u8; READ_CHUNK];
    let kind = 'stream: loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break EventKind::Ended,
            Ok(len) => decoder.push(&chunk[..len]),
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(datagram)) => {
                    let event = Event {
                        id,
                        remote,
                        kind: EventKind::Frame(datagram),
                    };
                    if shard.send(event).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => break 'stream EventKind::BadFrame(error),
            }
        }
    };
    let _ = shard.send(Event { id, remote, kind }).await;
}

/// Writes framed datagrams until the shard drops the queue, a write fails,
/// or the remote stops reading for [`WRITE_TIMEOUT`].
async fn write_frames(mut stream: OwnedWriteHalf, mut queue: mpsc::Receiver<Vec<u8>>) {
    while let Some(framed) = queue.recv().await {
        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = stream.shutdown().await;
}

//! The thin tokio driver of one shard: it owns the shard's UDP socket, its
//! command queue and the clock, feeds the [`RelayCore`] datagrams,
//! commands, wake-ups, lane sockets' events and timeouts, and sends what
//! the core wants sent, keeping a bounded queue while the socket's buffer is
//! full. The shard's ICE-TCP connections, if it listens on TCP, are its
//! [`TcpLane`]'s; its WebSocket peers' sockets are its [`ShardSockets`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::net::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::command::ShardCommand;
use crate::core::{RelayCore, Transmit};
use crate::ice_tcp::TcpLane;
use crate::socket_lane::ShardSockets;

/// Longest the driver sleeps while the core has no deadline.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Datagrams read per wake-up before timers and wake-ups get a turn.
const RECV_BATCH: usize = 64;
/// Datagrams kept while the socket's send buffer is full; beyond this they
/// are dropped and SCTP retransmits them.
const MAX_OUTBOUND: usize = 8192;
/// Room for any datagram str0m accepts.
const RECV_BUFFER: usize = 2048;

/// Runs `core` on `socket` until every sender of `commands` is dropped, then
/// closes its peers.
pub(crate) async fn run(
    mut core: RelayCore,
    socket: UdpSocket,
    mut tcp: Option<TcpLane>,
    mut commands: mpsc::Receiver<ShardCommand>,
    mut sockets: ShardSockets,
) {
    let wake = Arc::clone(core.wake_handle());
    let mut outbound = Outbound::default();
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let deadline = core
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + IDLE_WAIT);
        tokio::select! {
            _ = socket.writable(), if !outbound.queue.is_empty() => outbound.flush(&socket),
            command = commands.recv() => match command {
                Some(command) => on_command(&mut core, command),
                None => break,
            },
            received = socket.recv_from(&mut buf) => {
                if let Ok((len, source)) = received {
                    core.handle_datagram(Instant::now(), source, &buf[..len]);
                }
                for _ in 1..RECV_BATCH {
                    match socket.try_recv_from(&mut buf) {
                        Ok((len, source)) => core.handle_datagram(Instant::now(), source, &buf[..len]),
                        Err(_) => break,
                    }
                }
            }
            input = next_tcp(&mut tcp) => {
                if let Some(lane) = tcp.as_mut() {
                    lane.handle(&mut core, input, Instant::now());
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = wake.notified() => {}
            event = sockets.recv() => sockets.handle(&mut core, event),
        }
        let now = Instant::now();
        core.handle_timeout(now);
        core.handle_wake(now);
        outbound.send_all(&socket, tcp.as_mut(), &mut core);
        sockets.send_all(&mut core);
        if let Some(lane) = tcp.as_mut() {
            lane.sweep(&core, now);
        }
    }
    core.shutdown();
    outbound.send_all(&socket, tcp.as_mut(), &mut core);
    sockets.send_all(&mut core);
    if let Some(lane) = tcp.as_mut() {
        lane.shutdown();
    }
}

/// The lane's next input; never, without a lane.
async fn next_tcp(tcp: &mut Option<TcpLane>) -> crate::ice_tcp::TcpInput {
    match tcp {
        Some(lane) => lane.next().await,
        None => std::future::pending().await,
    }
}

/// Hands one command to the core and its result to the asker.
fn on_command(core: &mut RelayCore, command: ShardCommand) {
    let now = Instant::now();
    match command {
        ShardCommand::Offer(offer, reply) => {
            let _ = reply.send(core.offer(now, *offer));
        }
        ShardCommand::Trickle(peer, candidates, reply) => {
            let _ = reply.send(core.trickle(now, peer, candidates));
        }
        ShardCommand::IceRestart(peer, restart, reply) => {
            let _ = reply.send(core.restart_ice(now, peer, restart));
        }
        ShardCommand::Drain(reconnect_after, reason) => core.drain(now, reconnect_after, &reason),
        ShardCommand::Close(peer, reason, reply) => {
            let _ = reply.send(core.close(peer, &reason));
        }
        ShardCommand::OpenSocket(open, reply) => {
            let _ = reply.send(core.open_socket(now, *open));
        }
    }
}

/// Datagrams waiting for the socket to become writable, in order.
#[derive(Default)]
struct Outbound {
    queue: VecDeque<(Vec<u8>, SocketAddr)>,
}

impl Outbound {
    /// Sends everything the core has for the wire, queueing (bounded) what
    /// the socket does not take now. Never blocks the shard.
    fn send_all(
        &mut self,
        socket: &UdpSocket,
        mut tcp: Option<&mut TcpLane>,
        core: &mut RelayCore,
    ) {
        while let Some(Transmit {
            proto,
            destination,
            contents,
        }) = core.poll_transmit()
        {
            if proto != Protocol::Udp {
                if let Some(lane) = tcp.as_deref_mut() {
                    lane.send(destination, &contents);
                }
                continue;
            }
            if self.queue.is_empty() {
                match socket.try_send_to(&contents, destination) {
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => continue,
                }
            }
            if self.queue.len() < MAX_OUTBOUND {
                self.queue.push_back((contents, destination));
            }
        }
    }

    /// Sends queued datagrams until the socket is full again.
    fn flush(&mut self, socket: &UdpSocket) {
        while let Some((datagram, destination)) = self.queue.front() {
            match socket.try_send_to(datagram, *destination) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                _ => {
                    self.queue.pop_front();
                }
            }
        }
    }
}

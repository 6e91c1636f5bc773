//! The WebSocket lane through the relay handle: [`RelayHandle::open_socket`]
//! admits a WebSocket peer on a shard exactly as an offer is admitted
//! (draining, limits, grants), then issues the single-use ticket its
//! socket must bring to the relay's lane port within
//! [`TICKET_LIFETIME`](crate::socket_lane::TICKET_LIFETIME).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use deltamesh_proto::Id;
use opentelemetry::global;
use opentelemetry::trace::{Status, TraceContextExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::RelayHandle;
use crate::command::{PeerAccess, ShardCommand};
use crate::config::RelayConfig;
use crate::error::RelayError;
use crate::socket_lane::{self, SocketEvent, Tickets};
use crate::websocket::SocketOpen;

/// Where an admitted WebSocket peer's socket must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketTicket {
    /// The new peer's id.
    pub peer_id: Id,
    /// The `ws://` URL of the relay's lane port, with the ticket; good for
    /// one socket, within 10 s.
    pub url: String,
}

/// The relay's lane port and its outstanding tickets.
pub(super) struct SocketLane {
    addr: SocketAddr,
    tickets: Arc<Tickets>,
}

impl SocketLane {
    /// Binds the lane port and serves it for the shards whose lane events
    /// go to `shards`.
    pub(super) async fn start(
        config: &RelayConfig,
        shards: Vec<mpsc::Sender<SocketEvent>>,
    ) -> std::io::Result<SocketLane> {
        let listener =
            TcpListener::bind(SocketAddr::new(config.bind_ip, config.socket_port)).await?;
        // Signal, not the peer, opens this socket: a concrete bind
        // address is how it reaches the relay, else the advertised one.
        let host = if config.bind_ip.is_unspecified() {
            config.advertised_ip
        } else {
            config.bind_ip
        };
        let addr = SocketAddr::new(host, listener.local_addr()?.port());
        let tickets = Arc::new(Tickets::default());
        tokio::spawn(socket_lane::serve(listener, Arc::clone(&tickets), shards));
        Ok(SocketLane { addr, tickets })
    }
}

impl RelayHandle {
    /// The address of the WebSocket lane's port.
    pub fn socket_addr(&self) -> SocketAddr {
        self.lane.addr
    }

    /// Admits a WebSocket peer of `session` (PROTOCOL §11) and tells where
    /// its socket goes. Its span and then the connection's continue `trace`.
    pub async fn open_socket(
        &self,
        session: &str,
        access: PeerAccess,
        trace: &opentelemetry::Context,
    ) -> Result<SocketTicket, RelayError> {
        let peer_id = Id::random();
        let (open_trace, connection) =
            self.connection_spans("relay socket", session, peer_id, trace);
        let opened = self
            .admit_socket(peer_id, session, access, connection)
            .await;
        if let Err(error) = &opened {
            open_trace
                .span()
                .set_status(Status::error(error.to_string()));
        }
        opened
    }

    async fn admit_socket(
        &self,
        peer_id: Id,
        session: &str,
        access: PeerAccess,
        connection: global::BoxedSpan,
    ) -> Result<SocketTicket, RelayError> {
        if self.is_draining() {
            crate::timeline::refused(connection, &RelayError::ShuttingDown);
            return Err(RelayError::ShuttingDown);
        }
        let shard = (0..self.shards.len())
            .min_by_key(|&index| self.shared.shard_peers(index))
            .ok_or(RelayError::ShuttingDown)?;
        let link = self.shards.get(shard).ok_or(RelayError::ShuttingDown)?;
        let open = SocketOpen {
            peer_id,
            session: session.into(),
            access,
            connection,
        };
        let (reply, admitted) = oneshot::channel();
        link.commands
            .send(ShardCommand::OpenSocket(Box::new(open), reply))
            .await
            .map_err(|_| RelayError::ShuttingDown)?;
        admitted.await.map_err(|_| RelayError::ShuttingDown)??;
        let admitted = socket_lane::Admitted {
            shard,
            peer: peer_id,
        };
        let ticket = self.lane.tickets.issue(admitted, Instant::now());
        Ok(SocketTicket {
            peer_id,
            url: format!("ws://{}{}{ticket}", self.lane.addr, socket_lane::LANE_PATH),
        })
    }
}

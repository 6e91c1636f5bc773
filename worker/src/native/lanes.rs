//! One connection after another, over whichever lane [`LanePolicy`]
//! picks: what a native peer keeps across connections ([`Parts`]: its
//! core, its event queue, its options), the connect step that falls back
//! from a failed WebRTC offer to the WebSocket lane, and the loop that
//! serves a connection, reports its end and reconnects (at once when
//! falling back, else with the backoff). The core does not know which
//! lane it runs on, so `Resume` after a change of lane is the same as
//! after any reconnect.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::path_lane::PathLane;
use super::socket::{SocketDriver, SocketLink};
use super::{ConnectError, ConnectOptions, Driver, Ended, Link, Request, handle_request};
use crate::core::{PeerCore, PeerEvent};
use crate::ice_servers::IceServer;
use crate::lane::{Lane, LaneChoice, LanePolicy, Transport};

/// What the peer keeps from one connection to the next.
pub(super) struct Parts {
    pub(super) core: PeerCore,
    pub(super) events: mpsc::Sender<PeerEvent>,
    pub(super) policy: LanePolicy,
    pub(super) options: ConnectOptions,
    pub(super) http: reqwest::Client,
    /// The local address the application moved the peer to
    /// ([`NativePeer::move_to`](super::NativePeer::move_to)); `None`: the
    /// one towards signal.
    pub(super) local_ip: Option<IpAddr>,
    /// The lane in use, for [`NativePeer::lane`](super::NativePeer::lane).
    pub(super) lane: watch::Sender<Lane>,
    /// The lanes the application allows now.
    pub(super) choice: watch::Receiver<LaneChoice>,
    /// The policy's clock starts here.
    pub(super) started: Instant,
}

/// One established connection, not yet served.
pub(super) enum Connection {
    /// An answered WebRTC offer (an `Rtc` is large).
    WebRtc(Box<Link>),
    /// An open lane socket.
    Socket(Box<SocketLink>),
}

impl Connection {
    /// The trace the connection is.
    pub(super) fn traceparent(&self) -> &str {
        match self {
            Connection::WebRtc(link) => &link.traceparent,
            Connection::Socket(socket) => socket.traceparent(),
        }
    }

    /// The ICE servers listed with a WebRTC answer (none on the socket).
    pub(super) fn ice_servers(&self) -> &[IceServer] {
        match self {
            Connection::WebRtc(link) => &link.ice_servers,
            Connection::Socket(_) => &[],
        }
    }

    fn transport(&self) -> Transport {
        match self {
            Connection::WebRtc(_) => Transport::WebRtc,
            Connection::Socket(_) => Transport::WebSocket,
        }
    }
}

impl Parts {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Connects over the lane the policy picks. A WebRTC offer that fails
    /// for any reason but signal's refusal (which the lane would get too)
    /// goes on to the WebSocket lane when the policy allows it.
    pub(super) async fn connect(&mut self) -> Result<Connection, ConnectError> {
        self.policy.set_choice(*self.choice.borrow());
        let transport = self.policy.next(self.now_ms());
        match self.open(transport).await {
            Ok(connection) => Ok(connection),
            Err(error) => {
                self.policy.failed(transport);
                let refused = matches!(error, ConnectError::Refused { .. });
                if transport == Transport::WebRtc
                    && !refused
                    && self.policy.next(self.now_ms()) == Transport::WebSocket
                {
                    return self.open(Transport::WebSocket).await;
                }
                Err(error)
            }
        }
    }

    async fn open(&self, transport: Transport) -> Result<Connection, ConnectError> {
        match transport {
            Transport::WebRtc => Link::establish(&self.options, &self.http, self.local_ip)
                .await
                .map(|link| Connection::WebRtc(Box::new(link))),
            Transport::WebSocket => SocketLink::establish(&self.options)
                .await
                .map(|socket| Connection::Socket(Box::new(socket))),
        }
    }

    /// Serves a WebRTC connection until it ends; true when it was welcomed.
    async fn serve_webrtc(
        self,
        link: Box<Link>,
        requests: &mut mpsc::Receiver<Request>,
    ) -> (Parts, Ended, bool) {
        let Parts {
            core,
            events,
            policy,
            options,
            http,
            local_ip,
            lane,
            choice,
            started,
        } = self;
        // Until DTLS goes out, the lane its candidates suggest.
        let first = if options.udp {
            Lane::WebRtcUdp
        } else {
            Lane::WebRtcTcp
        };
        let lane = PathLane::new(lane, first);
        let fallback_at = policy.webrtc_deadline().map(|after| Instant::now() + after);
        let mut driver = Driver {
            link: *link,
            core,
            events,
            options,
            http,
            local_ip,
            fallback_at,
            lane,
        };
        let ended = driver.serve(requests).await;
        if matches!(ended, Ended::Moved(..)) {
            let _ = driver.link.rtc.close();
            let _ = driver.drive().await;
        }
        let welcomed = driver.core.welcome().is_some();
        if !welcomed && matches!(ended, Ended::Lost(_)) {
            // Given up on: free its place on the relay now rather than at
            // the relay's connect timeout.
            let delete = driver
                .http
                .delete(&driver.link.resource)
                .bearer_auth(&driver.options.token);
            tokio::spawn(async move {
                let _ = delete.send().await;
            });
        }
        let Driver {
            core,
            events,
            options,
            http,
            local_ip,
            lane,
            ..
        } = driver;
        let lane = lane.into_sender();
        let parts = Parts {
            core,
            events,
            policy,
            options,
            http,
            local_ip,
            lane,
            choice,
            started,
        };
        (parts, ended, welcomed)
    }

    /// Serves a lane socket until it ends; true when it was welcomed.
    async fn serve_socket(
        self,
        socket: Box<SocketLink>,
        requests: &mut mpsc::Receiver<Request>,
    ) -> (Parts, Ended, bool) {
        let Parts {
            core,
            events,
            policy,
            options,
            http,
            local_ip,
            lane,
            choice,
            started,
        } = self;
        let _ = lane.send(Lane::WebSocket);
        let mut driver = SocketDriver {
            core,
            events,
            options,
            local_ip,
        };
        let ended = driver.serve(*socket, requests).await;
        let welcomed = driver.core.welcome().is_some();
        let SocketDriver {
            core,
            events,
            options,
            local_ip,
        } = driver;
        let parts = Parts {
            core,
            events,
            policy,
            options,
            http,
            local_ip,
            lane,
            choice,
            started,
        };
        (parts, ended, welcomed)
    }

    /// Connects again with the policy's exponential backoff (with jitter),
    /// still taking the application's requests; the first attempt waits
    /// `first` when there is a reason to (the relay named a delay, or
    /// none at all when falling back). `None` once closed.
    async fn reconnect(
        &mut self,
        requests: &mut mpsc::Receiver<Request>,
        mut first: Option<Duration>,
    ) -> Option<Connection> {
        let mut backoff = self.options.reconnect.backoff();
        loop {
            let delay = first
                .take()
                .unwrap_or_else(|| backoff.next_delay(fastrand::f64()));
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    request = requests.recv() => match request {
                        Some(Request::Close { done, .. }) => {
                            let _ = done.send(());
                            return None;
                        }
                        Some(request) => handle_request(&mut self.core, &mut self.local_ip, request),
                        None => return None,
                    },
                }
            }
            match self.connect().await {
                Ok(connection) => return Some(connection),
                Err(error) => {
                    let event = PeerEvent::Disconnected(format!("reconnecting: {error}"));
                    self.events.send(event).await.ok()?;
                }
            }
        }
    }
}

/// Serves `connection`, then each next one, until the peer is closed or
/// stops for good.
pub(super) async fn run(
    mut parts: Parts,
    mut connection: Connection,
    mut requests: mpsc::Receiver<Request>,
) {
    loop {
        let transport = connection.transport();
        let began = parts.now_ms();
        let (back, ended, welcomed) = match connection {
            Connection::WebRtc(link) => parts.serve_webrtc(link, &mut requests).await,
            Connection::Socket(socket) => parts.serve_socket(socket, &mut requests).await,
        };
        parts = back;
        if welcomed {
            parts.policy.connected(transport, began);
        } else {
            parts.policy.failed(transport);
        }
        let (reason, after) = match ended {
            Ended::Closed => return,
            Ended::Lost(reason) => (reason, None),
            Ended::Moved(reason, after) => (reason, Some(after)),
        };
        if parts.core.is_stopped() {
            // `HISTORY_LOST` came with the connection's end: no reconnect
            // can deliver what is gone; report and end.
            while let Some(event) = parts.core.poll_event() {
                let _ = parts.events.send(event).await;
            }
            return;
        }
        parts.core.connection_lost();
        if parts
            .events
            .send(PeerEvent::Disconnected(reason))
            .await
            .is_err()
        {
            return;
        }
        // Falling back from WebRTC to the socket waits for nothing.
        let falls_back = !welcomed
            && transport == Transport::WebRtc
            && parts.policy.next(parts.now_ms()) == Transport::WebSocket;
        let first = if falls_back {
            Some(Duration::ZERO)
        } else {
            after
        };
        connection = match parts.reconnect(&mut requests, first).await {
            Some(connection) => connection,
            None => return,
        };
    }
}

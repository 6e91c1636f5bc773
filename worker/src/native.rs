//! The native peer: [`PeerCore`] driven by str0m as the offering side over a
//! tokio UDP socket, with HTTP signaling by reqwest. Servers, the
//! command-line client and the benchmarks connect through this.
//!
//! v1.1: it asks for `batch` and `presence` by default ([`ConnectOptions`]);
//! a relay that does not offer them gets v1. Large deltas go as fragments,
//! with commands and presence written between them (the send window counts
//! only the `send` channel). A `Drain` moves the peer after the relay's
//! `reconnect_after_ms`; `HISTORY_LOST` ends it with
//! [`PeerEvent::Stopped`].
//!
//! With [`ConnectOptions::ice_tcp`] it also offers an active ICE-TCP
//! candidate (RFC 6544) and reaches a relay's passive TCP candidate
//! through `ice_tcp` when UDP does not get through.
//!
//! Lanes (PROTOCOL §11): WebRTC first; the WebSocket lane (`socket`) when
//! WebRTC has not reached `Welcome` within the fallback time or fails, as
//! [`LanePolicy`] decides (`lanes` runs one connection after another over
//! whichever lane it picks, with the same core, so a peer resumes on one
//! lane what it began on the other).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltamesh_proto::channel::Channel;
use deltamesh_proto::time::unix_micros;
use deltamesh_proto::trace::{TRACEPARENT, random_traceparent};
use deltamesh_proto::{Id, pb};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::backoff::ReconnectPolicy;
use crate::core::{Features, PeerCore, PeerEvent, SendError};
use crate::ice_restart::{RestartFrag, host_candidate};
use crate::ice_servers::{IceServer, parse_links};
use crate::lane::{Lane, LaneChoice, LanePolicy, LaneTimes};
use ice_tcp::TcpPaths;
use path_lane::PathLane;

mod ice_tcp;
mod lanes;
mod path_lane;
mod socket;

/// The bit that marks a ping nonce as the driver's own keepalive.
const KEEPALIVE_NONCE: u64 = 1 << 63;
/// SCTP send buffer: room for the largest message the relay accepts.
const SCTP_SEND_BUFFER: usize = 1 << 20;
/// How long an ICE restart's `PATCH` may take before the peer falls back to
/// a new offer.
const RESTART_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach a session.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Base URL of the signal service, e.g. `http://127.0.0.1:8080`.
    pub signal_url: String,
    /// Session to join.
    pub session: String,
    /// Bearer token.
    pub token: String,
    /// Also receive this peer's own deltas.
    pub echo: bool,
    /// Ask for batches (several frames per message, `Acks`; PROTOCOL §7).
    /// Default: on.
    pub batch: bool,
    /// Ask for the presence channel (§8), so [`NativePeer::set_presence`]
    /// reaches the others and their states arrive as
    /// [`PeerEvent::Presence`]. Default: on.
    pub presence: bool,
    /// Deltas that may await acknowledgement at once.
    pub max_unacked: usize,
    /// Bytes kept in flight at most. str0m's SCTP scans every in-flight
    /// chunk on each poll, so a small window moves more messages per second;
    /// it must still cover bandwidth x round trip.
    pub send_window: usize,
    /// Time allowed from offer to `Welcome`.
    pub connect_timeout: Duration,
    /// Keepalive pings, when the relay counts as gone, and the reconnect
    /// backoff (hearing from the relay means any datagram).
    pub reconnect: ReconnectPolicy,
    /// Which lanes to use: WebRTC, then the WebSocket lane (default), or one only.
    pub lane: LaneChoice,
    /// How long WebRTC may take before the WebSocket lane, and when to try
    /// WebRTC again.
    pub lane_times: LaneTimes,
    /// Offer a UDP host candidate. Default: on.
    pub udp: bool,
    /// Offer an active ICE-TCP candidate, so the peer connects over TCP to
    /// a relay's passive candidate when UDP is blocked. Default: off (ICE
    /// would open a TCP connection beside every working UDP path).
    pub ice_tcp: bool,
}

impl ConnectOptions {
    /// Options with defaults for `signal_url`, `session` and `token`.
    pub fn new(signal_url: &str, session: &str, token: &str) -> Self {
        ConnectOptions {
            signal_url: signal_url.trim_end_matches('/').to_owned(),
            session: session.to_owned(),
            token: token.to_owned(),
            echo: false,
            batch: true,
            presence: true,
            max_unacked: 65_536,
            send_window: 16 * 1024,
            connect_timeout: Duration::from_secs(10),
            reconnect: ReconnectPolicy::default(),
            lane: LaneChoice::Auto,
            lane_times: LaneTimes::default(),
            udp: true,
            ice_tcp: false,
        }
    }

    /// These options over `lane` only, e.g. [`LaneChoice::WebRtc`] where
    /// falling back to the WebSocket lane would hide a WebRTC failure.
    pub fn with_lane(mut self, lane: LaneChoice) -> Self {
        self.lane = lane;
        self
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Local socket trouble.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The signal URL is unusable.
    #[error("bad signal URL: {0}")]
    Url(String),
    /// The HTTP exchange failed.
    #[error("signaling: {0}")]
    Http(#[from] reqwest::Error),
    /// Signal answered with an error status.
    #[error("signal answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The problem+json body.
        body: String,
    },
    /// str0m refused the exchange.
    #[error("webrtc: {0}")]
    Rtc(String),
    /// No `Welcome` in time.
    #[error("no Welcome within {0:?}")]
    Timeout(Duration),
    /// The connection closed while connecting.
    #[error("connection closed while connecting")]
    Closed,
    /// The WebSocket lane could not be opened.
    #[error("websocket: {0}")]
    WebSocket(String),
}

enum Request {
    Send {
        kind: u16,
        doc_id: Id,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<u64, SendError>>,
    },
    SetPresence {
        state: Vec<u8>,
        reply: oneshot::Sender<Result<(), SendError>>,
    },
    SendTo {
        to: Id,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<(), SendError>>,
    },
    Ping(u64),
    Raw(Channel, Vec<u8>),
    MoveTo {
        ip: IpAddr,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Stop; with `leave`, first `DELETE` the peer resource.
    Close {
        leave: bool,
        done: oneshot::Sender<()>,
    },
}

/// A connected native peer. It reconnects by itself when the connection
/// drops (new offer, `Resume`), so the application sees
/// [`PeerEvent::Disconnected`], then a new [`PeerEvent::Welcomed`], and no
/// delta lost or duplicated.
pub struct NativePeer {
    requests: mpsc::Sender<Request>,
    events: mpsc::Receiver<PeerEvent>,
    welcome: pb::Welcome,
    traceparent: String,
    lane: tokio::sync::watch::Receiver<Lane>,
    lane_choice: tokio::sync::watch::Sender<LaneChoice>,
    ice_servers: Vec<IceServer>,
}

impl NativePeer {
    /// Connects to a session and waits for the relay's `Welcome`.
    pub async fn connect(options: ConnectOptions) -> Result<NativePeer, ConnectError> {
        let http = shared_http_client();
        let (requests, request_rx) = mpsc::channel(1024);
        let (event_tx, mut events) = mpsc::channel(65_536);
        let features = Features {
            echo: options.echo,
            batch: options.batch,
            presence: options.presence,
        };
        let core = PeerCore::with_features(options.max_unacked, features);
        let connect_timeout = options.connect_timeout;
        let (lane_tx, lane) = tokio::sync::watch::channel(Lane::WebRtcUdp);
        let (lane_choice, choice) = tokio::sync::watch::channel(options.lane);
        let mut parts = lanes::Parts {
            core,
            events: event_tx,
            policy: LanePolicy::new(options.lane, options.lane_times),
            local_ip: None,
            options,
            http,
            lane: lane_tx,
            choice,
            started: Instant::now(),
        };
        let first = parts.connect().await?;
        let traceparent = first.traceparent().to_owned();
        let ice_servers = first.ice_servers().to_vec();
        tokio::spawn(lanes::run(parts, first, request_rx));
        let welcome = tokio::time::timeout(connect_timeout, async {
            while let Some(event) = events.recv().await {
                if let PeerEvent::Welcomed(welcome) = event {
                    return Ok(welcome);
                }
            }
            Err(ConnectError::Closed)
        })
        .await
        .map_err(|_| ConnectError::Timeout(connect_timeout))??;
        Ok(NativePeer {
            requests,
            events,
            welcome,
            traceparent,
            lane,
            lane_choice,
            ice_servers,
        })
    }

    /// The ICE servers signal listed with the first connection's answer
    /// (PROTOCOL §10), TURN credentials included. The native peer reports
    /// them but gathers no candidates through them: str0m has no STUN or
    /// TURN client (docs/ARCHITECTURE.md, "ICE servers, TURN and trickle"),
    /// so it connects where UDP reaches a relay's host candidate.
    pub fn ice_servers(&self) -> &[IceServer] {
        &self.ice_servers
    }

    /// Uses `choice` of lanes from the next connection on (a reconnect
    /// after the current one drops).
    pub fn set_lane(&self, choice: LaneChoice) {
        let _ = self.lane_choice.send(choice);
    }

    /// The lane the current connection runs over: on WebRTC `webrtc-udp`
    /// or `webrtc-tcp` by the path its data takes (updated when ICE moves
    /// it, e.g. after [`move_to`](Self::move_to)), else `websocket`.
    pub fn lane(&self) -> Lane {
        *self.lane.borrow()
    }

    /// The `traceparent` the first connection's offer carried: each
    /// connection is one trace, which the services continue.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The relay's first welcome: peer id, relay id, session head, peers present.
    pub fn welcome(&self) -> &pb::Welcome {
        &self.welcome
    }

    /// The first connection's peer id (the origin of this peer's deltas).
    pub fn peer_id(&self) -> Id {
        Id::from_slice(&self.welcome.peer_id).unwrap_or_default()
    }

    /// Queues a delta; returns its client_seq (the ack arrives as an event).
    pub async fn send(&self, kind: u16, doc_id: Id, payload: Vec<u8>) -> Result<u64, SendError> {
        let (reply, result) = oneshot::channel();
        let request = Request::Send {
            kind,
            doc_id,
            payload,
            reply,
        };
        if self.requests.send(request).await.is_err() {
            return Err(SendError::Closed);
        }
        result.await.unwrap_or(Err(SendError::Closed))
    }

    /// Sets this peer's presence state: the others see it as
    /// [`PeerEvent::Presence`] once the relay has `presence` in force. Only
    /// the latest state is sent (one replaced before it went out is
    /// dropped), and it is sent again after a reconnect. An empty state (a
    /// clear) is refused with [`SendError::EmptyPresence`]: str0m cannot
    /// send an empty message.
    pub async fn set_presence(&self, state: Vec<u8>) -> Result<(), SendError> {
        if state.is_empty() {
            return Err(SendError::EmptyPresence);
        }
        let (reply, result) = oneshot::channel();
        if self
            .requests
            .send(Request::SetPresence { state, reply })
            .await
            .is_err()
        {
            return Err(SendError::Closed);
        }
        result.await.unwrap_or(Err(SendError::Closed))
    }

    /// Sends `payload` (at most 16 KiB) to the connected peer `to` of this
    /// session (`PeerSignal`): it arrives there as [`PeerEvent::Message`].
    /// The relay's refusals (`UNKNOWN_PEER`, `NOT_PERMITTED`, `TOO_LARGE`)
    /// arrive as [`PeerEvent::RelayError`]. Refused while reconnecting.
    pub async fn send_to(&self, to: Id, payload: Vec<u8>) -> Result<(), SendError> {
        let (reply, result) = oneshot::channel();
        let request = Request::SendTo { to, payload, reply };
        if self.requests.send(request).await.is_err() {
            return Err(SendError::Closed);
        }
        result.await.unwrap_or(Err(SendError::Closed))
    }

    /// Sends a ping; the pong arrives as [`PeerEvent::Pong`]. Nonces with
    /// the top bit set are the peer's own keepalives, whose pongs are not
    /// passed on.
    pub async fn ping(&self, nonce: u64) {
        let _ = self.requests.send(Request::Ping(nonce)).await;
    }

    /// Writes `bytes` as one message on `channel`, bypassing the protocol:
    /// for tools and tests that check what a relay does with any input.
    pub async fn send_raw(&self, channel: Channel, bytes: Vec<u8>) {
        let _ = self.requests.send(Request::Raw(channel, bytes)).await;
    }

    /// The next event; `None` once the peer is closed (or after
    /// [`PeerEvent::Stopped`]).
    pub async fn next_event(&mut self) -> Option<PeerEvent> {
        self.events.recv().await
    }

    /// Leaves the session: `DELETE` on the peer resource, then stops.
    pub async fn close(self) {
        self.stop(true).await
    }

    /// The network changed: moves the connection to a UDP socket on
    /// `local_ip` with an ICE restart (PROTOCOL §1, `If-Match: *`), keeping
    /// the peer id, the channels and the place in the stream (no new
    /// `Welcome`, nothing lost or doubled). With [`ConnectOptions::udp`]
    /// off it offers no UDP candidate: only the ICE credentials change and
    /// the ICE-TCP path is checked again. If the relay refuses the
    /// restart (or does not answer in 5 s) the peer falls back to a new
    /// offer from `local_ip` and resumes, and this returns the reason.
    /// Later reconnects start from `local_ip` too.
    pub async fn move_to(&self, local_ip: IpAddr) -> Result<(), String> {
        let (reply, result) = oneshot::channel();
        let request = Request::MoveTo {
            ip: local_ip,
            reply,
        };
        if self.requests.send(request).await.is_err() {
            return Err("the peer is closed".into());
        }
        result
            .await
            .unwrap_or_else(|_| Err("the peer is closed".into()))
    }

    /// Stops without telling anyone, as a crashed process would.
    pub async fn vanish(self) {
        self.stop(false).await
    }

    async fn stop(self, leave: bool) {
        let (done, stopped) = oneshot::channel();
        if self
            .requests
            .send(Request::Close { leave, done })
            .await
            .is_ok()
        {
            let _ = stopped.await;
        }
    }
}

/// Binds a non-blocking UDP socket with a receive buffer big enough for a
/// burst of deltas (the kernel caps it at `net.core.rmem_max`).
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller buffer only means more retransmits.
    let _ = socket.set_recv_buffer_size(1 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// One HTTP client (and connection pool) for every peer of the process.
fn shared_http_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new).clone()
}

fn accept_answer(rtc: &mut Rtc, pending: SdpPendingOffer, body: &str) -> Result<(), ConnectError> {
    let answer = SdpAnswer::from_sdp_string(body).map_err(|e| ConnectError::Rtc(e.to_string()))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| ConnectError::Rtc(e.to_string()))
}

/// The local address the OS would use to reach the signal host, so the
/// host candidate is concrete (never 0.0.0.0).
async fn local_ip_towards(signal_url: &str) -> Result<IpAddr, ConnectError> {
    let url = reqwest::Url::parse(signal_url).map_err(|e| ConnectError::Url(e.to_string()))?;
    let host = url
        .host_str()
        .ok_or_else(|| ConnectError::Url("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| ConnectError::Url(format!("{host} does not resolve")))?;
    let probe = UdpSocket::bind(SocketAddr::new(
        if target.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        },
        0,
    ))
    .await?;
    probe.connect(target).await?;
    Ok(probe.local_addr()?.ip())
}

/// One WebRTC connection to a relay.
struct Link {
    rtc: Rtc,
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    /// The active TCP candidate's address, when the peer offers one.
    tcp_local: Option<SocketAddr>,
    tcp: TcpPaths,
    channels: [ChannelId; 4],
    /// The peer resource's URL, for `DELETE`.
    resource: String,
    /// The trace this connection is (sent with its offer).
    traceparent: String,
    /// The ICE servers listed with the answer.
    ice_servers: Vec<IceServer>,
}

impl Link {
    /// Offers from `local_ip` (by default the address towards signal),
    /// posts the offer to signal and applies the answer.
    async fn establish(
        options: &ConnectOptions,
        http: &reqwest::Client,
        local_ip: Option<IpAddr>,
    ) -> Result<Link, ConnectError> {
        let local_ip = match local_ip {
            Some(ip) => ip,
            None => local_ip_towards(&options.signal_url).await?,
        };
        let socket = bind_udp(SocketAddr::new(local_ip, 0))?;
        let local_addr = socket.local_addr()?;
        let mut rtc = Rtc::builder()
            .set_sctp_max_message_size(1 << 20)
            .set_sctp_max_buffered_amount(SCTP_SEND_BUFFER)
            .clear_codecs()
            .build(Instant::now());
        if options.udp {
            let candidate =
                Candidate::host(local_addr, "udp").map_err(|e| ConnectError::Rtc(e.to_string()))?;
            rtc.add_local_candidate(candidate);
        }
        let tcp_local = options
            .ice_tcp
            .then(|| SocketAddr::new(local_ip, ice_tcp::ACTIVE_PORT));
        if let Some(addr) = tcp_local {
            let candidate = Candidate::builder()
                .tcp()
                .host(addr)
                .tcptype(TcpType::Active)
                .build()
                .map_err(|e| ConnectError::Rtc(e.to_string()))?;
            rtc.add_local_candidate(candidate);
        }
        let mut sdp = rtc.sdp_api();
        let channels =
            Channel::ALL.map(|channel| sdp.add_channel_with_config(channel_config(channel)));
        let (offer, pending) = sdp
            .apply()
            .ok_or_else(|| ConnectError::Rtc("no offer to make".into()))?;
        let url = format!(
            "{}/v1/sessions/{}/peers",
            options.signal_url, options.session
        );
        let traceparent = random_traceparent();
        let response = http
            .post(&url)
            .header("content-type", "application/sdp")
            .header(TRACEPARENT, &traceparent)
            .bearer_auth(&options.token)
            .body(offer.to_sdp_string())
            .send()
            .await?;
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let ice_servers = parse_links(
            response
                .headers()
                .get_all("link")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let body = response.text().await?;
        if status.as_u16() != 201 {
            return Err(ConnectError::Refused {
                status: status.as_u16(),
                body,
            });
        }
        accept_answer(&mut rtc, pending, &body)?;
        Ok(Link {
            rtc,
            socket: Arc::new(socket),
            local_addr,
            tcp_local,
            tcp: TcpPaths::default(),
            channels,
            resource: format!("{}{}", options.signal_url, location),
            traceparent,
            ice_servers,
        })
    }

    /// Sends one of str0m's datagrams on its transport.
    fn transmit(&mut self, transmit: &str0m::net::Transmit) {
        match transmit.proto {
            Protocol::Udp => {
                let _ = self
                    .socket
                    .try_send_to(&transmit.contents, transmit.destination);
            }
            _ => self.tcp.send(transmit.destination, &transmit.contents),
        }
    }

    fn channel_of(&self, id: ChannelId) -> Option<Channel> {
        Channel::ALL
            .into_iter()
            .find(|c| self.channels[c.stream_id() as usize] == id)
    }
}

/// Why the connected phase ended.
enum Ended {
    /// The connection dropped: reconnect.
    Lost(String),
    /// The relay is draining: close this connection and reconnect after
    /// the relay's delay (signal places the peer on another relay).
    Moved(String, Duration),
    /// The application closed the peer (or dropped it).
    Closed,
}

/// One WebRTC connection being served, with what the peer keeps across
/// connections.
struct Driver {
    link: Link,
    core: PeerCore,
    events: mpsc::Sender<PeerEvent>,
    /// The local address the application moved the peer to, for every
    /// later connection; `None`: the one towards signal.
    local_ip: Option<IpAddr>,
    options: ConnectOptions,
    http: reqwest::Client,
    /// Give up on this connection if it has no `Welcome` by then.
    fallback_at: Option<Instant>,
    /// The lane its data takes, reported as it changes.
    lane: PathLane,
}

impl Driver {
    /// Drives the current connection until it drops or the peer is closed.
    async fn serve(&mut self, requests: &mut mpsc::Receiver<Request>) -> Ended {
        let mut socket = Arc::clone(&self.link.socket);
        let mut buf = vec![0u8; 2048];
        let mut last_rx = Instant::now();
        let mut pinged_at = last_rx;
        let mut nonce = 0u64;
        loop {
            let timeout = match self.drive().await {
                Ok(timeout) => timeout,
                Err(ended) => return ended,
            };
            let now = Instant::now();
            let silent = now.duration_since(last_rx);
            if silent >= self.options.reconnect.silence_timeout {
                return Ended::Lost(format!("nothing from the relay for {silent:?}"));
            }
            if let Some(at) = self.fallback_at
                && self.core.welcome().is_none()
                && now >= at
            {
                return Ended::Lost("WebRTC did not connect in time".into());
            }
            let keepalive = self.options.reconnect.keepalive;
            if silent >= keepalive && now.duration_since(pinged_at) >= keepalive {
                nonce += 1;
                self.core.ping(KEEPALIVE_NONCE | nonce);
                pinged_at = now;
                continue;
            }
            let mut check_at = (last_rx + keepalive).max(pinged_at + keepalive);
            if let Some(at) = self.fallback_at.filter(|_| self.core.welcome().is_none()) {
                check_at = check_at.min(at);
            }
            tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Close { leave, done }) => {
                        if leave {
                            let _ = self
                                .http
                                .delete(&self.link.resource)
                                .bearer_auth(&self.options.token)
                                .send()
                                .await;
                            let _ = self.link.rtc.close();
                            let _ = self.drive().await;
                        }
                        let _ = done.send(());
                        return Ended::Closed;
                    }
                    Some(Request::MoveTo { ip, reply }) => match self.restart_ice(ip).await {
                        Ok(()) => {
                            socket = Arc::clone(&self.link.socket);
                            let _ = reply.send(Ok(()));
                        }
                        Err(error) => {
                            let _ = reply.send(Err(error.to_string()));
                            return Ended::Lost(format!(
                                "ICE restart failed ({error}); reconnecting with a new offer"
                            ));
                        }
                    },
                    Some(request) => self.handle(request),
                    None => return Ended::Closed,
                },
                received = socket.recv_from(&mut buf) => {
                    if let Ok((len, source)) = received {
                        last_rx = Instant::now();
                        self.receive(Protocol::Udp, source, &buf[..len]);
                    }
                }
                (source, datagram) = self.link.tcp.recv() => {
                    last_rx = Instant::now();
                    self.receive(Protocol::Tcp, source, &datagram);
                }
                _ = tokio::time::sleep_until(timeout.min(check_at).into()) => {
                    if let Err(error) = self.link.rtc.handle_input(Input::Timeout(Instant::now())) {
                        return Ended::Lost(format!("webrtc: {error}"));
                    }
                }
            }
        }
    }

    /// Moves the connection to a socket on `ip` with an ICE restart
    /// (`PATCH` with `If-Match: *`): new local credentials and host
    /// candidate; the relay answers with its new credentials. The `Rtc`
    /// (DTLS, SCTP, channels) stays, so the peer keeps its id and its
    /// place in the stream.
    async fn restart_ice(&mut self, ip: IpAddr) -> Result<(), ConnectError> {
        // A new offer after a failed restart starts from `ip` too.
        self.local_ip = Some(ip);
        let socket = bind_udp(SocketAddr::new(ip, 0))?;
        let local_addr = socket.local_addr()?;
        let rtc_error = |e: str0m::error::IceError| ConnectError::Rtc(e.to_string());
        let candidate = Candidate::host(local_addr, "udp").map_err(rtc_error)?;
        let old_candidate = Candidate::host(self.link.local_addr, "udp").map_err(rtc_error)?;
        let creds = IceCreds::new();
        // A peer told not to offer UDP offers none after a move either: its
        // ICE-TCP path is checked again under the new credentials.
        let candidates = if self.options.udp {
            vec![host_candidate(local_addr, candidate.prio())]
        } else {
            Vec::new()
        };
        let ours = RestartFrag {
            ufrag: creds.ufrag.clone(),
            pwd: creds.pass.clone(),
            candidates,
        };
        let response = self
            .http
            .patch(&self.link.resource)
            .bearer_auth(&self.options.token)
            .header("content-type", "application/trickle-ice-sdpfrag")
            .header("if-match", "*")
            .timeout(RESTART_TIMEOUT)
            .body(ours.to_sdpfrag("0"))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        if status != 200 {
            return Err(ConnectError::Refused { status, body });
        }
        let theirs = RestartFrag::parse(&body).ok_or_else(|| {
            ConnectError::Rtc(format!("the restart answer has no ICE credentials: {body}"))
        })?;
        let remote_candidates = theirs
            .candidates
            .iter()
            .map(|line| {
                Candidate::from_sdp_string(line).map_err(|e| ConnectError::Rtc(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rtc = &mut self.link.rtc;
        let mut api = rtc.direct_api();
        api.set_local_ice_credentials(creds);
        api.set_remote_ice_credentials(IceCreds {
            ufrag: theirs.ufrag,
            pass: theirs.pwd,
        });
        if self.options.udp {
            rtc.add_local_candidate(candidate);
            rtc.direct_api().invalidate_candidate(&old_candidate);
        }
        for remote in remote_candidates {
            rtc.add_remote_candidate(remote);
        }
        self.link.socket = Arc::new(socket);
        self.link.local_addr = local_addr;
        tracing::info!(%local_addr, "ICE restarted on a new address");
        Ok(())
    }

    fn handle(&mut self, request: Request) {
        handle_request(&mut self.core, &mut self.local_ip, request);
    }

    fn receive(&mut self, proto: Protocol, source: SocketAddr, datagram: &[u8]) {
        let destination = match proto {
            Protocol::Udp => self.link.local_addr,
            _ => match self.link.tcp_local {
                Some(addr) => addr,
                None => return,
            },
        };
        let Ok(contents) = datagram.try_into() else {
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let _ = self.link.rtc.handle_input(input);
    }

    /// Writes what the core wants sent, drains str0m's output, and hands
    /// events to the application. Returns the next deadline.
    async fn drive(&mut self) -> Result<Instant, Ended> {
        let mut retried = false;
        loop {
            self.write_outbox();
            let output = self
                .link
                .rtc
                .poll_output()
                .map_err(|e| Ended::Lost(format!("webrtc: {e}")))?;
            match output {
                Output::Transmit(transmit) => self.transmit(&transmit),
                Output::Event(event) => self.on_event(event)?,
                Output::Timeout(_) if self.core.wants_to_transmit() && !retried => {
                    // str0m applies acknowledgements while polling, so the
                    // window may have opened just now: write once more.
                    retried = true;
                }
                Output::Timeout(at) => {
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
                            if matches!(ended, Ended::Closed) {
                                // Stopped for good: leave, so the relay
                                // frees the connection at once.
                                let _ = self.link.rtc.close();
                                self.flush_transmits();
                            }
                            return Err(ended);
                        }
                    }
                    if !self.link.rtc.is_alive() {
                        return Err(Ended::Lost("connection closed".into()));
                    }
                    return Ok(at);
                }
            }
        }
    }

    /// Sends one of str0m's datagrams, noting the path it takes.
    fn transmit(&mut self, transmit: &str0m::net::Transmit) {
        self.link.transmit(transmit);
        self.lane.sent(transmit.proto, &transmit.contents);
    }

    fn on_event(&mut self, event: Event) -> Result<(), Ended> {
        match event {
            Event::ChannelData(data) => {
                if let Some(channel) = self.link.channel_of(data.id) {
                    self.core.handle_message(channel, data.data);
                }
                Ok(())
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                Err(Ended::Lost("ice disconnected".into()))
            }
            Event::Closed => Err(Ended::Lost("closed by the relay".into())),
            Event::ChannelClose(_) => Err(Ended::Lost("channel closed".into())),
            _ => Ok(()),
        }
    }

    /// Sends what str0m has for the socket, ignoring everything else (the
    /// connection is being abandoned).
    fn flush_transmits(&mut self) {
        while let Ok(output) = self.link.rtc.poll_output() {
            match output {
                Output::Transmit(transmit) => self.transmit(&transmit),
                Output::Event(_) => {}
                Output::Timeout(_) => return,
            }
        }
    }

    /// Writes queued messages. On `send` the data in flight stays under
    /// the send window, which always holds three of the message at hand (a
    /// large delta's fragments; fewer in flight stall on delayed acks).
    /// Commands and presence are small and are written whatever the window
    /// (the core hands them out first, so they pass between fragments).
    fn write_outbox(&mut self) {
        if !self.core.wants_to_transmit() {
            return;
        }
        let link = &mut self.link;
        // Measured once: every message written below is counted in locally.
        let mut in_flight: usize = link
            .channels
            .iter()
            .filter_map(|&id| link.rtc.channel(id).map(|mut c| c.buffered_amount()))
            .sum();
        while let Some((channel, bytes)) = self.core.poll_transmit() {
            let id = link.channels[channel.stream_id() as usize];
            let window = self.options.send_window.max(3 * bytes.len());
            let fits = channel != Channel::Send || in_flight + bytes.len() <= window;
            let written = fits
                && match link.rtc.channel(id) {
                    Some(mut handle) => handle.write(true, &bytes).unwrap_or(false),
                    None => false,
                };
            if !written {
                self.core.unpoll_transmit(channel, bytes);
                return;
            }
            in_flight += bytes.len();
        }
    }
}

/// Does what the application asked of the core.
fn handle_request(core: &mut PeerCore, local_ip: &mut Option<IpAddr>, request: Request) {
    match request {
        Request::Send {
            kind,
            doc_id,
            payload,
            reply,
        } => {
            let _ = reply.send(core.send(kind, doc_id, &payload, unix_micros()));
        }
        Request::SetPresence { state, reply } => {
            let _ = reply.send(core.set_presence(&state));
        }
        Request::SendTo { to, payload, reply } => {
            let _ = reply.send(core.send_to(to, &payload));
        }
        Request::Ping(nonce) => core.ping(nonce),
        Request::Raw(channel, bytes) => core.unpoll_transmit(channel, bytes),
        Request::Close { done, .. } => {
            let _ = done.send(());
        }
        // No UDP socket to move (between connections, or on the socket
        // lane): the next WebRTC connection starts from `ip`.
        Request::MoveTo { ip, reply } => {
            *local_ip = Some(ip);
            let _ = reply.send(Ok(()));
        }
    }
}

/// str0m's configuration of a deltamesh channel: negotiated by stream id,
/// ordered and reliable except `presence` (unordered, no retransmits).
pub fn channel_config(channel: Channel) -> ChannelConfig {
    ChannelConfig {
        label: channel.label().to_owned(),
        negotiated: Some(channel.stream_id()),
        ordered: channel.ordered(),
        reliability: match channel.max_retransmits() {
            Some(retransmits) => Reliability::MaxRetransmits { retransmits },
            None => Reliability::Reliable,
        },
        ..ChannelConfig::default()
    }
}

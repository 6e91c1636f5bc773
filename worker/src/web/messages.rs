//! What the page and the worker say to each other over `postMessage`.
//!
//! Each message is a plain object with a `type` and its fields. The worker
//! sends a batch (an array) per turn of its event loop, so a burst of
//! deltas costs one `postMessage`, not one each. Buffers travel in the
//! transfer list: received payloads move to the page without a copy.

use std::str::FromStr;
use std::time::Duration;

use deltamesh_proto::Id;
use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::RtcDataChannel;

use super::js::{get, get_instance, get_integer, get_number, get_string, object};
use crate::backoff::ReconnectPolicy;
use crate::ice_servers::IceServer;
use crate::lane::{Lane, LaneChoice, LaneTimes, Transport};

/// Largest integer a JavaScript number holds exactly (seqs, counters).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// How the worker connects: the page's `connect` arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Base URL of `signal`, e.g. `http://127.0.0.1:8080`.
    pub signal_url: String,
    /// The session to join.
    pub session: String,
    /// The bearer token.
    pub token: String,
    /// Whether this peer also receives its own deltas.
    pub echo: bool,
    /// Whether to ask for batches (PROTOCOL §7).
    pub batch: bool,
    /// Whether to ask for the presence channel (§8).
    pub presence: bool,
    /// Deltas that may await acknowledgement before `send` refuses more.
    pub max_unacked: u32,
    /// Keepalive pings, when the relay counts as gone, and the reconnect
    /// backoff: the native peer's policy, as the page's options set it.
    pub reconnect: ReconnectPolicy,
    /// Which candidates the peer connection may use.
    pub ice_transport_policy: IceTransportPolicy,
    /// Which lanes the worker may connect over (PROTOCOL §11).
    pub lane: LaneChoice,
    /// How long WebRTC may take before the WebSocket lane, and when to
    /// try WebRTC again.
    pub lane_times: LaneTimes,
}

/// A lane choice's name in the page's options.
pub fn lane_choice_name(choice: LaneChoice) -> &'static str {
    match choice {
        LaneChoice::Auto => "auto",
        LaneChoice::WebRtc => "webrtc",
        LaneChoice::WebSocket => "websocket",
    }
}

/// A transport's name in the stats the worker sends.
fn transport_name(transport: Transport) -> &'static str {
    match transport {
        Transport::WebRtc => "webrtc",
        Transport::WebSocket => "websocket",
    }
}

fn transport_named(name: &str) -> Option<Transport> {
    [Transport::WebRtc, Transport::WebSocket]
        .into_iter()
        .find(|t| transport_name(*t) == name)
}

/// `RTCConfiguration.iceTransportPolicy`: every candidate, or TURN relay
/// candidates only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IceTransportPolicy {
    /// Host, server-reflexive and relay candidates (the default).
    #[default]
    All,
    /// Relay candidates only: every packet goes through a TURN server.
    Relay,
}

impl IceTransportPolicy {
    /// The policy's name in `RTCConfiguration`.
    pub fn as_str(self) -> &'static str {
        match self {
            IceTransportPolicy::All => "all",
            IceTransportPolicy::Relay => "relay",
        }
    }
}

impl FromStr for IceTransportPolicy {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "all" => Ok(IceTransportPolicy::All),
            "relay" => Ok(IceTransportPolicy::Relay),
            other => Err(format!(
                "iceTransportPolicy must be \"all\" or \"relay\", got {other:?}"
            )),
        }
    }
}

/// The connection's state as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first connection is being made.
    Connecting,
    /// The relay welcomed this peer; deltas flow.
    Connected,
    /// The connection dropped; a new one is being made and will resume.
    Reconnecting,
    /// The last attempt failed (the detail says why); retrying with
    /// backoff, except after a refused token or a lost history
    /// (`HISTORY_LOST`), when it stays failed until the application
    /// connects again.
    Failed,
    /// The application closed the connection.
    Closed,
}

impl ConnectionState {
    /// The state's name, as shown to applications.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting => "reconnecting",
            ConnectionState::Failed => "failed",
            ConnectionState::Closed => "closed",
        }
    }
}

impl FromStr for ConnectionState {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Ok(match name {
            "connecting" => ConnectionState::Connecting,
            "connected" => ConnectionState::Connected,
            "reconnecting" => ConnectionState::Reconnecting,
            "failed" => ConnectionState::Failed,
            "closed" => ConnectionState::Closed,
            other => return Err(format!("unknown connection state {other:?}")),
        })
    }
}

/// Connection statistics, refreshed by the worker on each keepalive tick
/// (every 500 ms by default).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Stats {
    /// Round trip to the relay from the last ping, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Bytes written to the channels.
    pub bytes_sent: f64,
    /// Bytes read from the channels.
    pub bytes_received: f64,
    /// Deltas acknowledged by the relay.
    pub deltas_sent: f64,
    /// Deltas from other peers delivered to the application.
    pub deltas_received: f64,
    /// Deltas sent but not yet acknowledged.
    pub unacked: f64,
    /// Bytes waiting in the channels' send buffers.
    pub buffered_bytes: f64,
    /// Highest session seq delivered.
    pub last_seq: f64,
    /// The transport of the welcomed connection, `None` while there is none.
    pub transport: Option<Transport>,
    /// The lane in use, when the worker knows it: always on the WebSocket
    /// lane; over WebRTC only when the worker made the peer connection
    /// (the page reads it from its own otherwise).
    pub lane: Option<Lane>,
}

/// A message from the page to the worker.
#[derive(Debug, Clone)]
pub enum ToWorker {
    /// Connect with this configuration (first message, once).
    Start(Config),
    /// The channels of peer connection `generation`, transferred.
    Channels {
        /// Which connection attempt they belong to.
        generation: u32,
        /// `command`, `send`, `receive` and `presence`, by stream id.
        channels: [RtcDataChannel; 4],
    },
    /// The page's SDP offer for peer connection `generation`.
    Offer {
        /// Which connection attempt it belongs to.
        generation: u32,
        /// The offer.
        sdp: String,
    },
    /// Peer connection `generation` gathered a candidate (after its offer
    /// was made), to trickle to the relay.
    Candidate {
        /// Which connection attempt.
        generation: u32,
        /// The `RTCIceCandidate.candidate` string.
        candidate: String,
    },
    /// Peer connection `generation` restarted ICE (`restartIce()` and a
    /// new local offer): its new credentials, for the relay.
    Restart {
        /// Which connection attempt.
        generation: u32,
        /// The new `ice-ufrag`.
        ufrag: String,
        /// The new `ice-pwd`.
        pwd: String,
    },
    /// Peer connection `generation` failed, or could not be made.
    LinkFailed {
        /// Which connection attempt.
        generation: u32,
        /// Why.
        reason: String,
    },
    /// Send a delta; the answer names `id`.
    Send {
        /// The page's request id.
        id: u32,
        /// Application-defined kind.
        kind: u16,
        /// Application-defined document id.
        doc_id: Id,
        /// The payload.
        payload: Uint8Array,
    },
    /// Replace this peer's presence state (empty clears it).
    SetPresence {
        /// The state.
        state: Uint8Array,
    },
    /// Send a direct message to another peer.
    SendTo {
        /// The recipient.
        peer: Id,
        /// The bytes.
        payload: Uint8Array,
    },
    /// Leave the session.
    Close,
}

/// Something the application should know about that is not a delta: the
/// relay's notices and errors (PROTOCOL §5–§9), by `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// `relayError`, `rejected`, `slowConsumer`, `drain`, `historyLost`,
    /// `protocolError`, `presenceRefused` or `sendToFailed`.
    pub kind: String,
    /// The relay's code without its prefix (`UNKNOWN_PEER`, `TOO_LARGE`,
    /// …), empty when there is none.
    pub code: String,
    /// The details in words (for a direct message's error, the recipient's
    /// id is in it).
    pub detail: String,
}

/// A message from the worker to the page (sent in batches).
#[derive(Debug, Clone, PartialEq)]
pub enum ToPage {
    /// The worker is running and listening.
    Ready,
    /// Make peer connection `generation` with these ICE servers and
    /// transfer its channels.
    OpenLink {
        /// The attempt's number.
        generation: u32,
        /// The STUN and TURN servers signal listed (PROTOCOL §10).
        ice_servers: Vec<IceServer>,
    },
    /// The relay's answer for peer connection `generation`.
    Answer {
        /// Which connection attempt.
        generation: u32,
        /// The answer.
        sdp: String,
    },
    /// The relay's new ICE credentials after peer connection
    /// `generation`'s restart, to apply as the remote description.
    RestartAnswer {
        /// Which connection attempt.
        generation: u32,
        /// The relay's new `ice-ufrag`.
        ufrag: String,
        /// The relay's new `ice-pwd`.
        pwd: String,
    },
    /// The relay did not take peer connection `generation`'s restart; the
    /// worker reconnects with a new offer.
    RestartFailed {
        /// Which connection attempt.
        generation: u32,
        /// Why.
        reason: String,
    },
    /// Close peer connection `generation`.
    CloseLink {
        /// Which connection attempt.
        generation: u32,
    },
    /// The connection's state changed.
    State {
        /// The new state.
        state: ConnectionState,
        /// Why, in words (empty when there is nothing to add).
        detail: String,
    },
    /// The relay admitted this peer under `peer_id`.
    Welcomed {
        /// This connection's peer id.
        peer_id: Id,
        /// The other peers in the session at that moment.
        peers: Vec<Id>,
    },
    /// Delta request `id` is durable under `seq`.
    Sent {
        /// The page's request id.
        id: u32,
        /// The session seq.
        seq: u64,
    },
    /// Delta request `id` failed.
    SendFailed {
        /// The page's request id.
        id: u32,
        /// Why.
        error: String,
    },
    /// A delta from another peer; the payload is
    /// `buffer[offset..offset + length]`.
    Delta {
        /// The session seq.
        seq: u64,
        /// The sending peer.
        origin: Id,
        /// Application-defined kind.
        kind: u16,
        /// Application-defined document id.
        doc_id: Id,
        /// The relayed message as received, transferred.
        buffer: ArrayBuffer,
        /// Where the payload starts.
        offset: u32,
        /// The payload's length.
        length: u32,
    },
    /// Another peer joined the session.
    PeerJoined(Id),
    /// Another peer left the session.
    PeerLeft(Id),
    /// What the relay put in force after this peer's `Options`.
    Options {
        /// Echo of own deltas.
        echo: bool,
        /// Batches.
        batch: bool,
        /// The presence channel.
        presence: bool,
    },
    /// Another peer's presence state (empty: cleared, or it left).
    Presence {
        /// Whose.
        peer: Id,
        /// The state.
        state: Vec<u8>,
    },
    /// A direct message from another peer.
    Message {
        /// The sender.
        from: Id,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// A notice or error for the application.
    Notice(Notice),
    /// Fresh statistics.
    Stats(Stats),
}

fn id_value(id: &Id) -> JsValue {
    JsValue::from_str(&id.to_string())
}

fn get_id(object: &JsValue, key: &str) -> Result<Id, String> {
    let text = get_string(object, key)?;
    Id::from_str(&text).map_err(|e| format!("`{key}`: {e}"))
}

fn get_u32(object: &JsValue, key: &str) -> Result<u32, String> {
    get_integer(object, key, u32::MAX as f64).map(|n| n as u32)
}

fn number(n: impl Into<f64>) -> JsValue {
    JsValue::from_f64(n.into())
}

/// A duration as whole milliseconds, as the page's options give it.
fn millis(duration: Duration) -> JsValue {
    JsValue::from_f64(duration.as_millis() as f64)
}

fn get_millis(object: &JsValue, key: &str) -> Result<Duration, String> {
    get_u32(object, key).map(|ms| Duration::from_millis(ms.into()))
}

impl ToWorker {
    /// The message as a JavaScript value and the objects to transfer.
    pub fn encode(&self) -> (JsValue, Array) {
        let transfer = Array::new();
        let message = match self {
            ToWorker::Start(config) => object(&[
                ("type", "start".into()),
                ("signalUrl", config.signal_url.as_str().into()),
                ("session", config.session.as_str().into()),
                ("token", config.token.as_str().into()),
                ("echo", config.echo.into()),
                ("batch", config.batch.into()),
                ("presence", config.presence.into()),
                ("maxUnacked", number(config.max_unacked)),
                ("firstRetryMs", millis(config.reconnect.first_retry)),
                ("maxRetryMs", millis(config.reconnect.max_retry)),
                ("keepaliveMs", millis(config.reconnect.keepalive)),
                ("silenceTimeoutMs", millis(config.reconnect.silence_timeout)),
                (
                    "iceTransportPolicy",
                    config.ice_transport_policy.as_str().into(),
                ),
                ("lane", lane_choice_name(config.lane).into()),
                (
                    "webrtcFallbackMs",
                    millis(config.lane_times.webrtc_fallback),
                ),
                ("retryWebrtcMs", millis(config.lane_times.retry_webrtc)),
            ]),
            ToWorker::Channels {
                generation,
                channels,
            } => {
                let list = Array::new();
                for channel in channels {
                    list.push(channel);
                    transfer.push(channel);
                }
                object(&[
                    ("type", "channels".into()),
                    ("generation", number(*generation)),
                    ("channels", list.into()),
                ])
            }
            ToWorker::Offer { generation, sdp } => object(&[
                ("type", "offer".into()),
                ("generation", number(*generation)),
                ("sdp", sdp.as_str().into()),
            ]),
            ToWorker::Candidate {
                generation,
                candidate,
            } => object(&[
                ("type", "candidate".into()),
                ("generation", number(*generation)),
                ("candidate", candidate.as_str().into()),
            ]),
            ToWorker::Restart {
                generation,
                ufrag,
                pwd,
            } => object(&[
                ("type", "restart".into()),
                ("generation", number(*generation)),
                ("ufrag", ufrag.as_str().into()),
                ("pwd", pwd.as_str().into()),
            ]),
            ToWorker::LinkFailed { generation, reason } => object(&[
                ("type", "linkFailed".into()),
                ("generation", number(*generation)),
                ("reason", reason.as_str().into()),
            ]),
            ToWorker::Send {
                id,
                kind,
                doc_id,
                payload,
            } => object(&[
                ("type", "send".into()),
                ("id", number(*id)),
                ("kind", number(*kind)),
                ("docId", id_value(doc_id)),
                ("payload", payload.into()),
            ]),
            ToWorker::SetPresence { state } => {
                object(&[("type", "setPresence".into()), ("state", state.into())])
            }
            ToWorker::SendTo { peer, payload } => object(&[
                ("type", "sendTo".into()),
                ("peerId", id_value(peer)),
                ("payload", payload.into()),
            ]),
            ToWorker::Close => object(&[("type", "close".into())]),
        };
        (message.into(), transfer)
    }

    /// Reads a message the page sent.
    pub fn decode(message: &JsValue) -> Result<ToWorker, String> {
        Ok(match get_string(message, "type")?.as_str() {
            "start" => ToWorker::Start(Config {
                signal_url: get_string(message, "signalUrl")?,
                session: get_string(message, "session")?,
                token: get_string(message, "token")?,
                echo: get(message, "echo").as_bool().unwrap_or(false),
                batch: get(message, "batch").as_bool().unwrap_or(false),
                presence: get(message, "presence").as_bool().unwrap_or(false),
                max_unacked: get_u32(message, "maxUnacked")?,
                reconnect: ReconnectPolicy {
                    first_retry: get_millis(message, "firstRetryMs")?,
                    max_retry: get_millis(message, "maxRetryMs")?,
                    keepalive: get_millis(message, "keepaliveMs")?,
                    silence_timeout: get_millis(message, "silenceTimeoutMs")?,
                },
                ice_transport_policy: get_string(message, "iceTransportPolicy")?.parse()?,
                lane: LaneChoice::from_name(&get_string(message, "lane")?)
                    .ok_or("`lane` must be \"auto\", \"webrtc\" or \"websocket\"")?,
                lane_times: LaneTimes {
                    webrtc_fallback: get_millis(message, "webrtcFallbackMs")?,
                    retry_webrtc: get_millis(message, "retryWebrtcMs")?,
                },
            }),
            "channels" => {
                let list: Array = get_instance(message, "channels")?;
                let channel = |i: u32| {
                    list.get(i)
                        .dyn_into::<RtcDataChannel>()
                        .map_err(|_| format!("channel {i} is not an RTCDataChannel"))
                };
                ToWorker::Channels {
                    generation: get_u32(message, "generation")?,
                    channels: [channel(0)?, channel(1)?, channel(2)?, channel(3)?],
                }
            }
            "offer" => ToWorker::Offer {
                generation: get_u32(message, "generation")?,
                sdp: get_string(message, "sdp")?,
            },
            "candidate" => ToWorker::Candidate {
                generation: get_u32(message, "generation")?,
                candidate: get_string(message, "candidate")?,
            },
            "restart" => ToWorker::Restart {
                generation: get_u32(message, "generation")?,
                ufrag: get_string(message, "ufrag")?,
                pwd: get_string(message, "pwd")?,
            },
            "linkFailed" => ToWorker::LinkFailed {
                generation: get_u32(message, "generation")?,
                reason: get_string(message, "reason")?,
            },
            "send" => ToWorker::Send {
                id: get_u32(message, "id")?,
                kind: get_integer(message, "kind", u16::MAX as f64)? as u16,
                doc_id: get_id(message, "docId")?,
                payload: get_instance(message, "payload")?,
            },
            "setPresence" => ToWorker::SetPresence {
                state: get_instance(message, "state")?,
            },
            "sendTo" => ToWorker::SendTo {
                peer: get_id(message, "peerId")?,
                payload: get_instance(message, "payload")?,
            },
            "close" => ToWorker::Close,
            other => return Err(format!("unknown message type {other:?}")),
        })
    }
}

impl ToPage {
    /// The message as a JavaScript value; objects to transfer are pushed
    /// onto `transfer`.
    pub fn encode(&self, transfer: &Array) -> JsValue {
        let message = match self {
            ToPage::Ready => object(&[("type", "ready".into())]),
            ToPage::OpenLink {
                generation,
                ice_servers,
            } => object(&[
                ("type", "openLink".into()),
                ("generation", number(*generation)),
                ("iceServers", ice_servers_array(ice_servers).into()),
            ]),
            ToPage::Answer { generation, sdp } => object(&[
                ("type", "answer".into()),
                ("generation", number(*generation)),
                ("sdp", sdp.as_str().into()),
            ]),
            ToPage::RestartAnswer {
                generation,
                ufrag,
                pwd,
            } => object(&[
                ("type", "restartAnswer".into()),
                ("generation", number(*generation)),
                ("ufrag", ufrag.as_str().into()),
                ("pwd", pwd.as_str().into()),
            ]),
            ToPage::RestartFailed { generation, reason } => object(&[
                ("type", "restartFailed".into()),
                ("generation", number(*generation)),
                ("reason", reason.as_str().into()),
            ]),
            ToPage::CloseLink { generation } => object(&[
                ("type", "closeLink".into()),
                ("generation", number(*generation)),
            ]),
            ToPage::State { state, detail } => object(&[
                ("type", "state".into()),
                ("state", state.as_str().into()),
                ("detail", detail.as_str().into()),
            ]),
            ToPage::Welcomed { peer_id, peers } => object(&[
                ("type", "welcomed".into()),
                ("peerId", id_value(peer_id)),
                (
                    "peers",
                    peers.iter().map(id_value).collect::<Array>().into(),
                ),
            ]),
            ToPage::Sent { id, seq } => object(&[
                ("type", "sent".into()),
                ("id", number(*id)),
                ("seq", number(*seq as f64)),
            ]),
            ToPage::SendFailed { id, error } => object(&[
                ("type", "sendFailed".into()),
                ("id", number(*id)),
                ("error", error.as_str().into()),
            ]),
            ToPage::Delta {
                seq,
                origin,
                kind,
                doc_id,
                buffer,
                offset,
                length,
            } => {
                transfer.push(buffer);
                object(&[
                    ("type", "delta".into()),
                    ("seq", number(*seq as f64)),
                    ("origin", id_value(origin)),
                    ("kind", number(*kind)),
                    ("docId", id_value(doc_id)),
                    ("buffer", buffer.into()),
                    ("offset", number(*offset)),
                    ("length", number(*length)),
                ])
            }
            ToPage::PeerJoined(peer) => {
                object(&[("type", "peerJoined".into()), ("peerId", id_value(peer))])
            }
            ToPage::PeerLeft(peer) => {
                object(&[("type", "peerLeft".into()), ("peerId", id_value(peer))])
            }
            ToPage::Options {
                echo,
                batch,
                presence,
            } => object(&[
                ("type", "options".into()),
                ("echo", (*echo).into()),
                ("batch", (*batch).into()),
                ("presence", (*presence).into()),
            ]),
            ToPage::Presence { peer, state } => object(&[
                ("type", "presence".into()),
                ("peerId", id_value(peer)),
                ("state", Uint8Array::from(&state[..]).into()),
            ]),
            ToPage::Message { from, payload } => object(&[
                ("type", "message".into()),
                ("peerId", id_value(from)),
                ("payload", Uint8Array::from(&payload[..]).into()),
            ]),
            ToPage::Notice(notice) => {
                object(&[("type", "notice".into()), ("notice", notice_object(notice))])
            }
            ToPage::Stats(stats) => {
                object(&[("type", "stats".into()), ("stats", stats_object(stats))])
            }
        };
        message.into()
    }

    /// Reads a message the worker sent.
    pub fn decode(message: &JsValue) -> Result<ToPage, String> {
        Ok(match get_string(message, "type")?.as_str() {
            "ready" => ToPage::Ready,
            "openLink" => ToPage::OpenLink {
                generation: get_u32(message, "generation")?,
                ice_servers: read_ice_servers(&get_instance(message, "iceServers")?)?,
            },
            "answer" => ToPage::Answer {
                generation: get_u32(message, "generation")?,
                sdp: get_string(message, "sdp")?,
            },
            "restartAnswer" => ToPage::RestartAnswer {
                generation: get_u32(message, "generation")?,
                ufrag: get_string(message, "ufrag")?,
                pwd: get_string(message, "pwd")?,
            },
            "restartFailed" => ToPage::RestartFailed {
                generation: get_u32(message, "generation")?,
                reason: get_string(message, "reason")?,
            },
            "closeLink" => ToPage::CloseLink {
                generation: get_u32(message, "generation")?,
            },
            "state" => ToPage::State {
                state: get_string(message, "state")?.parse()?,
                detail: get_string(message, "detail")?,
            },
            "welcomed" => {
                let list: Array = get_instance(message, "peers")?;
                let peers = list
                    .iter()
                    .map(|peer| {
                        let text = peer.as_string().ok_or("`peers` must hold strings")?;
                        Id::from_str(&text).map_err(|e| format!("`peers`: {e}"))
                    })
                    .collect::<Result<_, String>>()?;
                ToPage::Welcomed {
                    peer_id: get_id(message, "peerId")?,
                    peers,
                }
            }
            "sent" => ToPage::Sent {
                id: get_u32(message, "id")?,
                seq: get_integer(message, "seq", MAX_SAFE_INTEGER)?,
            },
            "sendFailed" => ToPage::SendFailed {
                id: get_u32(message, "id")?,
                error: get_string(message, "error")?,
            },
            "delta" => ToPage::Delta {
                seq: get_integer(message, "seq", MAX_SAFE_INTEGER)?,
                origin: get_id(message, "origin")?,
                kind: get_integer(message, "kind", u16::MAX as f64)? as u16,
                doc_id: get_id(message, "docId")?,
                buffer: get_instance(message, "buffer")?,
                offset: get_u32(message, "offset")?,
                length: get_u32(message, "length")?,
            },
            "peerJoined" => ToPage::PeerJoined(get_id(message, "peerId")?),
            "peerLeft" => ToPage::PeerLeft(get_id(message, "peerId")?),
            "options" => ToPage::Options {
                echo: get(message, "echo").as_bool().unwrap_or(false),
                batch: get(message, "batch").as_bool().unwrap_or(false),
                presence: get(message, "presence").as_bool().unwrap_or(false),
            },
            "presence" => ToPage::Presence {
                peer: get_id(message, "peerId")?,
                state: get_instance::<Uint8Array>(message, "state")?.to_vec(),
            },
            "message" => ToPage::Message {
                from: get_id(message, "peerId")?,
                payload: get_instance::<Uint8Array>(message, "payload")?.to_vec(),
            },
            "notice" => {
                let notice = get(message, "notice");
                ToPage::Notice(Notice {
                    kind: get_string(&notice, "kind")?,
                    code: get_string(&notice, "code")?,
                    detail: get_string(&notice, "detail")?,
                })
            }
            "stats" => ToPage::Stats(read_stats(&get(message, "stats"))?),
            other => return Err(format!("unknown message type {other:?}")),
        })
    }
}

/// `servers` as `RTCIceServer` dictionaries (`urls`, and `username` and
/// `credential` when there are any), ready for `RTCConfiguration`.
pub fn ice_servers_array(servers: &[IceServer]) -> Array {
    servers
        .iter()
        .map(|server| {
            let dictionary = object(&[("urls", server.url.as_str().into())]);
            for (key, value) in [
                ("username", &server.username),
                ("credential", &server.credential),
            ] {
                if let Some(value) = value {
                    let _ = js_sys::Reflect::set(&dictionary, &key.into(), &value.into());
                }
            }
            JsValue::from(dictionary)
        })
        .collect()
}

fn read_ice_servers(list: &Array) -> Result<Vec<IceServer>, String> {
    list.iter()
        .map(|server| {
            Ok(IceServer {
                url: get_string(&server, "urls")?,
                username: get(&server, "username").as_string(),
                credential: get(&server, "credential").as_string(),
            })
        })
        .collect()
}

/// A notice as the object applications get in `onNotice`.
pub fn notice_object(notice: &Notice) -> JsValue {
    object(&[
        ("kind", notice.kind.as_str().into()),
        ("code", notice.code.as_str().into()),
        ("detail", notice.detail.as_str().into()),
    ])
    .into()
}

/// The statistics as the object applications get from `stats()`.
pub fn stats_object(stats: &Stats) -> JsValue {
    let rtt = stats.rtt_ms.map_or(JsValue::NULL, JsValue::from_f64);
    object(&[
        ("rttMs", rtt),
        ("bytesSent", number(stats.bytes_sent)),
        ("bytesReceived", number(stats.bytes_received)),
        ("deltasSent", number(stats.deltas_sent)),
        ("deltasReceived", number(stats.deltas_received)),
        ("unacked", number(stats.unacked)),
        ("bufferedBytes", number(stats.buffered_bytes)),
        ("lastSeq", number(stats.last_seq)),
        (
            "transport",
            stats
                .transport
                .map_or(JsValue::NULL, |t| transport_name(t).into()),
        ),
        (
            "lane",
            stats.lane.map_or(JsValue::NULL, |l| l.as_str().into()),
        ),
    ])
    .into()
}

fn read_stats(stats: &JsValue) -> Result<Stats, String> {
    Ok(Stats {
        rtt_ms: get(stats, "rttMs").as_f64(),
        bytes_sent: get_number(stats, "bytesSent")?,
        bytes_received: get_number(stats, "bytesReceived")?,
        deltas_sent: get_number(stats, "deltasSent")?,
        deltas_received: get_number(stats, "deltasReceived")?,
        unacked: get_number(stats, "unacked")?,
        buffered_bytes: get_number(stats, "bufferedBytes")?,
        last_seq: get_number(stats, "lastSeq")?,
        transport: get(stats, "transport")
            .as_string()
            .and_then(|name| transport_named(&name)),
        lane: get(stats, "lane")
            .as_string()
            .and_then(|name| Lane::from_name(&name)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn page_round_trip(message: ToPage) {
        let transfer = Array::new();
        let encoded = message.encode(&transfer);
        assert_eq!(ToPage::decode(&encoded), Ok(message));
    }

    #[test]
    fn every_worker_to_page_message_survives_encoding() {
        let id = Id([7; 16]);
        page_round_trip(ToPage::Ready);
        page_round_trip(ToPage::OpenLink {
            generation: 3,
            ice_servers: Vec::new(),
        });
        page_round_trip(ToPage::OpenLink {
            generation: 4,
            ice_servers: vec![
                IceServer {
                    url: "stun:127.0.0.1:3478".into(),
                    username: None,
                    credential: None,
                },
                IceServer {
                    url: "turn:127.0.0.1:3478?transport=udp".into(),
                    username: Some("1795330331:dev".into()),
                    credential: Some("c3VwZXI=".into()),
                },
            ],
        });
        page_round_trip(ToPage::Answer {
            generation: 3,
            sdp: "v=0\r\n".into(),
        });
        page_round_trip(ToPage::CloseLink { generation: 3 });
        page_round_trip(ToPage::RestartAnswer {
            generation: 3,
            ufrag: "abcd".into(),
            pwd: "0123456789abcdefghijkl".into(),
        });
        page_round_trip(ToPage::RestartFailed {
            generation: 3,
            reason: "501".into(),
        });
        page_round_trip(ToPage::State {
            state: ConnectionState::Reconnecting,
            detail: "channel closed".into(),
        });
        page_round_trip(ToPage::Welcomed {
            peer_id: id,
            peers: vec![Id([8; 16]), Id([9; 16])],
        });
        page_round_trip(ToPage::Sent {
            id: 9,
            seq: 1 << 52,
        });
        page_round_trip(ToPage::SendFailed {
            id: 9,
            error: "too large".into(),
        });
        page_round_trip(ToPage::PeerJoined(id));
        page_round_trip(ToPage::PeerLeft(id));
        page_round_trip(ToPage::Options {
            echo: false,
            batch: true,
            presence: false,
        });
        page_round_trip(ToPage::Presence {
            peer: id,
            state: b"cursor".to_vec(),
        });
        page_round_trip(ToPage::Presence {
            peer: id,
            state: Vec::new(),
        });
        page_round_trip(ToPage::Message {
            from: id,
            payload: b"offer".to_vec(),
        });
        page_round_trip(ToPage::Notice(Notice {
            kind: "relayError".into(),
            code: "UNKNOWN_PEER".into(),
            detail: "no such peer".into(),
        }));
        page_round_trip(ToPage::Stats(Stats {
            rtt_ms: Some(1.5),
            bytes_sent: 10.0,
            last_seq: 4.0,
            transport: Some(Transport::WebSocket),
            lane: Some(Lane::WebSocket),
            ..Stats::default()
        }));
        page_round_trip(ToPage::Stats(Stats::default()));
    }

    #[test]
    fn a_delta_travels_with_its_buffer_in_the_transfer_list() {
        let buffer = ArrayBuffer::new(200);
        let message = ToPage::Delta {
            seq: 5,
            origin: Id([1; 16]),
            kind: 2,
            doc_id: Id([3; 16]),
            buffer: buffer.clone(),
            offset: 176,
            length: 24,
        };
        let transfer = Array::new();
        let encoded = message.encode(&transfer);
        assert_eq!(transfer.length(), 1);
        assert_eq!(transfer.get(0), JsValue::from(buffer));
        assert_eq!(ToPage::decode(&encoded), Ok(message));
    }

    #[test]
    fn every_page_to_worker_message_survives_encoding() {
        let messages = [
            ToWorker::Start(Config {
                signal_url: "http://127.0.0.1:8080".into(),
                session: "room".into(),
                token: "t".into(),
                echo: true,
                batch: true,
                presence: false,
                max_unacked: 4096,
                reconnect: ReconnectPolicy {
                    first_retry: Duration::from_millis(100),
                    ..ReconnectPolicy::default()
                },
                ice_transport_policy: IceTransportPolicy::Relay,
                lane: LaneChoice::WebSocket,
                lane_times: LaneTimes::default(),
            }),
            ToWorker::Candidate {
                generation: 1,
                candidate: "candidate:1 1 udp 41885439 127.0.0.1 50002 typ relay".into(),
            },
            ToWorker::Restart {
                generation: 1,
                ufrag: "abcd".into(),
                pwd: "0123456789abcdefghijkl".into(),
            },
            ToWorker::Offer {
                generation: 1,
                sdp: "v=0\r\n".into(),
            },
            ToWorker::LinkFailed {
                generation: 1,
                reason: "ice failed".into(),
            },
            ToWorker::Send {
                id: 1,
                kind: 65535,
                doc_id: Id([4; 16]),
                payload: Uint8Array::from(&b"hello"[..]),
            },
            ToWorker::SetPresence {
                state: Uint8Array::from(&b"here"[..]),
            },
            ToWorker::SendTo {
                peer: Id([5; 16]),
                payload: Uint8Array::from(&b"ping"[..]),
            },
            ToWorker::Close,
        ];
        let text = |value: &JsValue| String::from(js_sys::JSON::stringify(value).unwrap());
        for message in messages {
            let (encoded, transfer) = message.encode();
            assert_eq!(transfer.length(), 0);
            let decoded = ToWorker::decode(&encoded).unwrap();
            assert_eq!(text(&decoded.encode().0), text(&encoded), "{message:?}");
        }
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let refused = |message: JsValue| ToPage::decode(&message).unwrap_err();
        assert!(refused(JsValue::NULL).contains("type"));
        assert!(refused(object(&[("type", "nope".into())]).into()).contains("nope"));
        let bad_seq = object(&[
            ("type", "sent".into()),
            ("id", 1.into()),
            ("seq", (-1.0).into()),
        ]);
        assert!(refused(bad_seq.into()).contains("seq"));
        let bad_id = object(&[("type", "peerLeft".into()), ("peerId", "x".into())]);
        assert!(refused(bad_id.into()).contains("peerId"));
        let bad_kind = object(&[
            ("type", "send".into()),
            ("id", 1.into()),
            ("kind", 70000.into()),
        ]);
        assert!(
            ToWorker::decode(&bad_kind.into())
                .unwrap_err()
                .contains("kind")
        );
    }
}

//! The page half and the application's API: [`connect`] starts a dedicated
//! worker that runs the connection and returns a [`Connection`] handle.
//!
//! The page keeps only what cannot live in the worker: the
//! `RTCPeerConnection` (made on the worker's request, with the ICE servers
//! the worker got from signal, its channels transferred to the worker in
//! the same task, its late candidates passed on for trickling) and the
//! application's callbacks. Received payloads arrive as views into the buffer the worker
//! transferred, so the page copies nothing. Sending copies the payload once
//! into the `postMessage` (the application keeps its buffer), whatever its
//! size: a large delta crosses to the worker whole, and only the worker
//! cuts it into fragments; a large received delta crosses back as one
//! transferred buffer.
//!
//! v1.1: presence (`setPresence`, `onPresence`), direct messages
//! (`sendTo`, `onMessage`), what the relay put in force (`features`) and
//! the relay's notices and errors (`onNotice`).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::{Rc, Weak};
use std::str::FromStr;
use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_proto::session::{SESSION_MAX, is_valid_session};
use js_sys::{Array, Function, Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use web_sys::{ErrorEvent, MessageEvent, Worker, WorkerOptions, WorkerType};

use super::js::{error_text, get, object};
use super::messages::{
    Config, ConnectionState, IceTransportPolicy, Stats, ToPage, ToWorker, notice_object,
    stats_object,
};
use super::peer_connection::{self, PeerConnection};
use crate::backoff::ReconnectPolicy;
use crate::ice_servers::IceServer;
use crate::lane::{Lane, LaneChoice, LaneTimes, Transport};

/// Where the worker script is served unless options say otherwise.
const DEFAULT_WORKER_URL: &str = "/pkg/worker.js";
/// Deltas that may await acknowledgement unless options say otherwise.
const DEFAULT_MAX_UNACKED: u32 = 4096;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Options for {@link connect}; every field is optional. */
export interface ConnectOptions {
    /** Base URL of the signal service. Default: the page's origin. */
    signalUrl?: string;
    /** URL of `worker.js`, the worker's loader. Default: "/pkg/worker.js". */
    workerUrl?: string;
    /** Also receive this peer's own deltas. Default: false. */
    echo?: boolean;
    /** Ask the relay for batches (several deltas per message, PROTOCOL §7). Default: true. */
    batch?: boolean;
    /**
     * Ask the relay for the presence channel (§8): `setPresence` reaches the
     * others and their states arrive in `onPresence`. Default: true.
     */
    presence?: boolean;
    /** Deltas that may await acknowledgement before `send` refuses more. Default: 4096. */
    maxUnacked?: number;
    /**
     * The first wait before reconnecting, in ms; it doubles (with jitter) per
     * failed attempt. Default: 250, as for the native peer.
     */
    firstRetryMs?: number;
    /** The longest wait between reconnect attempts, in ms. Default: 5000. */
    maxRetryMs?: number;
    /** How often the worker pings the relay and refreshes stats, in ms. Default: 500. */
    keepaliveMs?: number;
    /** Silence from the relay after which the connection counts as lost, in ms. Default: 2000. */
    silenceTimeoutMs?: number;
    /**
     * The peer connection's `iceTransportPolicy`: "relay" sends everything
     * through the TURN servers signal lists (PROTOCOL §10). Default: "all".
     */
    iceTransportPolicy?: "all" | "relay";
    /**
     * Which lanes to connect over: "auto" tries WebRTC and falls back to the
     * WebSocket lane (PROTOCOL §11) when WebRTC has not connected within
     * `webrtcFallbackMs` or failed, remembers what worked for the next
     * reconnect and tries WebRTC again after `retryWebrtcMs`; "webrtc" and
     * "websocket" use only that lane. Default: "auto".
     */
    lane?: "auto" | "webrtc" | "websocket";
    /** How long WebRTC may take before "auto" falls back, in ms. Default: 3000. */
    webrtcFallbackMs?: number;
    /** Time on the WebSocket lane after which a reconnect tries WebRTC again, in ms. Default: 60000. */
    retryWebrtcMs?: number;
}

/** A delta from another peer, delivered once each, in `seq` order. */
export interface ReceivedDelta {
    /** The session's sequence number: gap-free, one order for every peer. */
    seq: number;
    /** The sending peer's id. */
    origin: string;
    /** Application-defined kind (0..65535). */
    kind: number;
    /** Application-defined document id (UUID text). */
    docId: string;
    /** A view of the payload in the buffer the worker received (no copy). */
    payload: Uint8Array;
}

/**
 * The connection's states. `failed` retries by itself after a backoff, except
 * after a refused token or a lost history (notice `historyLost`): then it
 * stays `failed` until the application connects again.
 */
export type ConnectionStateName = "connecting" | "connected" | "reconnecting" | "failed" | "closed";

/** What the relay put in force on the current connection. */
export interface Features {
    echo: boolean;
    batch: boolean;
    presence: boolean;
}

/**
 * Something the application should know that is not a delta.
 * - `relayError`: the relay's `Error` (`code` e.g. `UNKNOWN_PEER`,
 *   `NOT_PERMITTED`, `TOO_LARGE` for a direct message or presence state; the
 *   detail names the recipient);
 * - `rejected`: a delta refused (`code` the reason, e.g. `TOO_LARGE`);
 * - `slowConsumer`: this peer is falling behind;
 * - `drain`: the relay is going away; the worker moves to another one;
 * - `historyLost`: the relay lost the deltas this peer would resume from;
 *   the connection stops (state `failed`) for good;
 * - `protocolError`: the relay sent something unreadable;
 * - `presenceRefused` / `sendToFailed`: refused before sending (too large,
 *   not connected).
 */
export interface Notice {
    kind: "relayError" | "rejected" | "slowConsumer" | "drain" | "historyLost"
        | "protocolError" | "presenceRefused" | "sendToFailed";
    /** The relay's code, empty when there is none. */
    code: string;
    detail: string;
}

/** A change of the connection's state, with the reason in words. */
export interface StateChange {
    state: ConnectionStateName;
    detail: string;
}

/** Another peer joined or left the session. */
export interface PeerChange {
    type: "joined" | "left";
    peerId: string;
}

/** Connection statistics, refreshed with each keepalive ping (every 500 ms by default). */
export interface PeerStats {
    /** Round trip to the relay in milliseconds, null before the first pong. */
    rttMs: number | null;
    bytesSent: number;
    bytesReceived: number;
    /** Deltas acknowledged by the relay. */
    deltasSent: number;
    /** Deltas from other peers delivered to the application. */
    deltasReceived: number;
    /** Deltas sent and not yet acknowledged. */
    unacked: number;
    /** Bytes waiting in the channels' send buffers. */
    bufferedBytes: number;
    /** Highest session seq delivered. */
    lastSeq: number;
    /** The transport of the current connection, null while there is none. */
    transport: "webrtc" | "websocket" | null;
    /**
     * The lane in use: "webrtc-udp", "webrtc-tcp" (ICE-TCP), "turn" (through a
     * TURN server) or "websocket"; null while not connected, or over WebRTC
     * until the peer connection has reported its selected candidate pair.
     */
    lane: "webrtc-udp" | "webrtc-tcp" | "turn" | "websocket" | null;
}
"#;

/// Connects to `session` with `token`: starts the worker and returns once
/// it runs. The connection then goes on by itself (state changes report
/// progress; [`Connection::connected`] waits for the relay's welcome).
#[wasm_bindgen(unchecked_return_type = "Promise<Connection>")]
pub fn connect(
    session: String,
    token: String,
    #[wasm_bindgen(unchecked_param_type = "ConnectOptions | undefined")] options: JsValue,
) -> Promise {
    match start_worker(session, token, &options) {
        Ok(ready) => ready,
        Err(error) => Promise::reject(&error),
    }
}

/// A session connection, run by a dedicated worker.
#[wasm_bindgen]
pub struct Connection {
    shared: Rc<RefCell<Shared>>,
}

/// The page's view of the connection and the application's callbacks.
struct Shared {
    worker: Worker,
    /// Resolves `connect` (with the handle) once the worker is ready;
    /// rejects it if the worker dies first.
    starting: Option<(Function, Function, JsValue)>,
    state: ConnectionState,
    detail: String,
    peer_id: Option<Id>,
    peers: BTreeSet<Id>,
    stats: Stats,
    next_request: u32,
    pending: HashMap<u32, (Function, Function)>,
    on_delta: Option<Function>,
    on_peer: Option<Function>,
    on_state: Option<Function>,
    on_presence: Option<Function>,
    on_message: Option<Function>,
    on_notice: Option<Function>,
    /// What the relay put in force, once it answered.
    features: Option<JsValue>,
    /// Deltas that arrived before the application registered `onDelta`.
    unclaimed: Vec<JsValue>,
    waiting_connected: Vec<(Function, Function)>,
    waiting_closed: Vec<Function>,
    link: Option<(u32, PeerConnection)>,
    /// The lane the page's peer connection of that generation uses, from
    /// its stats.
    link_lane: Option<(u32, Lane)>,
    ice_transport_policy: IceTransportPolicy,
    /// The ICE restart under way: its link's generation, and the
    /// application's promise when it asked for it.
    restarting: Option<(u32, Option<(Function, Function)>)>,
    /// This value itself, for handlers made while it is borrowed.
    this: Weak<RefCell<Shared>>,
}

/// An application callback and its argument(s), to run once the shared
/// state is released (a callback may call back into the connection).
type Call = (Function, JsValue, JsValue);

fn call(callback: &Function, argument: JsValue) -> Call {
    (callback.clone(), argument, JsValue::UNDEFINED)
}

fn type_error(message: &str) -> JsValue {
    js_sys::TypeError::new(message).into()
}

/// The option `key` in whole milliseconds from 1, `default` when unset.
fn millis_option(options: &JsValue, key: &str, default: Duration) -> Result<Duration, JsValue> {
    match get(options, key).as_f64() {
        None => Ok(default),
        Some(n) if n >= 1.0 && n <= f64::from(u32::MAX) && n.fract() == 0.0 => {
            Ok(Duration::from_millis(n as u64))
        }
        Some(_) => Err(type_error(&format!(
            "{key} must be a whole number of milliseconds from 1"
        ))),
    }
}

fn start_worker(session: String, token: String, options: &JsValue) -> Result<Promise, JsValue> {
    if !is_valid_session(&session) {
        return Err(type_error(&format!(
            "a session name is 1 to {SESSION_MAX} characters of A-Z a-z 0-9 . _ -"
        )));
    }
    let signal_url = match get(options, "signalUrl").as_string() {
        Some(url) => url,
        None => web_sys::window()
            .ok_or_else(|| type_error("connect runs on a page (window)"))?
            .location()
            .origin()?,
    };
    let worker_url = get(options, "workerUrl")
        .as_string()
        .unwrap_or_else(|| DEFAULT_WORKER_URL.to_owned());
    let max_unacked = match get(options, "maxUnacked").as_f64() {
        None => DEFAULT_MAX_UNACKED,
        Some(n) if n >= 1.0 && n <= u32::MAX as f64 && n.fract() == 0.0 => n as u32,
        Some(_) => return Err(type_error("maxUnacked must be a whole number from 1")),
    };
    let ice_transport_policy = match get(options, "iceTransportPolicy").as_string() {
        None => IceTransportPolicy::All,
        Some(name) => name.parse().map_err(|e: String| type_error(&e))?,
    };
    let lane = match get(options, "lane").as_string() {
        None => LaneChoice::Auto,
        Some(name) => LaneChoice::from_name(&name).ok_or_else(|| {
            type_error(&format!(
                "lane must be \"auto\", \"webrtc\" or \"websocket\", got {name:?}"
            ))
        })?,
    };
    let times = LaneTimes::default();
    let lane_times = LaneTimes {
        webrtc_fallback: millis_option(options, "webrtcFallbackMs", times.webrtc_fallback)?,
        retry_webrtc: millis_option(options, "retryWebrtcMs", times.retry_webrtc)?,
    };
    let policy = ReconnectPolicy::default();
    let config = Config {
        signal_url,
        session,
        token,
        echo: get(options, "echo").as_bool().unwrap_or(false),
        batch: get(options, "batch").as_bool().unwrap_or(true),
        presence: get(options, "presence").as_bool().unwrap_or(true),
        max_unacked,
        reconnect: ReconnectPolicy {
            first_retry: millis_option(options, "firstRetryMs", policy.first_retry)?,
            max_retry: millis_option(options, "maxRetryMs", policy.max_retry)?,
            keepalive: millis_option(options, "keepaliveMs", policy.keepalive)?,
            silence_timeout: millis_option(options, "silenceTimeoutMs", policy.silence_timeout)?,
        },
        ice_transport_policy,
        lane,
        lane_times,
    };
    let worker_options = WorkerOptions::new();
    worker_options.set_type(WorkerType::Module);
    let worker = Worker::new_with_options(&worker_url, &worker_options)?;
    let shared = Rc::new_cyclic(|this| {
        RefCell::new(Shared {
            this: this.clone(),
            restarting: None,
            worker: worker.clone(),
            starting: None,
            state: ConnectionState::Connecting,
            detail: String::new(),
            peer_id: None,
            peers: BTreeSet::new(),
            stats: Stats::default(),
            next_request: 1,
            pending: HashMap::new(),
            on_delta: None,
            on_peer: None,
            on_state: None,
            on_presence: None,
            on_message: None,
            on_notice: None,
            features: None,
            unclaimed: Vec::new(),
            waiting_connected: Vec::new(),
            waiting_closed: Vec::new(),
            link: None,
            link_lane: None,
            ice_transport_policy,
        })
    });
    let on_message = {
        let shared = shared.clone();
        Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            on_worker_message(&shared, &event.data())
        })
    };
    let on_error = {
        let shared = shared.clone();
        let worker_url = worker_url.clone();
        Closure::<dyn FnMut(ErrorEvent)>::new(move |event: ErrorEvent| {
            let message = event.message();
            let why = if message.is_empty() {
                format!("the worker ({worker_url}) failed to load or crashed")
            } else {
                format!("the worker stopped: {message}")
            };
            worker_died(&shared, why);
        })
    };
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    // The handlers live as long as the worker does.
    on_message.forget();
    on_error.forget();
    // A closing tab takes its worker with it before a DELETE could be
    // sent; closing the peer connection on `pagehide` tells the relay at
    // once (SCTP abort, DTLS close) instead of after its idle timeout.
    let on_page_hide = {
        let shared = Rc::downgrade(&shared);
        Closure::<dyn FnMut()>::new(move || {
            if let Some(shared) = shared.upgrade()
                && let Some((_, link)) = shared.borrow_mut().link.take()
            {
                link.close();
            }
        })
    };
    if let Some(window) = web_sys::window() {
        window
            .add_event_listener_with_callback("pagehide", on_page_hide.as_ref().unchecked_ref())?;
    }
    on_page_hide.forget();
    // While the worker loads: hand it this page's compiled module (so it
    // neither fetches nor compiles the wasm again) and its configuration.
    // It asks for the first peer connection once it has the ICE servers.
    worker.post_message(&wasm_bindgen::module())?;
    worker.post_message(&ToWorker::Start(config).encode().0)?;
    let connection = Connection {
        shared: shared.clone(),
    };
    let mut connection = Some(JsValue::from(connection));
    Ok(Promise::new(&mut |resolve, reject| {
        let handle = connection.take().unwrap_or_default();
        shared.borrow_mut().starting = Some((resolve, reject, handle));
    }))
}

fn run(calls: Vec<Call>) {
    for (callback, first, second) in calls {
        if let Err(error) = callback.call2(&JsValue::NULL, &first, &second) {
            web_sys::console::error_2(&"a deltamesh callback threw:".into(), &error);
        }
    }
}

fn worker_died(shared: &Rc<RefCell<Shared>>, why: String) {
    tracing::error!("{why}");
    let calls = {
        let mut s = shared.borrow_mut();
        let mut calls = Vec::new();
        if let Some((_, reject, _)) = s.starting.take() {
            calls.push((reject, js_sys::Error::new(&why).into(), JsValue::UNDEFINED));
        }
        if let Some((_, link)) = s.link.take() {
            link.close();
        }
        for (_, (_, reject)) in s.pending.drain() {
            calls.push((reject, js_sys::Error::new(&why).into(), JsValue::UNDEFINED));
        }
        calls.extend(s.set_state(ConnectionState::Failed, why));
        calls
    };
    run(calls);
}

fn on_worker_message(shared: &Rc<RefCell<Shared>>, data: &JsValue) {
    let Ok(batch) = data.clone().dyn_into::<Array>() else {
        return tracing::error!("unreadable message from the worker");
    };
    let mut calls = Vec::new();
    for message in batch.iter() {
        match ToPage::decode(&message) {
            Ok(message) => calls.extend(on_page_message(shared, message)),
            Err(error) => tracing::error!("unreadable message from the worker: {error}"),
        }
    }
    run(calls);
}

fn on_page_message(shared: &Rc<RefCell<Shared>>, message: ToPage) -> Vec<Call> {
    let mut s = shared.borrow_mut();
    match message {
        ToPage::Ready => s
            .starting
            .take()
            .map(|(resolve, _, connection)| vec![(resolve, connection, JsValue::UNDEFINED)])
            .unwrap_or_default(),
        ToPage::OpenLink {
            generation,
            ice_servers,
        } => {
            if s.link.as_ref().is_none_or(|(g, _)| *g != generation) {
                s.open_link(generation, &ice_servers);
            }
            Vec::new()
        }
        ToPage::Answer { generation, sdp } => {
            if let Some((current, link)) = &s.link
                && *current == generation
            {
                let pc = link.handle();
                let worker = s.worker.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    if let Err(reason) = peer_connection::accept(pc, sdp).await {
                        post(&worker, &ToWorker::LinkFailed { generation, reason });
                    }
                });
            }
            Vec::new()
        }
        ToPage::RestartAnswer {
            generation,
            ufrag,
            pwd,
        } => {
            let Some((_, link)) = s.link.as_ref().filter(|(g, _)| *g == generation) else {
                return Vec::new();
            };
            let pc = link.handle();
            let shared = shared.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let applied = peer_connection::accept_restart(pc, &ufrag, &pwd).await;
                let calls = shared.borrow_mut().restart_done(generation, applied);
                run(calls);
            });
            Vec::new()
        }
        ToPage::RestartFailed { generation, reason } => s.restart_done(generation, Err(reason)),
        ToPage::CloseLink { generation } => {
            if s.link.as_ref().is_some_and(|(g, _)| *g == generation)
                && let Some((_, link)) = s.link.take()
            {
                link.close();
            }
            Vec::new()
        }
        ToPage::State { state, detail } => s.set_state(state, detail),
        ToPage::Welcomed { peer_id, peers } => {
            s.peer_id = Some(peer_id);
            s.peers = peers.into_iter().filter(|p| *p != peer_id).collect();
            Vec::new()
        }
        ToPage::Sent { id, seq } => s
            .pending
            .remove(&id)
            .map(|(resolve, _)| vec![call(&resolve, JsValue::from_f64(seq as f64))])
            .unwrap_or_default(),
        ToPage::SendFailed { id, error } => s
            .pending
            .remove(&id)
            .map(|(_, reject)| vec![call(&reject, js_sys::Error::new(&error).into())])
            .unwrap_or_default(),
        ToPage::Delta {
            seq,
            origin,
            kind,
            doc_id,
            buffer,
            offset,
            length,
        } => {
            let payload = Uint8Array::new_with_byte_offset_and_length(&buffer, offset, length);
            let delta: JsValue = object(&[
                ("seq", JsValue::from_f64(seq as f64)),
                ("origin", origin.to_string().into()),
                ("kind", kind.into()),
                ("docId", doc_id.to_string().into()),
                ("payload", payload.into()),
            ])
            .into();
            match &s.on_delta {
                Some(callback) => vec![call(callback, delta)],
                None => {
                    s.unclaimed.push(delta);
                    Vec::new()
                }
            }
        }
        ToPage::PeerJoined(peer) => {
            s.peers.insert(peer);
            s.peer_change("joined", peer)
        }
        ToPage::PeerLeft(peer) => {
            s.peers.remove(&peer);
            s.peer_change("left", peer)
        }
        ToPage::Options {
            echo,
            batch,
            presence,
        } => {
            let features = object(&[
                ("echo", echo.into()),
                ("batch", batch.into()),
                ("presence", presence.into()),
            ]);
            s.features = Some(features.into());
            Vec::new()
        }
        ToPage::Presence { peer, state } => match &s.on_presence {
            Some(callback) => {
                let state = Uint8Array::from(&state[..]);
                vec![(callback.clone(), peer.to_string().into(), state.into())]
            }
            None => Vec::new(),
        },
        ToPage::Message { from, payload } => match &s.on_message {
            Some(callback) => {
                let payload = Uint8Array::from(&payload[..]);
                vec![(callback.clone(), from.to_string().into(), payload.into())]
            }
            None => Vec::new(),
        },
        ToPage::Notice(notice) => match &s.on_notice {
            Some(callback) => vec![call(callback, notice_object(&notice))],
            None => Vec::new(),
        },
        ToPage::Stats(stats) => {
            s.stats = stats;
            if stats.transport == Some(Transport::WebRtc) && stats.lane.is_none() {
                s.read_link_lane(shared);
            }
            Vec::new()
        }
    }
}

/// Restarts ICE on the current link (RFC 9725 §4.4): `restartIce()` and a
/// new offer here, the relay's new credentials through the worker. One at
/// a time; `done` (the application's promise) settles with the outcome.
fn restart_ice(shared: &Rc<RefCell<Shared>>, done: Option<(Function, Function)>) {
    let mut s = shared.borrow_mut();
    let refuse = |done: Option<(Function, Function)>, why: &str| {
        if let Some((_, reject)) = done {
            let _ = reject.call1(&JsValue::NULL, &js_sys::Error::new(why));
        }
    };
    if s.restarting.is_some() {
        return refuse(done, "an ICE restart is under way");
    }
    let Some((generation, link)) = &s.link else {
        return refuse(done, "no peer connection to restart");
    };
    let (generation, pc) = (*generation, link.handle());
    s.restarting = Some((generation, done));
    let worker = s.worker.clone();
    let shared = shared.clone();
    wasm_bindgen_futures::spawn_local(async move {
        match peer_connection::restart_offer(pc).await {
            Ok((ufrag, pwd)) => post(
                &worker,
                &ToWorker::Restart {
                    generation,
                    ufrag,
                    pwd,
                },
            ),
            Err(reason) => {
                let calls = shared.borrow_mut().restart_done(generation, Err(reason));
                run(calls);
            }
        }
    });
}

fn post(worker: &Worker, message: &ToWorker) {
    let (message, transfer) = message.encode();
    if let Err(error) = worker.post_message_with_transfer(&message, &transfer) {
        tracing::error!("postMessage to the worker failed: {}", error_text(&error));
    }
}

impl Shared {
    /// Makes peer connection `generation` with `ice_servers` and transfers
    /// its channels to the worker in this same task (the browser requires
    /// it), then makes the offer. Candidates it gathers go to the worker.
    fn open_link(&mut self, generation: u32, ice_servers: &[IceServer]) {
        // A restart of the link being replaced is over.
        if let Some((_, Some((_, reject)))) = self.restarting.take() {
            let error = js_sys::Error::new("the peer connection was replaced");
            let _ = reject.call1(&JsValue::NULL, &error);
        }
        if let Some((_, old)) = self.link.take() {
            old.close();
        }
        let worker = self.worker.clone();
        let on_failed = move |reason: String| {
            post(&worker, &ToWorker::LinkFailed { generation, reason });
        };
        let worker = self.worker.clone();
        let on_candidate = move |candidate: String| {
            post(
                &worker,
                &ToWorker::Candidate {
                    generation,
                    candidate,
                },
            );
        };
        let policy = self.ice_transport_policy;
        let (link, channels) =
            match PeerConnection::open(ice_servers, policy, on_failed, on_candidate) {
                Ok(opened) => opened,
                Err(reason) => {
                    return post(&self.worker, &ToWorker::LinkFailed { generation, reason });
                }
            };
        post(
            &self.worker,
            &ToWorker::Channels {
                generation,
                channels,
            },
        );
        let pc = link.handle();
        let worker = self.worker.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let message = match peer_connection::offer(pc).await {
                Ok(sdp) => ToWorker::Offer { generation, sdp },
                Err(reason) => ToWorker::LinkFailed { generation, reason },
            };
            post(&worker, &message);
        });
        // A broken path (Wi-Fi to mobile): restart ICE before the worker
        // gives up on the link and makes a new offer.
        let mut link = link;
        let this = self.this.clone();
        link.on_ice_trouble(move || {
            if let Some(shared) = this.upgrade() {
                restart_ice(&shared, None);
            }
        });
        self.link = Some((generation, link));
    }

    /// Reads which lane the page's peer connection uses from its stats
    /// (again on every refresh: ICE may move to another candidate pair).
    fn read_link_lane(&self, shared: &Rc<RefCell<Shared>>) {
        let Some((generation, link)) = &self.link else {
            return;
        };
        let (generation, pc) = (*generation, link.handle());
        let shared = Rc::downgrade(shared);
        wasm_bindgen_futures::spawn_local(async move {
            let lane = peer_connection::lane(pc).await;
            if let (Some(lane), Some(shared)) = (lane, shared.upgrade()) {
                shared.borrow_mut().link_lane = Some((generation, lane));
            }
        });
    }

    /// The statistics with the lane filled in from the page's peer
    /// connection when the worker could not know it.
    fn stats(&self) -> Stats {
        let mut stats = self.stats;
        if stats.transport == Some(Transport::WebRtc) && stats.lane.is_none() {
            let current = self.link.as_ref().map(|(g, _)| *g);
            stats.lane = self
                .link_lane
                .filter(|(g, _)| Some(*g) == current)
                .map(|(_, lane)| lane);
        }
        stats
    }

    /// Ends the restart of link `generation` with `outcome`: the
    /// application's promise, if it asked, settles.
    fn restart_done(&mut self, generation: u32, outcome: Result<(), String>) -> Vec<Call> {
        if self
            .restarting
            .as_ref()
            .is_none_or(|(g, _)| *g != generation)
        {
            return Vec::new();
        }
        let Some((_, Some((resolve, reject)))) = self.restarting.take() else {
            return Vec::new();
        };
        match outcome {
            Ok(()) => vec![call(&resolve, JsValue::UNDEFINED)],
            Err(reason) => vec![call(&reject, js_sys::Error::new(&reason).into())],
        }
    }

    fn set_state(&mut self, state: ConnectionState, detail: String) -> Vec<Call> {
        self.state = state;
        self.detail = detail.clone();
        let mut calls = Vec::new();
        match state {
            ConnectionState::Connected => {
                for (resolve, _) in self.waiting_connected.drain(..) {
                    calls.push(call(&resolve, JsValue::UNDEFINED));
                }
            }
            ConnectionState::Closed => {
                for (_, reject) in self.waiting_connected.drain(..) {
                    calls.push(call(
                        &reject,
                        js_sys::Error::new("the connection closed").into(),
                    ));
                }
                for resolve in self.waiting_closed.drain(..) {
                    calls.push(call(&resolve, JsValue::UNDEFINED));
                }
                self.worker.terminate();
                if let Some((_, link)) = self.link.take() {
                    link.close();
                }
            }
            _ => {}
        }
        if let Some(callback) = &self.on_state {
            let change = object(&[("state", state.as_str().into()), ("detail", detail.into())]);
            calls.push(call(callback, change.into()));
        }
        calls
    }

    fn peer_change(&self, kind: &str, peer: Id) -> Vec<Call> {
        let Some(callback) = &self.on_peer else {
            return Vec::new();
        };
        let change = object(&[("type", kind.into()), ("peerId", peer.to_string().into())]);
        vec![call(callback, change.into())]
    }
}

#[wasm_bindgen]
impl Connection {
    /// Sends a delta; resolves to its session seq once the relay has made it
    /// durable, rejects with the reason if it was refused. `docId` is UUID
    /// text; `payload` is copied, so the caller may reuse it.
    #[wasm_bindgen(unchecked_return_type = "Promise<number>")]
    pub fn send(
        &self,
        kind: f64,
        #[wasm_bindgen(js_name = docId)] doc_id: &str,
        payload: &Uint8Array,
    ) -> Promise {
        if kind.fract() != 0.0 || !(0.0..=65535.0).contains(&kind) {
            return Promise::reject(&type_error("kind must be a whole number from 0 to 65535"));
        }
        let doc_id = match Id::from_str(doc_id) {
            Ok(id) => id,
            Err(error) => return Promise::reject(&type_error(&format!("docId: {error}"))),
        };
        let shared = self.shared.clone();
        let payload = payload.clone();
        Promise::new(&mut |resolve, reject| {
            let mut s = shared.borrow_mut();
            if s.state == ConnectionState::Closed {
                let _ = reject.call1(
                    &JsValue::NULL,
                    &js_sys::Error::new("the connection is closed"),
                );
                return;
            }
            let id = s.next_request;
            s.next_request = s.next_request.wrapping_add(1);
            s.pending.insert(id, (resolve, reject));
            let message = ToWorker::Send {
                id,
                kind: kind as u16,
                doc_id,
                payload: payload.clone(),
            };
            post(&s.worker, &message);
        })
    }

    /// Calls `callback` with each delta from another peer, in seq order.
    /// Deltas that arrived before it was set are delivered at once.
    #[wasm_bindgen(js_name = onDelta)]
    pub fn on_delta(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(delta: ReceivedDelta) => void")] callback: Function,
    ) {
        let unclaimed = {
            let mut s = self.shared.borrow_mut();
            s.on_delta = Some(callback.clone());
            std::mem::take(&mut s.unclaimed)
        };
        run(unclaimed.into_iter().map(|d| call(&callback, d)).collect());
    }

    /// Calls `callback` when another peer joins or leaves.
    #[wasm_bindgen(js_name = onPeer)]
    pub fn on_peer(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(change: PeerChange) => void")] callback: Function,
    ) {
        self.shared.borrow_mut().on_peer = Some(callback);
    }

    /// Calls `callback` on every change of the connection's state.
    #[wasm_bindgen(js_name = onState)]
    pub fn on_state(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(change: StateChange) => void")] callback: Function,
    ) {
        self.shared.borrow_mut().on_state = Some(callback);
    }

    /// Sets this peer's presence state (at most `Welcome.max_presence_size`,
    /// 1 KiB by default; empty clears it). The others get it in
    /// `onPresence` once the relay has `presence` in force; only the latest
    /// state is sent, and again after each reconnect. A refused state comes
    /// back as a notice.
    #[wasm_bindgen(js_name = setPresence)]
    pub fn set_presence(&self, state: &Uint8Array) {
        let s = self.shared.borrow();
        if s.state != ConnectionState::Closed {
            let state = state.slice(0, state.length());
            post(&s.worker, &ToWorker::SetPresence { state });
        }
    }

    /// Calls `callback(peerId, state)` when another peer's presence state
    /// changes (newest versions only); an empty `state` means cleared, and
    /// comes too when that peer leaves.
    #[wasm_bindgen(js_name = onPresence)]
    pub fn on_presence(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(peerId: string, state: Uint8Array) => void")]
        callback: Function,
    ) {
        self.shared.borrow_mut().on_presence = Some(callback);
    }

    /// Sends `payload` (at most 16 KiB) to the connected peer `peerId` of
    /// this session; it arrives there in `onMessage`. The relay's refusals
    /// (`UNKNOWN_PEER`, `NOT_PERMITTED`, `TOO_LARGE`) come back as
    /// `relayError` notices; while reconnecting it is refused
    /// (`sendToFailed`). The payload is copied.
    #[wasm_bindgen(js_name = sendTo)]
    pub fn send_to(
        &self,
        #[wasm_bindgen(js_name = peerId)] peer_id: &str,
        payload: &Uint8Array,
    ) -> Result<(), JsValue> {
        let peer = Id::from_str(peer_id).map_err(|e| type_error(&format!("peerId: {e}")))?;
        let s = self.shared.borrow();
        if s.state == ConnectionState::Closed {
            return Err(js_sys::Error::new("the connection is closed").into());
        }
        let payload = payload.slice(0, payload.length());
        post(&s.worker, &ToWorker::SendTo { peer, payload });
        Ok(())
    }

    /// Calls `callback(peerId, payload)` with each direct message from
    /// another peer, in the order that peer sent them.
    #[wasm_bindgen(js_name = onMessage)]
    pub fn on_message(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(peerId: string, payload: Uint8Array) => void")]
        callback: Function,
    ) {
        self.shared.borrow_mut().on_message = Some(callback);
    }

    /// Calls `callback` with the relay's notices and errors (see `Notice`).
    #[wasm_bindgen(js_name = onNotice)]
    pub fn on_notice(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(notice: Notice) => void")] callback: Function,
    ) {
        self.shared.borrow_mut().on_notice = Some(callback);
    }

    /// What the relay put in force on the current connection (`null` until
    /// it answered): a relay without presence says `presence: false`, and
    /// then `setPresence` reaches nobody.
    #[wasm_bindgen(unchecked_return_type = "Features | null")]
    pub fn features(&self) -> JsValue {
        self.shared
            .borrow()
            .features
            .clone()
            .unwrap_or(JsValue::NULL)
    }

    /// Restarts ICE on the current connection (RFC 9725 §4.4) — after a
    /// network change, say — keeping the peer id, the channels and the
    /// place in the stream; the page also does this by itself when ICE
    /// reports `disconnected` or `failed`. Resolves once the relay's new
    /// credentials are applied; if the relay refuses, the worker
    /// reconnects with a new offer and this rejects with the reason.
    #[wasm_bindgen(js_name = restartIce)]
    pub fn restart_ice(&self) -> Promise {
        let shared = self.shared.clone();
        Promise::new(&mut |resolve, reject| restart_ice(&shared, Some((resolve, reject))))
    }

    /// Resolves once the relay has welcomed this peer (at once if it has).
    pub fn connected(&self) -> Promise {
        let shared = self.shared.clone();
        Promise::new(&mut |resolve, reject| {
            let mut s = shared.borrow_mut();
            match s.state {
                ConnectionState::Connected => {
                    let _ = resolve.call0(&JsValue::NULL);
                }
                ConnectionState::Closed => {
                    let _ = reject.call1(
                        &JsValue::NULL,
                        &js_sys::Error::new("the connection is closed"),
                    );
                }
                _ => s.waiting_connected.push((resolve, reject)),
            }
        })
    }

    /// The connection's state.
    #[wasm_bindgen(unchecked_return_type = "ConnectionStateName")]
    pub fn state(&self) -> String {
        self.shared.borrow().state.as_str().to_owned()
    }

    /// Why the state is what it is (empty when there is nothing to say).
    pub fn detail(&self) -> String {
        self.shared.borrow().detail.clone()
    }

    /// This peer's id once welcomed.
    #[wasm_bindgen(js_name = peerId)]
    pub fn peer_id(&self) -> Option<String> {
        self.shared.borrow().peer_id.map(|id| id.to_string())
    }

    /// The other peers in the session.
    #[wasm_bindgen(unchecked_return_type = "string[]")]
    pub fn peers(&self) -> Array {
        let s = self.shared.borrow();
        s.peers
            .iter()
            .map(|p| JsValue::from(p.to_string()))
            .collect()
    }

    /// The latest statistics.
    #[wasm_bindgen(unchecked_return_type = "PeerStats")]
    pub fn stats(&self) -> JsValue {
        stats_object(&self.shared.borrow().stats())
    }

    /// Leaves the session: unacknowledged sends are rejected, the peer
    /// resource is deleted and the worker stops. Resolves when done.
    pub fn close(&self) -> Promise {
        let shared = self.shared.clone();
        Promise::new(&mut |resolve, _| {
            let mut s = shared.borrow_mut();
            if s.state == ConnectionState::Closed {
                let _ = resolve.call0(&JsValue::NULL);
                return;
            }
            s.waiting_closed.push(resolve);
            post(&s.worker, &ToWorker::Close);
        })
    }
}

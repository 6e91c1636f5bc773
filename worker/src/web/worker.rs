//! The worker half: a thin driver around [`PeerCore`]. It owns the four
//! channels, does HTTP signaling, reconnects with backoff and resumes,
//! pings, and reports everything to the page in one batch per turn.
//!
//! v1.1 (PROTOCOL §5–§9): it asks for `batch` and `presence` as the page's
//! options say (both by default), passes presence states and direct
//! messages both ways, and turns the relay's notices into
//! [`Notice`]s for the application. A `Drain` moves it to another relay
//! after the relay's `reconnect_after_ms`; `HISTORY_LOST` stops it for
//! good (state `failed`, notice `historyLost`).
//!
//! Every JavaScript callback (channel messages, timers, fetch results,
//! messages from the page) becomes one [`Input`] to [`Driver::handle`];
//! what needs a callback of its own (a fetch, a timer) comes back as an
//! [`Effect`] that [`handle`] starts once the driver is no longer borrowed.
//! One worker runs one connection, so the driver lives in a thread-local.
//!
//! Copies of a received delta: the browser copies it off the wire into an
//! `ArrayBuffer` (unavoidable); the worker copies it once into wasm memory
//! to validate the relayed frame (header, checksum) with the same code as
//! the native peer; the `ArrayBuffer` itself is then transferred to the
//! page, which hands the application a view of the payload in it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;
use js_sys::{Array, ArrayBuffer, Uint8Array};
use wasm_bindgen::prelude::*;
use web_sys::{
    DedicatedWorkerGlobalScope, MessageEvent, RtcDataChannel, RtcDataChannelState,
    RtcDataChannelType, RtcPeerConnection,
};

use super::messages::{Config, ConnectionState, Notice, Stats, ToPage, ToWorker};
use super::peer_connection::{self, PeerConnection};
use super::signaling::{self, Answer, SignalError};
use super::socket::{self, LaneSocket, SocketEvent};
use crate::backoff::Backoff;
use crate::core::{Features, PAYLOAD_OFFSET, PeerCore, PeerEvent};
use crate::ice_restart::RestartFrag;
use crate::ice_servers::IceServer;
use crate::lane::{Lane, LanePolicy, Transport};
use crate::trickle::TrickleQueue;

/// How long one attempt may take from offer to `Welcome`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest pause a `Retry-After` may impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Bytes a channel may buffer before writes wait for `bufferedamountlow`.
const HIGH_WATER: u32 = 1 << 20;
/// The level that fires `bufferedamountlow`.
const LOW_WATER: u32 = 256 << 10;
/// How soon to look again at a lane socket whose buffer was full.
const SOCKET_DRAIN_CHECK: Duration = Duration::from_millis(10);

/// A relayed message as the core keeps it: a copy in wasm memory to read,
/// and the original buffer to hand to the page.
pub struct Received {
    bytes: Vec<u8>,
    buffer: ArrayBuffer,
    /// Where the message starts in `buffer` (after a lane message's
    /// channel id byte).
    start: u32,
}

impl AsRef<[u8]> for Received {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A frame the core put together (from fragments) or took apart (from a
/// batch): one copy into a buffer of its own, which then moves to the page.
impl From<Vec<u8>> for Received {
    fn from(bytes: Vec<u8>) -> Self {
        let buffer = Uint8Array::from(&bytes[..]).buffer();
        Received {
            bytes,
            buffer,
            start: 0,
        }
    }
}

/// Something that happened, for the driver.
enum Input {
    Page(ToWorker),
    Message {
        generation: u32,
        channel: Channel,
        buffer: ArrayBuffer,
    },
    ChannelClosed {
        generation: u32,
        channel: Channel,
    },
    /// A channel opened, or its send buffer drained below the low mark.
    Writable {
        generation: u32,
    },
    /// The ICE servers for attempt `generation` (empty when signal lists
    /// none or could not be asked: the attempt goes on without them).
    IceServers {
        generation: u32,
        servers: Vec<IceServer>,
    },
    LocalOffer {
        generation: u32,
        offer: Result<String, String>,
    },
    /// The relay answered an ICE restart: its new credentials and the new
    /// ETag.
    Restarted {
        generation: u32,
        result: Result<(RestartFrag, Option<String>), SignalError>,
    },
    /// A `PATCH` of trickled candidates was answered.
    Trickled {
        generation: u32,
        result: Result<(), SignalError>,
    },
    Answer {
        generation: u32,
        answer: Result<Answer, SignalError>,
    },
    Retry {
        generation: u32,
    },
    AttemptTimeout {
        generation: u32,
    },
    /// WebRTC attempt `generation` has had its time: the WebSocket lane
    /// next, unless it was welcomed.
    WebRtcDeadline {
        generation: u32,
    },
    /// The lane socket of attempt `generation` reported something.
    Socket {
        generation: u32,
        event: SocketEvent,
    },
    /// Why the lane socket of attempt `generation` did not open, as
    /// signal answered over `fetch` (`None`: signal would take it).
    SocketRefused {
        generation: u32,
        refusal: Option<SignalError>,
        closed: String,
    },
    /// The worker's own peer connection of attempt `generation` runs on
    /// `lane`.
    LinkLane {
        generation: u32,
        lane: Lane,
    },
    Tick,
}

/// Something the driver wants started outside its borrow.
enum Effect {
    RestartIce {
        generation: u32,
        resource: String,
        token: String,
        ufrag: String,
        pwd: String,
    },
    FetchIceServers {
        generation: u32,
        config: Config,
    },
    Trickle {
        generation: u32,
        resource: String,
        token: String,
        etag: String,
        candidates: Vec<String>,
    },
    PostOffer {
        generation: u32,
        config: Config,
        sdp: String,
    },
    MakeOffer {
        generation: u32,
        pc: RtcPeerConnection,
    },
    AcceptAnswer {
        pc: RtcPeerConnection,
        sdp: String,
    },
    Timer {
        after: Duration,
        input: Input,
    },
    /// Asks signal why the lane socket did not open.
    DiagnoseSocket {
        generation: u32,
        config: Config,
        closed: String,
    },
    /// Reads the lane of the worker's own peer connection from its stats.
    ReadLane {
        generation: u32,
        pc: RtcPeerConnection,
    },
    /// Deletes a peer resource (best effort); when `closing`, then tells
    /// the page the connection is closed (the page stops the worker on
    /// that, so the order matters).
    Delete {
        resource: Option<String>,
        token: String,
        closing: bool,
    },
}

enum Phase {
    /// An attempt is under way (offer, answer, channels, `Welcome`).
    Connecting,
    /// `Welcome` arrived; deltas flow.
    Connected,
    /// Waiting out a backoff before the next attempt.
    Waiting,
    /// Given up (the token was refused); only closing is left.
    Stopped,
    /// The application closed the connection.
    Closed,
}

/// What the current attempt runs over.
enum Link {
    /// WebRTC data channels.
    Channels(Channels),
    /// The WebSocket lane.
    Socket(LaneSocket),
}

impl Link {
    /// The worker's own peer connection, if it made one.
    fn own(&self) -> Option<&PeerConnection> {
        match self {
            Link::Channels(channels) => channels.own.as_ref(),
            Link::Socket(_) => None,
        }
    }

    /// Bytes waiting to be sent.
    fn buffered_bytes(&self) -> f64 {
        match self {
            Link::Channels(link) => link
                .channels
                .iter()
                .map(|c| f64::from(c.buffered_amount()))
                .sum(),
            Link::Socket(socket) => f64::from(socket.buffered_amount()),
        }
    }
}

/// The channels of the current attempt and their listeners.
struct Channels {
    generation: u32,
    channels: [RtcDataChannel; 4],
    /// Only when the worker made the peer connection itself.
    own: Option<PeerConnection>,
    /// Kept alive while the channels may call them.
    _listeners: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl Channels {
    /// The link of attempt `generation`, listening to its channels.
    fn attach(
        generation: u32,
        channels: [RtcDataChannel; 4],
        own: Option<PeerConnection>,
    ) -> Channels {
        let mut listeners = Vec::new();
        for (channel, dc) in Channel::ALL.into_iter().zip(&channels) {
            dc.set_binary_type(RtcDataChannelType::Arraybuffer);
            dc.set_buffered_amount_low_threshold(LOW_WATER);
            let on_message = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
                let event: MessageEvent = event.unchecked_into();
                match event.data().dyn_into::<ArrayBuffer>() {
                    Ok(buffer) => handle(Input::Message {
                        generation,
                        channel,
                        buffer,
                    }),
                    Err(_) => tracing::warn!("a text message on {} was ignored", channel.label()),
                }
            });
            let on_close = Closure::<dyn FnMut(JsValue)>::new(move |_| {
                handle(Input::ChannelClosed {
                    generation,
                    channel,
                })
            });
            let on_writable = || {
                Closure::<dyn FnMut(JsValue)>::new(move |_| handle(Input::Writable { generation }))
            };
            let (on_open, on_low) = (on_writable(), on_writable());
            dc.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
            dc.set_onclose(Some(on_close.as_ref().unchecked_ref()));
            dc.set_onopen(Some(on_open.as_ref().unchecked_ref()));
            dc.set_onbufferedamountlow(Some(on_low.as_ref().unchecked_ref()));
            listeners.extend([on_message, on_close, on_open, on_low]);
        }
        Channels {
            generation,
            channels,
            own,
            _listeners: listeners,
        }
    }

    fn close(&self) {
        for channel in &self.channels {
            channel.set_onmessage(None);
            channel.set_onclose(None);
            channel.set_onopen(None);
            channel.set_onbufferedamountlow(None);
            channel.close();
        }
        if let Some(own) = &self.own {
            own.close();
        }
    }
}

struct Driver {
    scope: DedicatedWorkerGlobalScope,
    config: Config,
    core: PeerCore<Received>,
    generation: u32,
    phase: Phase,
    /// Which lane each attempt tries.
    policy: LanePolicy,
    /// The transport of the current attempt.
    transport: Transport,
    /// A look at whether the full lane socket drained is due.
    drain_check: bool,
    link: Option<Link>,
    /// The current attempt's peer resource, for `DELETE` on close.
    resource: Option<String>,
    /// The current attempt's candidates gathered after its offer, for
    /// `PATCH` once the resource exists.
    trickle: TrickleQueue,
    /// The current attempt's resource ETag (quoted), for `If-Match`.
    etag: Option<String>,
    backoff: Backoff,
    /// The page's request id for each client_seq awaiting its ack.
    requests: HashMap<u64, u32>,
    stats: Stats,
    ping: Option<(u64, f64)>,
    next_nonce: u64,
    last_heard_ms: f64,
    tick: Option<(i32, Closure<dyn FnMut()>)>,
    out: Vec<ToPage>,
    effects: Vec<Effect>,
}

thread_local! {
    static DRIVER: RefCell<Option<Driver>> = const { RefCell::new(None) };
}

/// The worker's entry point, called by the few lines of `worker.js` that
/// load the module with the messages the page sent meanwhile: handles
/// those, listens for more and says it is ready.
#[wasm_bindgen(js_name = workerMain)]
pub fn worker_main(queued: Array) {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let on_message =
        Closure::<dyn FnMut(MessageEvent)>::new(|event: MessageEvent| from_page(&event.data()));
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    // The handler lives as long as the worker.
    on_message.forget();
    post(&scope, vec![ToPage::Ready]);
    for message in queued.iter() {
        from_page(&message);
    }
}

fn from_page(message: &JsValue) {
    match ToWorker::decode(message) {
        Ok(message) => handle(Input::Page(message)),
        Err(error) => tracing::error!("unreadable message from the page: {error}"),
    }
}

/// Feeds one input to the driver, then starts its effects.
fn handle(input: Input) {
    let effects = DRIVER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Input::Page(ToWorker::Start(config)) = input {
            if slot.is_some() {
                tracing::warn!("a second start message was ignored");
                return Vec::new();
            }
            let mut driver = Driver::new(config);
            driver.start_tick();
            driver.set_state(ConnectionState::Connecting, String::new());
            driver.begin_attempt();
            *slot = Some(driver);
        } else if let Some(driver) = slot.as_mut() {
            driver.handle(input);
        } else {
            tracing::warn!("a message arrived before start and was ignored");
            return Vec::new();
        }
        let driver = slot.as_mut().expect("set above");
        driver.flush();
        std::mem::take(&mut driver.effects)
    });
    for effect in effects {
        start(effect);
    }
}

fn start(effect: Effect) {
    match effect {
        Effect::RestartIce {
            generation,
            resource,
            token,
            ufrag,
            pwd,
        } => {
            wasm_bindgen_futures::spawn_local(async move {
                let result = signaling::restart_ice(&resource, &token, ufrag, pwd).await;
                handle(Input::Restarted { generation, result });
            });
        }
        Effect::FetchIceServers { generation, config } => {
            wasm_bindgen_futures::spawn_local(async move {
                let servers = signaling::ice_servers(&config)
                    .await
                    .inspect_err(|error| {
                        tracing::warn!("no ICE servers ({error}); connecting without them")
                    })
                    .unwrap_or_default();
                handle(Input::IceServers {
                    generation,
                    servers,
                });
            });
        }
        Effect::Trickle {
            generation,
            resource,
            token,
            etag,
            candidates,
        } => {
            wasm_bindgen_futures::spawn_local(async move {
                let result = signaling::trickle(&resource, &token, &etag, &candidates).await;
                handle(Input::Trickled { generation, result });
            });
        }
        Effect::PostOffer {
            generation,
            config,
            sdp,
        } => {
            wasm_bindgen_futures::spawn_local(async move {
                let answer = signaling::post_offer(&config, &sdp).await;
                handle(Input::Answer { generation, answer });
            });
        }
        Effect::MakeOffer { generation, pc } => {
            wasm_bindgen_futures::spawn_local(async move {
                let offer = peer_connection::offer(pc).await;
                handle(Input::LocalOffer { generation, offer });
            });
        }
        Effect::AcceptAnswer { pc, sdp } => {
            wasm_bindgen_futures::spawn_local(async move {
                if let Err(reason) = peer_connection::accept(pc, sdp).await {
                    tracing::warn!("{reason}");
                }
            });
        }
        Effect::DiagnoseSocket {
            generation,
            config,
            closed,
        } => wasm_bindgen_futures::spawn_local(async move {
            let refusal = signaling::socket_refusal(&config).await;
            handle(Input::SocketRefused {
                generation,
                refusal,
                closed,
            });
        }),
        Effect::ReadLane { generation, pc } => wasm_bindgen_futures::spawn_local(async move {
            if let Some(lane) = peer_connection::lane(pc).await {
                handle(Input::LinkLane { generation, lane });
            }
        }),
        Effect::Timer { after, input } => {
            let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
            let fire = Closure::once_into_js(move || handle(input));
            if let Err(error) = scope.set_timeout_with_callback_and_timeout_and_arguments_0(
                fire.unchecked_ref(),
                after.as_millis().min(i32::MAX as u128) as i32,
            ) {
                tracing::error!("setTimeout failed: {error:?}");
            }
        }
        Effect::Delete {
            resource,
            token,
            closing,
        } => wasm_bindgen_futures::spawn_local(async move {
            if let Some(resource) = resource {
                signaling::delete(&resource, &token).await;
            }
            if closing {
                let closed = ToPage::State {
                    state: ConnectionState::Closed,
                    detail: String::new(),
                };
                post(&js_sys::global().unchecked_into(), vec![closed]);
            }
        }),
    }
}

fn post(scope: &DedicatedWorkerGlobalScope, messages: Vec<ToPage>) {
    let batch = Array::new();
    let transfer = Array::new();
    for message in &messages {
        batch.push(&message.encode(&transfer));
    }
    if let Err(error) = scope.post_message_with_transfer(&batch, &transfer) {
        tracing::error!("postMessage to the page failed: {error:?}");
    }
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

impl Driver {
    fn new(config: Config) -> Driver {
        let features = Features {
            echo: config.echo,
            batch: config.batch,
            presence: config.presence,
        };
        let core = PeerCore::with_features(config.max_unacked as usize, features);
        let backoff = config.reconnect.backoff();
        let policy = LanePolicy::new(config.lane, config.lane_times);
        Driver {
            scope: js_sys::global().unchecked_into(),
            config,
            core,
            generation: 0,
            phase: Phase::Connecting,
            policy,
            transport: Transport::WebRtc,
            drain_check: false,
            link: None,
            resource: None,
            trickle: TrickleQueue::default(),
            etag: None,
            backoff,
            requests: HashMap::new(),
            stats: Stats::default(),
            ping: None,
            next_nonce: 1,
            last_heard_ms: 0.0,
            tick: None,
            out: Vec::new(),
            effects: Vec::new(),
        }
    }

    fn handle(&mut self, input: Input) {
        if matches!(self.phase, Phase::Closed) {
            if let Input::Page(ToWorker::Send { id, .. }) = input {
                self.out.push(ToPage::SendFailed {
                    id,
                    error: "the connection is closed".into(),
                });
            }
            return;
        }
        match input {
            Input::Page(message) => self.on_page(message),
            Input::Message {
                generation,
                channel,
                buffer,
            } if generation == self.generation => self.on_channel_message(channel, buffer),
            Input::Writable { generation } if generation == self.generation => {
                self.drain_check = false;
                self.write_outbox()
            }
            Input::ChannelClosed {
                generation,
                channel,
            } if generation == self.generation => {
                self.lose_link(format!("the {} channel closed", channel.label()))
            }
            Input::IceServers {
                generation,
                servers,
            } if generation == self.generation => self.open_link(generation, servers),
            Input::Restarted { generation, result } if generation == self.generation => {
                self.on_restarted(generation, result)
            }
            Input::Trickled { generation, result } if generation == self.generation => {
                if let Err(error) = result {
                    tracing::warn!("trickled candidates refused: {error}");
                }
                self.trickle.sent();
                self.send_trickle();
            }
            Input::LocalOffer { generation, offer } if generation == self.generation => match offer
            {
                Ok(sdp) => self.post_offer(generation, sdp),
                Err(reason) => self.attempt_failed(reason, None),
            },
            Input::Answer { generation, answer } => self.on_answer(generation, answer),
            Input::Retry { generation } if generation == self.generation => {
                if matches!(self.phase, Phase::Waiting) {
                    self.begin_attempt();
                }
            }
            Input::AttemptTimeout { generation } if generation == self.generation => {
                if matches!(self.phase, Phase::Connecting) {
                    let limit = ATTEMPT_TIMEOUT.as_secs();
                    self.attempt_failed(format!("not connected within {limit} s"), None);
                }
            }
            Input::WebRtcDeadline { generation } if generation == self.generation => {
                if matches!(self.phase, Phase::Connecting) {
                    let limit = self.config.lane_times.webrtc_fallback.as_secs_f64();
                    self.attempt_failed(format!("WebRTC not connected within {limit} s"), None);
                }
            }
            Input::Socket { generation, event } if generation == self.generation => {
                self.on_socket(event)
            }
            Input::SocketRefused {
                generation,
                refusal,
                closed,
            } if generation == self.generation && matches!(self.phase, Phase::Connecting) => {
                match refusal {
                    Some(error) if error.is_auth_failure() => self.give_up(format!(
                        "{error}; not retrying: connect again with a valid token"
                    )),
                    Some(error) => {
                        let retry_after = error.retry_after();
                        self.attempt_refused(format!("the WebSocket lane: {error}"), retry_after)
                    }
                    None => self.attempt_failed(
                        format!(
                            "the WebSocket lane did not open ({closed}); signal takes the token"
                        ),
                        None,
                    ),
                }
            }
            Input::LinkLane { generation, lane } if generation == self.generation => {
                self.stats.lane = Some(lane);
            }
            Input::Tick => self.on_tick(),
            // An input of an attempt that is over.
            _ => {}
        }
    }

    fn on_page(&mut self, message: ToWorker) {
        match message {
            ToWorker::Start(_) => tracing::warn!("a second start message was ignored"),
            ToWorker::Channels {
                generation,
                channels,
            } => {
                let current = generation == self.generation
                    && matches!(self.phase, Phase::Connecting)
                    && self.link.is_none();
                if !current {
                    channels.iter().for_each(RtcDataChannel::close);
                    return;
                }
                self.link = Some(Link::Channels(Channels::attach(generation, channels, None)));
            }
            ToWorker::Offer { generation, sdp } if generation == self.generation => {
                self.post_offer(generation, sdp);
            }
            ToWorker::LinkFailed { generation, reason } if generation == self.generation => {
                self.lose_link(reason)
            }
            ToWorker::Candidate {
                generation,
                candidate,
            } if generation == self.generation => {
                self.trickle.push(&candidate);
                self.send_trickle();
            }
            ToWorker::Restart {
                generation,
                ufrag,
                pwd,
            } if generation == self.generation => self.restart_ice(generation, ufrag, pwd),
            ToWorker::Offer { .. }
            | ToWorker::LinkFailed { .. }
            | ToWorker::Candidate { .. }
            | ToWorker::Restart { .. } => {}
            ToWorker::Send {
                id,
                kind,
                doc_id,
                payload,
            } => self.send(id, kind, doc_id, &payload),
            ToWorker::SetPresence { state } => {
                if let Err(error) = self.core.set_presence(&state.to_vec()) {
                    self.notice("presenceRefused", "", error.to_string());
                }
                self.write_outbox();
            }
            ToWorker::SendTo { peer, payload } => {
                if let Err(error) = self.core.send_to(peer, &payload.to_vec()) {
                    self.notice("sendToFailed", "", format!("to {peer}: {error}"));
                }
                self.write_outbox();
            }
            ToWorker::Close => self.close(),
        }
    }

    fn send(&mut self, id: u32, kind: u16, doc_id: Id, payload: &Uint8Array) {
        let timestamp_us = (now_ms() * 1000.0) as u64;
        match self
            .core
            .send(kind, doc_id, &payload.to_vec(), timestamp_us)
        {
            Ok(client_seq) => {
                self.requests.insert(client_seq, id);
                self.write_outbox();
            }
            Err(error) => self.out.push(ToPage::SendFailed {
                id,
                error: error.to_string(),
            }),
        }
    }

    /// Starts a new attempt: the ICE servers (an `OPTIONS` to signal), then
    /// a new peer connection with them, then the offer.
    fn begin_attempt(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        // The state stays what it is (connecting, reconnecting with its
        // reason, failed with its reason) until this attempt's outcome.
        self.phase = Phase::Connecting;
        self.trickle = TrickleQueue::default();
        self.etag = None;
        self.transport = self.policy.next(now_ms() as u64);
        self.effects.push(Effect::Timer {
            after: ATTEMPT_TIMEOUT,
            input: Input::AttemptTimeout { generation },
        });
        match self.transport {
            Transport::WebRtc => {
                self.effects.push(Effect::FetchIceServers {
                    generation,
                    config: self.config.clone(),
                });
                if let Some(after) = self.policy.webrtc_deadline() {
                    let input = Input::WebRtcDeadline { generation };
                    self.effects.push(Effect::Timer { after, input });
                }
            }
            Transport::WebSocket => self.open_socket(generation),
        }
    }

    /// Opens attempt `generation`'s lane socket.
    fn open_socket(&mut self, generation: u32) {
        let on_event = move |event| handle(Input::Socket { generation, event });
        match LaneSocket::open(&self.config, on_event) {
            Ok(socket) => self.link = Some(Link::Socket(socket)),
            Err(reason) => self.attempt_failed(reason, None),
        }
    }

    /// Makes attempt `generation`'s peer connection with `ice_servers`:
    /// here when the browser allows it, by the page otherwise.
    fn open_link(&mut self, generation: u32, ice_servers: Vec<IceServer>) {
        if !matches!(self.phase, Phase::Connecting) || self.link.is_some() {
            return;
        }
        if PeerConnection::available() {
            let on_failed = move |reason: String| {
                handle(Input::Page(ToWorker::LinkFailed { generation, reason }))
            };
            let on_candidate = move |candidate: String| {
                handle(Input::Page(ToWorker::Candidate {
                    generation,
                    candidate,
                }))
            };
            let policy = self.config.ice_transport_policy;
            match PeerConnection::open(&ice_servers, policy, on_failed, on_candidate) {
                Ok((own, channels)) => {
                    let pc = own.handle();
                    let channels = Channels::attach(generation, channels, Some(own));
                    self.link = Some(Link::Channels(channels));
                    self.effects.push(Effect::MakeOffer { generation, pc });
                }
                Err(reason) => self.attempt_failed(reason, None),
            }
        } else {
            self.out.push(ToPage::OpenLink {
                generation,
                ice_servers,
            });
        }
    }

    /// Asks the relay to restart ICE with the page's new credentials
    /// (RFC 9725 §4.4); candidates gathered meanwhile wait for the new ETag.
    fn restart_ice(&mut self, generation: u32, ufrag: String, pwd: String) {
        let Some(resource) = self.resource.clone() else {
            let reason = "no peer resource to restart yet".to_owned();
            return self.out.push(ToPage::RestartFailed { generation, reason });
        };
        self.trickle = TrickleQueue::default();
        self.effects.push(Effect::RestartIce {
            generation,
            resource,
            token: self.config.token.clone(),
            ufrag,
            pwd,
        });
    }

    /// The relay's answer to an ICE restart: its credentials go to the
    /// page; a refusal falls back to a new offer (and `Resume`).
    fn on_restarted(
        &mut self,
        generation: u32,
        result: Result<(RestartFrag, Option<String>), SignalError>,
    ) {
        match result {
            Ok((theirs, etag)) => {
                tracing::info!("ICE restarted");
                self.etag = etag;
                self.trickle.set_ready();
                self.send_trickle();
                self.out.push(ToPage::RestartAnswer {
                    generation,
                    ufrag: theirs.ufrag,
                    pwd: theirs.pwd,
                });
            }
            Err(error) => {
                let reason = format!("ICE restart refused ({error}); reconnecting");
                self.out.push(ToPage::RestartFailed {
                    generation,
                    reason: reason.clone(),
                });
                self.lose_link(reason);
            }
        }
    }

    /// Sends the next batch of trickled candidates, when one may go.
    fn send_trickle(&mut self) {
        let (Some(resource), Some(etag)) = (&self.resource, &self.etag) else {
            return;
        };
        if let Some(candidates) = self.trickle.next_batch() {
            self.effects.push(Effect::Trickle {
                generation: self.generation,
                resource: resource.clone(),
                token: self.config.token.clone(),
                etag: etag.clone(),
                candidates,
            });
        }
    }

    fn on_answer(&mut self, generation: u32, answer: Result<Answer, SignalError>) {
        let current = generation == self.generation && matches!(self.phase, Phase::Connecting);
        match answer {
            // A late answer of an abandoned attempt: free its relay slot.
            Ok(answer) if !current => self.delete(Some(answer.resource), false),
            Ok(answer) => {
                self.resource = Some(answer.resource);
                self.etag = answer.etag;
                self.trickle.set_ready();
                self.send_trickle();
                let own = self.link.as_ref().and_then(Link::own);
                if let Some(own) = own {
                    let pc = own.handle();
                    self.effects.push(Effect::AcceptAnswer {
                        pc,
                        sdp: answer.sdp,
                    });
                } else {
                    self.out.push(ToPage::Answer {
                        generation,
                        sdp: answer.sdp,
                    });
                }
            }
            Err(error) if current && error.is_auth_failure() => self.give_up(format!(
                "{error}; not retrying: connect again with a valid token"
            )),
            Err(error @ SignalError::Refused { .. }) if current => {
                let retry_after = error.retry_after();
                self.attempt_refused(error.to_string(), retry_after)
            }
            Err(error) if current => self.attempt_failed(error.to_string(), None),
            Err(_) => {}
        }
    }

    fn on_channel_message(&mut self, channel: Channel, buffer: ArrayBuffer) {
        self.last_heard_ms = now_ms();
        self.stats.bytes_received += f64::from(buffer.byte_length());
        let bytes = Uint8Array::new(&buffer).to_vec();
        let received = Received {
            bytes,
            buffer,
            start: 0,
        };
        self.core.handle_message(channel, received);
        self.drain_core();
    }

    fn on_socket(&mut self, event: SocketEvent) {
        match event {
            SocketEvent::Opened => self.write_outbox(),
            SocketEvent::Message(buffer) => {
                self.last_heard_ms = now_ms();
                self.stats.bytes_received += f64::from(buffer.byte_length());
                match socket::read(&buffer) {
                    Ok(message) => {
                        let received = Received {
                            bytes: message.bytes,
                            buffer,
                            start: 1,
                        };
                        self.core.handle_message(message.channel, received);
                    }
                    Err(error) => {
                        tracing::warn!("{error}");
                        self.notice("protocolError", "", error);
                    }
                }
                self.drain_core();
            }
            SocketEvent::Text => {
                let error = "a text message on the WebSocket lane was ignored".to_owned();
                tracing::warn!("{error}");
                self.notice("protocolError", "", error);
            }
            SocketEvent::Closed {
                opened,
                code,
                reason,
            } => {
                let closed = format!("code {code} {reason}").trim_end().to_owned();
                if opened || !matches!(self.phase, Phase::Connecting) {
                    return self.lose_link(format!("the WebSocket lane closed ({closed})"));
                }
                // Refused before the upgrade (or unreachable): ask signal
                // why, then fail the attempt with its answer.
                if let Some(Link::Socket(socket)) = self.link.take() {
                    socket.close();
                }
                self.effects.push(Effect::DiagnoseSocket {
                    generation: self.generation,
                    config: self.config.clone(),
                    closed,
                });
            }
        }
    }

    fn drain_core(&mut self) {
        while let Some(event) = self.core.poll_event() {
            match event {
                PeerEvent::Welcomed(welcome) => {
                    self.phase = Phase::Connected;
                    self.backoff.reset();
                    self.last_heard_ms = now_ms();
                    self.policy.connected(self.transport, now_ms() as u64);
                    self.stats.transport = Some(self.transport);
                    self.stats.lane =
                        (self.transport == Transport::WebSocket).then_some(Lane::WebSocket);
                    let peer_id = Id::from_slice(&welcome.peer_id).unwrap_or_default();
                    let peers = welcome
                        .peers
                        .iter()
                        .filter_map(|p| Id::from_slice(p).ok())
                        .collect();
                    tracing::info!(%peer_id, session = welcome.session, "connected");
                    tracing::info!(transport = ?self.transport, "welcomed");
                    self.out.push(ToPage::Welcomed { peer_id, peers });
                    self.out.push(ToPage::Stats(self.stats));
                    self.set_state(ConnectionState::Connected, String::new());
                }
                PeerEvent::Acked { client_seq, seq } => {
                    self.stats.deltas_sent += 1.0;
                    if let Some(id) = self.requests.remove(&client_seq) {
                        self.out.push(ToPage::Sent { id, seq });
                    }
                }
                PeerEvent::Rejected(reject) => {
                    let reason = reject.reason().as_str_name();
                    let code = reason.trim_start_matches("REJECT_REASON_");
                    let detail = format!("client_seq {}: {}", reject.client_seq, reject.detail);
                    self.notice("rejected", code, detail);
                    if let Some(id) = self.requests.remove(&reject.client_seq) {
                        let error = format!("rejected by the relay: {reason} {}", reject.detail);
                        self.out.push(ToPage::SendFailed { id, error });
                    }
                }
                PeerEvent::OptionsInForce(options) => self.out.push(ToPage::Options {
                    echo: options.echo,
                    batch: options.batch,
                    presence: options.presence,
                }),
                PeerEvent::Presence { peer, state } => {
                    self.out.push(ToPage::Presence { peer, state })
                }
                PeerEvent::Message { from, payload } => {
                    self.out.push(ToPage::Message { from, payload })
                }
                PeerEvent::Renumbered { old, new } => {
                    if let Some(id) = self.requests.remove(&old) {
                        self.requests.insert(new, id);
                    }
                }
                PeerEvent::Delta(delta) => {
                    self.stats.deltas_received += 1.0;
                    let buffer = delta.message.buffer;
                    let offset = delta.message.start + PAYLOAD_OFFSET as u32;
                    self.out.push(ToPage::Delta {
                        seq: delta.seq,
                        origin: delta.origin,
                        kind: delta.kind,
                        doc_id: delta.doc_id,
                        length: buffer.byte_length() - offset,
                        offset,
                        buffer,
                    });
                }
                PeerEvent::PeerJoined(peer) => self.out.push(ToPage::PeerJoined(peer)),
                PeerEvent::PeerLeft(peer) => self.out.push(ToPage::PeerLeft(peer)),
                PeerEvent::Pong(nonce) => {
                    if let Some((sent, at)) = self.ping
                        && sent == nonce
                    {
                        self.stats.rtt_ms = Some(now_ms() - at);
                        self.ping = None;
                    }
                }
                PeerEvent::RelayError(error) => {
                    tracing::warn!(code = ?error.code(), "relay error: {}", error.detail);
                    let code = error.code().as_str_name().trim_start_matches("ERROR_CODE_");
                    self.notice("relayError", code, error.detail);
                }
                PeerEvent::SlowConsumer(slow) => {
                    tracing::warn!(
                        queued = slow.queued,
                        "the relay says this peer is falling behind"
                    );
                    let detail = format!("{} deltas queued (limit {})", slow.queued, slow.limit);
                    self.notice("slowConsumer", "", detail);
                }
                PeerEvent::Drain(drain) => {
                    let after = Duration::from_millis(drain.reconnect_after_ms.into());
                    let detail = format!("{} (moving in {} ms)", drain.reason, after.as_millis());
                    self.notice("drain", "", detail);
                    let reason = format!("the relay is draining: {}", drain.reason);
                    return self.lose_link_after(reason, Some(after));
                }
                PeerEvent::ProtocolError(error) => {
                    tracing::warn!("protocol error: {error}");
                    self.notice("protocolError", "", error);
                }
                PeerEvent::Stopped(reason) => {
                    self.notice("historyLost", "HISTORY_LOST", reason.clone());
                    self.fail_requests("the peer stopped: its history is lost");
                    return self.give_up(reason);
                }
                PeerEvent::Disconnected(_) => {}
            }
        }
        self.write_outbox();
    }

    /// Writes what the core wants sent while the channels take it.
    fn write_outbox(&mut self) {
        let link = match &self.link {
            Some(Link::Channels(link)) => link,
            Some(Link::Socket(_)) => return self.write_socket(),
            None => return,
        };
        while let Some((channel, bytes)) = self.core.poll_transmit() {
            let dc = &link.channels[usize::from(channel.stream_id())];
            if dc.ready_state() != RtcDataChannelState::Open || dc.buffered_amount() > HIGH_WATER {
                self.core.unpoll_transmit(channel, bytes);
                return;
            }
            if let Err(error) = dc.send_with_u8_array(&bytes) {
                self.core.unpoll_transmit(channel, bytes);
                let reason = format!("writing to {}: {error:?}", channel.label());
                return self.lose_link(reason);
            }
            self.stats.bytes_sent += bytes.len() as f64;
        }
    }

    /// [`Driver::write_outbox`] on the WebSocket lane: while the socket
    /// takes it; when its buffer is full, looks again shortly (the browser
    /// says nothing when it drains), the core holding the rest.
    fn write_socket(&mut self) {
        let Some(Link::Socket(socket)) = &self.link else {
            return;
        };
        while let Some((channel, bytes)) = self.core.poll_transmit() {
            match socket.send(channel, &bytes) {
                Ok(true) => self.stats.bytes_sent += (bytes.len() + 1) as f64,
                Ok(false) => {
                    self.core.unpoll_transmit(channel, bytes);
                    if socket.is_full() && !self.drain_check {
                        self.drain_check = true;
                        self.effects.push(Effect::Timer {
                            after: SOCKET_DRAIN_CHECK,
                            input: Input::Writable {
                                generation: self.generation,
                            },
                        });
                    }
                    return;
                }
                Err(reason) => {
                    self.core.unpoll_transmit(channel, bytes);
                    return self.lose_link(reason);
                }
            }
        }
    }

    fn on_tick(&mut self) {
        if matches!(self.phase, Phase::Connected) {
            let silent_ms = now_ms() - self.last_heard_ms;
            let limit = self.config.reconnect.silence_timeout;
            if silent_ms > limit.as_secs_f64() * 1000.0 {
                let limit = limit.as_secs_f64();
                return self.lose_link(format!("the relay stopped answering ({limit} s silent)"));
            }
            let nonce = self.next_nonce;
            self.next_nonce += 1;
            self.core.ping(nonce);
            self.ping = Some((nonce, now_ms()));
            self.write_outbox();
        }
        self.stats.unacked = self.core.unacked() as f64;
        self.stats.last_seq = self.core.last_seq() as f64;
        self.stats.buffered_bytes = self.link.as_ref().map_or(0.0, Link::buffered_bytes);
        if matches!(self.phase, Phase::Connected)
            && let Some(own) = self.link.as_ref().and_then(Link::own)
        {
            self.effects.push(Effect::ReadLane {
                generation: self.generation,
                pc: own.handle(),
            });
        }
        self.out.push(ToPage::Stats(self.stats));
    }

    /// The current attempt failed before `Welcome` on its lane: over
    /// WebRTC, when the policy allows it, the WebSocket lane is tried at
    /// once; otherwise as [`Driver::attempt_refused`].
    fn attempt_failed(&mut self, reason: String, retry_after: Option<Duration>) {
        self.policy.failed(self.transport);
        if self.transport == Transport::WebRtc
            && self.policy.next(now_ms() as u64) == Transport::WebSocket
        {
            tracing::warn!("{reason}; trying the WebSocket lane");
            self.end_attempt();
            return self.begin_attempt();
        }
        self.attempt_refused(reason, retry_after)
    }

    /// Frees what the current attempt holds.
    fn end_attempt(&mut self) {
        self.end_link();
        if let Some(resource) = self.resource.take() {
            self.delete(Some(resource), false);
        }
    }

    /// Signal refused the attempt (the other lane would be refused too,
    /// and a refusal says nothing about the lane), or it failed for good on
    /// its lane: report it, free what it holds and retry after a backoff
    /// (longer if the server asked).
    fn attempt_refused(&mut self, reason: String, retry_after: Option<Duration>) {
        self.end_attempt();
        let mut delay = self.backoff.next_delay(js_sys::Math::random());
        if let Some(asked) = retry_after {
            delay = delay.max(asked.min(MAX_RETRY_AFTER));
        }
        let attempt = self.backoff.failures();
        tracing::warn!("connection attempt {attempt} failed: {reason}");
        let detail = format!("{reason}; retry {attempt} in {:.1} s", delay.as_secs_f64());
        self.set_state(ConnectionState::Failed, detail);
        self.wait(delay);
    }

    /// Stops trying: the state stays failed with `reason` until the
    /// application closes the connection.
    fn give_up(&mut self, reason: String) {
        self.end_link();
        tracing::error!("{reason}");
        self.phase = Phase::Stopped;
        self.set_state(ConnectionState::Failed, reason);
    }

    /// The link dropped (or never came up): after `Welcome` this is a
    /// reconnect that resumes; before, a failed attempt.
    fn lose_link(&mut self, reason: String) {
        self.lose_link_after(reason, None)
    }

    /// [`Driver::lose_link`], reconnecting after `after` when the relay
    /// named a delay (`Drain`) instead of the backoff's.
    fn lose_link_after(&mut self, reason: String, after: Option<Duration>) {
        match self.phase {
            Phase::Connecting => self.attempt_failed(reason, None),
            Phase::Connected => {
                tracing::warn!("connection lost: {reason}");
                self.end_link();
                self.resource = None;
                self.set_state(ConnectionState::Reconnecting, reason);
                let delay =
                    after.unwrap_or_else(|| self.backoff.next_delay(js_sys::Math::random()));
                self.wait(delay);
            }
            Phase::Waiting | Phase::Stopped | Phase::Closed => {}
        }
    }

    fn wait(&mut self, delay: Duration) {
        self.phase = Phase::Waiting;
        self.effects.push(Effect::Timer {
            after: delay,
            input: Input::Retry {
                generation: self.generation,
            },
        });
    }

    fn end_link(&mut self) {
        self.core.connection_lost();
        self.ping = None;
        self.stats.transport = None;
        self.stats.lane = None;
        match self.link.take() {
            Some(Link::Socket(socket)) => socket.close(),
            Some(Link::Channels(link)) => {
                link.close();
                if link.own.is_none() {
                    self.out.push(ToPage::CloseLink {
                        generation: link.generation,
                    });
                }
            }
            None if self.transport == Transport::WebSocket => {}
            None => self.out.push(ToPage::CloseLink {
                generation: self.generation,
            }),
        }
    }

    fn close(&mut self) {
        if matches!(self.phase, Phase::Connected | Phase::Connecting) {
            self.end_link();
        }
        self.phase = Phase::Closed;
        let resource = self.resource.take();
        self.delete(resource, true);
        self.fail_requests("closed before the relay acknowledged it");
        if let Some((handle, _)) = self.tick.take() {
            self.scope.clear_interval_with_handle(handle);
        }
    }

    fn fail_requests(&mut self, why: &str) {
        for (_, id) in self.requests.drain() {
            self.out.push(ToPage::SendFailed {
                id,
                error: why.to_owned(),
            });
        }
    }

    fn notice(&mut self, kind: &str, code: &str, detail: String) {
        self.out.push(ToPage::Notice(Notice {
            kind: kind.to_owned(),
            code: code.to_owned(),
            detail,
        }));
    }

    fn post_offer(&mut self, generation: u32, sdp: String) {
        let config = self.config.clone();
        self.effects.push(Effect::PostOffer {
            generation,
            config,
            sdp,
        });
    }

    fn delete(&mut self, resource: Option<String>, closing: bool) {
        let token = self.config.token.clone();
        self.effects.push(Effect::Delete {
            resource,
            token,
            closing,
        });
    }

    fn set_state(&mut self, state: ConnectionState, detail: String) {
        self.out.push(ToPage::State { state, detail });
    }

    fn start_tick(&mut self) {
        let tick = Closure::<dyn FnMut()>::new(|| handle(Input::Tick));
        match self
            .scope
            .set_interval_with_callback_and_timeout_and_arguments_0(
                tick.as_ref().unchecked_ref(),
                i32::try_from(self.config.reconnect.keepalive.as_millis()).unwrap_or(i32::MAX),
            ) {
            Ok(handle) => self.tick = Some((handle, tick)),
            Err(error) => tracing::error!("setInterval failed: {error:?}"),
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            post(&self.scope, std::mem::take(&mut self.out));
        }
    }
}

//! The demo page served at `/`: a whiteboard that every tab in a session
//! draws on through deltas, beside a panel of the connected peers with their
//! round trips, the session's delta rate and this peer's statistics.
//!
//! `index.html` holds the layout; [`start_demo`] connects with
//! [`page::connect`] and keeps the elements up to date. Every delta names
//! the board's document id; the kinds:
//! - 1: a stroke segment: `x0 y0 x1 y1` (u16 little-endian, the canvas
//!   scaled to `0..=65535`) then the drawer's `r g b` (11 bytes);
//! - 2: clear the board (empty);
//! - 3: a test delta (text), from the "send test delta" button.
//!
//! Presence (PROTOCOL §8, not deltas, so `delta-count` counts only the
//! board's deltas) carries each peer's live cursor and its round trip to
//! the relay: `rtt_ms (f32 LE, NaN before the first pong) | x (u16 LE) |
//! y (u16 LE)`, the point scaled like strokes, `0xffff 0xffff` off the
//! board; set on every pointer move and every 2 s. With a relay that
//! answers `presence: false` the demo shows no cursors and no round trips
//! of others, and says so in `#presence-note`.
//!
//! The "call" button starts a direct WebRTC data channel to the first
//! other peer, signalled through direct messages (see `call`).
//!
//! Elements with a `data-testid` are hooks for automated checks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use js_sys::{Function, Uint8Array};
use wasm_bindgen::convert::TryFromJsValue;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{
    CanvasRenderingContext2d, Document, Element, EventTarget, HtmlCanvasElement, PointerEvent,
    UrlSearchParams,
};

use super::call::Caller;
use super::js::{error_text, get};
use super::page::{self, Connection};

/// The board's document id.
const BOARD: &str = "6f1c2a4e-0d5b-4c3e-9a7f-3b8e2d1c0a95";
/// Delta kinds (see the module documentation).
const STROKE: u32 = 1;
const CLEAR: u32 = 2;
const TEST: u32 = 3;
/// Bytes of a presence state (see the module documentation).
const PRESENCE_BYTES: usize = 8;
/// The cursor coordinate that means "not on the board".
const OFF_BOARD: u16 = u16::MAX;
/// Bytes of a stroke segment's payload.
const SEGMENT_BYTES: usize = 11;
/// What `index.html` holds until signal fills in its development token.
const TOKEN_PLACEHOLDER: &str = "__DELTAMESH_DEV_TOKEN__";
/// The pen's colour before the relay has named this peer.
const NO_COLOR: [u8; 3] = [128, 128, 128];

/// Starts the demo: reads `?session=` (default `demo`), the token
/// (`?token=`, else the page's `deltamesh-dev-token` meta tag) and the
/// connection options `?lane=auto|webrtc|websocket`, `?webrtcFallbackMs=`
/// and `?iceTransportPolicy=all|relay`,
/// connects and wires the board and the panel. Problems are shown on the
/// page.
#[wasm_bindgen(js_name = startDemo)]
pub fn start_demo() {
    if let Err(why) = start() {
        tracing::error!("the demo cannot start: {why}");
    }
}

/// [`start_demo`]'s work; an error means the page itself is broken.
fn start() -> Result<(), String> {
    let window = web_sys::window().ok_or("no window")?;
    let document = window.document().ok_or("no document")?;
    let ui = Ui::find(&document)?;
    let search = window.location().search().map_err(|e| error_text(&e))?;
    let params = UrlSearchParams::new_with_str(&search).map_err(|e| error_text(&e))?;
    let session = params.get("session").filter(|s| !s.is_empty());
    let session = session.unwrap_or_else(|| "demo".to_owned());
    ui.set("session", &session);
    let meta_token = document
        .query_selector("meta[name=deltamesh-dev-token]")
        .ok()
        .flatten()
        .and_then(|meta| meta.get_attribute("content"));
    let meta_token = meta_token.filter(|t| t != TOKEN_PLACEHOLDER);
    let token = params.get("token").filter(|t| !t.is_empty()).or(meta_token);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        ui.show_state(
            "failed",
            "no token: open this page from signal (it fills in the development token) \
             or add ?token=… to the address",
        );
        return Ok(());
    };
    let options = js_sys::Object::new();
    for key in ["lane", "iceTransportPolicy"] {
        if let Some(value) = params.get(key) {
            let _ = js_sys::Reflect::set(&options, &key.into(), &value.into());
        }
    }
    if let Some(ms) = params.get("webrtcFallbackMs") {
        // Not a number: `connect` refuses it, and the page says why.
        let ms = ms.parse::<f64>().unwrap_or(f64::NAN);
        let _ = js_sys::Reflect::set(&options, &"webrtcFallbackMs".into(), &ms.into());
    }
    ui.show_state("connecting", "");
    spawn_local(async move {
        let connecting = page::connect(session, token, options.into());
        match JsFuture::from(connecting).await {
            Ok(value) => match Connection::try_from_js_value(value) {
                Ok(conn) => Demo::run(ui, Rc::new(conn)),
                Err(_) => ui.show_state("failed", "connect resolved to no Connection"),
            },
            Err(error) => ui.show_state("failed", &error_text(&error)),
        }
    });
    Ok(())
}

/// The page: its text elements (set by id, see `index.html`) and the board.
struct Ui {
    document: Document,
    canvas: HtmlCanvasElement,
    ink: CanvasRenderingContext2d,
}

impl Ui {
    /// The page's board and its 2d context.
    fn find(document: &Document) -> Result<Ui, String> {
        let canvas = document.get_element_by_id("board");
        let canvas: HtmlCanvasElement = canvas
            .and_then(|c| c.dyn_into().ok())
            .ok_or("index.html has no canvas #board")?;
        let ink = canvas.get_context("2d").ok().flatten();
        let ink = ink
            .and_then(|c| c.dyn_into().ok())
            .ok_or("the canvas has no 2d context")?;
        Ok(Ui {
            document: document.clone(),
            canvas,
            ink,
        })
    }

    /// Sets the text of element `#id`.
    fn set(&self, id: &str, text: &str) {
        match self.document.get_element_by_id(id) {
            Some(element) => element.set_text_content(Some(text)),
            None => tracing::error!("index.html has no #{id}"),
        }
    }

    /// Shows the connection's state and why.
    fn show_state(&self, state: &str, detail: &str) {
        self.set("state", state);
        self.set("state-detail", detail);
        if let Some(element) = self.document.get_element_by_id("state") {
            let _ = element.set_attribute("data-state", state);
        }
    }

    /// Shows the last problem (a refused send).
    fn show_error(&self, error: &str) {
        tracing::warn!("{error}");
        self.set("error", error);
    }

    /// Where `event` points on the board, scaled to `0..=65535`.
    fn board_point(&self, event: &PointerEvent) -> (u16, u16) {
        let rect = self.canvas.get_bounding_client_rect();
        let scale = |at: f64, start: f64, size: f64| {
            let fraction = if size > 0.0 { (at - start) / size } else { 0.0 };
            (fraction.clamp(0.0, 1.0) * 65535.0).round() as u16
        };
        (
            scale(f64::from(event.client_x()), rect.left(), rect.width()),
            scale(f64::from(event.client_y()), rect.top(), rect.height()),
        )
    }

    /// Draws one stroke segment.
    fn draw(&self, segment: &Segment) {
        let (width, height) = (self.canvas.width(), self.canvas.height());
        let at = |(x, y): (u16, u16)| {
            let scale = |n: u16, size: u32| f64::from(n) * f64::from(size) / 65535.0;
            (scale(x, width), scale(y, height))
        };
        let ([r, g, b], (x0, y0), (x1, y1)) = (segment.color, at(segment.from), at(segment.to));
        self.ink.set_stroke_style_str(&format!("rgb({r},{g},{b})"));
        self.ink.set_line_width(3.0);
        self.ink.set_line_cap("round");
        self.ink.begin_path();
        self.ink.move_to(x0, y0);
        self.ink.line_to(x1, y1);
        self.ink.stroke();
    }

    /// Wipes the board.
    fn clear_board(&self) {
        let (width, height) = (self.canvas.width(), self.canvas.height());
        self.ink
            .clear_rect(0.0, 0.0, f64::from(width), f64::from(height));
    }

    /// A peer list entry: a colour swatch, the short id and the round trip.
    fn peer_row(&self, peer: &str, note: &str, rtt: Option<f64>) -> Option<Element> {
        let row = self.document.create_element("li").ok()?;
        let swatch = self.document.create_element("span").ok()?;
        let [r, g, b] = color_of(peer);
        swatch.set_class_name("swatch");
        swatch
            .set_attribute("style", &format!("background: rgb({r},{g},{b})"))
            .ok()?;
        let name = self.document.create_element("code").ok()?;
        name.set_text_content(Some(&format!(
            "{}{note}",
            peer.chars().take(8).collect::<String>()
        )));
        let time = self.document.create_element("span").ok()?;
        time.set_class_name("rtt");
        time.set_text_content(Some(&show_rtt(rtt)));
        for child in [&swatch, &name, &time] {
            row.append_child(child).ok()?;
        }
        Some(row)
    }
}

/// One line of a stroke, from `from` to `to` on the scaled board.
struct Segment {
    from: (u16, u16),
    to: (u16, u16),
    color: [u8; 3],
}

impl Segment {
    /// The kind-1 payload.
    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(SEGMENT_BYTES);
        for n in [self.from.0, self.from.1, self.to.0, self.to.1] {
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        bytes.extend_from_slice(&self.color);
        bytes
    }

    /// A kind-1 payload's segment, `None` unless it is 11 bytes.
    fn decode(bytes: &[u8]) -> Option<Segment> {
        let bytes: &[u8; SEGMENT_BYTES] = bytes.try_into().ok()?;
        let n = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        Some(Segment {
            from: (n(0), n(2)),
            to: (n(4), n(6)),
            color: [bytes[8], bytes[9], bytes[10]],
        })
    }
}

/// The running demo: the connection, the page and what it has seen.
struct Demo {
    conn: Rc<Connection>,
    ui: Ui,
    seen: RefCell<Seen>,
    caller: Rc<Caller>,
}

/// What the demo has seen and counted.
#[derive(Default)]
struct Seen {
    /// The pen's last point while the pointer is down on the board.
    pen: Option<(u16, u16)>,
    /// The round trip each other peer reported last (`None`: not measured).
    rtts: HashMap<String, Option<f64>>,
    /// Each other peer's cursor on the board.
    cursors: HashMap<String, (u16, u16)>,
    /// This peer's cursor, when on the board.
    cursor: Option<(u16, u16)>,
    /// Deltas received from other peers.
    received: u64,
    /// The highest session seq seen (received, or one of ours acknowledged).
    max_seq: Option<f64>,
    /// `max_seq` at the previous tick of the rate.
    max_seq_before: Option<f64>,
}

impl Demo {
    /// Wires the connection's callbacks, the board, the buttons and the timers.
    fn run(ui: Ui, conn: Rc<Connection>) {
        let document = ui.document.clone();
        let caller = Caller::new(conn.clone(), move |state| {
            if let Some(element) = document.get_element_by_id("call-state") {
                element.set_text_content(Some(state));
            }
        });
        let demo = Rc::new(Demo {
            conn,
            ui,
            seen: RefCell::default(),
            caller,
        });
        let d = demo.clone();
        demo.conn.on_state(function(move |change| {
            let state = get(&change, "state").as_string().unwrap_or_default();
            let detail = get(&change, "detail").as_string().unwrap_or_default();
            d.ui.show_state(&state, &detail);
            if state == "connected" {
                // A restarted relay may have started the session's seqs over.
                let mut seen = d.seen.borrow_mut();
                (seen.max_seq, seen.max_seq_before) = (None, None);
            }
            d.show_peers();
        }));
        let d = demo.clone();
        demo.conn.on_peer(function(move |change| {
            if get(&change, "type").as_string().as_deref() == Some("left")
                && let Some(peer) = get(&change, "peerId").as_string()
            {
                d.seen.borrow_mut().rtts.remove(&peer);
            }
            d.show_peers();
        }));
        let d = demo.clone();
        demo.conn.on_presence(function2(move |peer, state| {
            let (Some(peer), Ok(state)) = (peer.as_string(), state.dyn_into::<Uint8Array>()) else {
                return;
            };
            d.on_presence(peer, &state.to_vec());
        }));
        let d = demo.clone();
        demo.conn.on_message(function2(move |from, payload| {
            let (Some(from), Ok(payload)) = (from.as_string(), payload.dyn_into::<Uint8Array>())
            else {
                return;
            };
            if !d.caller.on_message(from, &payload) {
                tracing::info!("a direct message that is not a call message");
            }
        }));
        let d = demo.clone();
        demo.conn.on_notice(function(move |notice| {
            let kind = get(&notice, "kind").as_string().unwrap_or_default();
            let detail = get(&notice, "detail").as_string().unwrap_or_default();
            if matches!(kind.as_str(), "historyLost" | "relayError" | "sendToFailed") {
                d.ui.show_error(&format!("{kind}: {detail}"));
            }
        }));
        let d = demo.clone();
        demo.conn
            .on_delta(function(move |delta| d.on_delta(&delta)));
        for event in [
            "pointerdown",
            "pointermove",
            "pointerup",
            "pointercancel",
            "pointerleave",
        ] {
            let d = demo.clone();
            listen(Some(&demo.ui.canvas), event, move |e| {
                if let Ok(e) = e.dyn_into::<PointerEvent>() {
                    d.on_pointer(&e);
                }
            });
        }
        let button = |id: &str| demo.ui.document.get_element_by_id(id);
        let d = demo.clone();
        listen(button("clear"), "click", move |_| {
            d.ui.clear_board();
            d.send(CLEAR, &[]);
        });
        let d = demo.clone();
        listen(button("send-test"), "click", move |_| {
            let me = d
                .conn
                .peer_id()
                .unwrap_or_else(|| "a peer not yet welcomed".to_owned());
            d.send(TEST, format!("test delta from {me}").as_bytes());
        });
        let d = demo.clone();
        listen(button("call"), "click", move |_| {
            let peer = d.conn.peers().iter().find_map(|p| p.as_string());
            match peer {
                Some(peer) => d.caller.call(peer),
                None => d.ui.set("call-state", "nobody to call"),
            }
        });
        let d = demo.clone();
        every(1000, move || d.tick());
        let d = demo.clone();
        every(2000, move || d.send_presence());
        demo.ui.show_state(&demo.conn.state(), &demo.conn.detail());
        demo.show_peers();
    }

    /// Sends a delta; its seq counts towards the rate, a refusal is shown.
    fn send(self: &Rc<Self>, kind: u32, payload: &[u8]) {
        let sending = self
            .conn
            .send(f64::from(kind), BOARD, &Uint8Array::from(payload));
        let demo = self.clone();
        spawn_local(async move {
            match JsFuture::from(sending).await {
                Ok(seq) => demo.saw_seq(seq.as_f64()),
                Err(error) => demo
                    .ui
                    .show_error(&format!("send failed: {}", error_text(&error))),
            }
        });
    }

    /// Notes a session seq for the rate.
    fn saw_seq(&self, seq: Option<f64>) {
        let mut seen = self.seen.borrow_mut();
        if let Some(seq) = seq {
            seen.max_seq = Some(seen.max_seq.map_or(seq, |max| max.max(seq)));
        }
    }

    /// A delta from another peer: counted, then drawn or noted by kind.
    fn on_delta(&self, delta: &JsValue) {
        let origin = get(delta, "origin").as_string().unwrap_or_default();
        let seq = get(delta, "seq").as_f64();
        let payload = get(delta, "payload")
            .dyn_into::<Uint8Array>()
            .map(|p| p.to_vec());
        let payload = payload.unwrap_or_default();
        self.saw_seq(seq);
        let received = {
            let mut seen = self.seen.borrow_mut();
            seen.received += 1;
            seen.received
        };
        self.ui.set("delta-count", &received.to_string());
        let kind = get(delta, "kind").as_f64().map(|k| k as u32);
        let on_board = get(delta, "docId").as_string().as_deref() == Some(BOARD);
        match kind {
            Some(STROKE) if on_board => match Segment::decode(&payload) {
                Some(segment) => self.ui.draw(&segment),
                None => tracing::warn!(
                    origin,
                    seq,
                    "ignoring a stroke of {} bytes (a segment is {SEGMENT_BYTES})",
                    payload.len()
                ),
            },
            Some(CLEAR) if on_board => self.ui.clear_board(),
            _ => {}
        }
    }

    /// Another peer's presence: its cursor and round trip (empty: gone).
    fn on_presence(&self, peer: String, state: &[u8]) {
        {
            let mut seen = self.seen.borrow_mut();
            match decode_presence(state) {
                Some((rtt, cursor)) => {
                    seen.rtts.insert(peer.clone(), rtt);
                    match cursor {
                        Some(point) => seen.cursors.insert(peer, point),
                        None => seen.cursors.remove(&peer),
                    };
                }
                None => {
                    if !state.is_empty() {
                        tracing::warn!(peer, "ignoring a malformed presence state");
                    }
                    seen.rtts.remove(&peer);
                    seen.cursors.remove(&peer);
                }
            }
        }
        self.show_cursors();
        self.show_peers();
    }

    /// Pointer down, move or up on the board: each move while down is a segment.
    fn on_pointer(self: &Rc<Self>, event: &PointerEvent) {
        let point = self.ui.board_point(event);
        let cursor = (event.type_() != "pointerleave").then_some(point);
        let moved = {
            let mut seen = self.seen.borrow_mut();
            std::mem::replace(&mut seen.cursor, cursor) != cursor
        };
        if moved {
            self.send_presence();
        }
        let mut seen = self.seen.borrow_mut();
        let from = match event.type_().as_str() {
            "pointerdown" if event.button() == 0 => {
                event.prevent_default();
                let _ = self.ui.canvas.set_pointer_capture(event.pointer_id());
                seen.pen = Some(point);
                None
            }
            "pointermove" => match seen.pen {
                Some(from) if from != point => seen.pen.replace(point),
                _ => None,
            },
            _ => {
                seen.pen = None;
                None
            }
        };
        drop(seen);
        if let Some(from) = from {
            let color = self.conn.peer_id().map_or(NO_COLOR, |me| color_of(&me));
            let segment = Segment {
                from,
                to: point,
                color,
            };
            self.ui.draw(&segment);
            self.send(STROKE, &segment.encode());
        }
    }

    /// Once a second: the session's delta rate, own stats and the peers.
    fn tick(&self) {
        let (max_seq, rate) = {
            let mut seen = self.seen.borrow_mut();
            let rate = seen
                .max_seq
                .zip(seen.max_seq_before)
                .map(|(now, then)| now - then);
            seen.max_seq_before = seen.max_seq;
            (seen.max_seq, rate)
        };
        let none = || "–".to_owned();
        self.ui
            .set("max-seq", &max_seq.map_or_else(none, |s| s.to_string()));
        self.ui
            .set("rate", &rate.map_or_else(none, |r| format!("{r} /s")));
        let stats = self.conn.stats();
        let number = |key: &str| get(&stats, key).as_f64().unwrap_or(0.0);
        let lane = get(&stats, "lane").as_string();
        self.ui.set("lane", lane.as_deref().unwrap_or("–"));
        self.ui.set("rtt", &show_rtt(get(&stats, "rttMs").as_f64()));
        self.ui.set("bytes-sent", &show_bytes(number("bytesSent")));
        self.ui
            .set("bytes-received", &show_bytes(number("bytesReceived")));
        self.ui.set("unacked", &number("unacked").to_string());
        self.show_peers();
    }

    /// On each pointer move and every 2 s: this peer's cursor and round
    /// trip as its presence state (only the latest goes out).
    fn send_presence(&self) {
        let rtt = get(&self.conn.stats(), "rttMs").as_f64();
        let cursor = self.seen.borrow().cursor;
        self.conn
            .set_presence(&Uint8Array::from(&encode_presence(rtt, cursor)[..]));
        let presence = get(&self.conn.features(), "presence").as_bool();
        let note = match presence {
            Some(false) => "presence is not offered by this relay: no cursors",
            _ => "",
        };
        self.ui.set("presence-note", note);
    }

    /// Redraws the other peers' cursors over the board.
    fn show_cursors(&self) {
        let Some(layer) = self.ui.document.get_element_by_id("cursors") else {
            return tracing::error!("index.html has no #cursors");
        };
        layer.set_text_content(None);
        let seen = self.seen.borrow();
        for (peer, (x, y)) in &seen.cursors {
            let Ok(dot) = self.ui.document.create_element("span") else {
                continue;
            };
            let [r, g, b] = color_of(peer);
            let at = |n: u16| f64::from(n) * 100.0 / 65535.0;
            dot.set_class_name("cursor");
            let style = format!(
                "left: {:.2}%; top: {:.2}%; background: rgb({r},{g},{b})",
                at(*x),
                at(*y)
            );
            let _ = dot.set_attribute("style", &style);
            let _ = layer.append_child(&dot);
        }
        self.ui.set("cursor-count", &seen.cursors.len().to_string());
    }

    /// Rebuilds the peer list: this peer first, then the others.
    fn show_peers(&self) {
        let peers: Vec<String> = self
            .conn
            .peers()
            .iter()
            .filter_map(|p| p.as_string())
            .collect();
        self.ui.set("peers", &peers.len().to_string());
        let mut rows = Vec::new();
        if let Some(me) = self.conn.peer_id() {
            let rtt = get(&self.conn.stats(), "rttMs").as_f64();
            rows.extend(self.ui.peer_row(&me, " (you)", rtt));
        }
        let seen = self.seen.borrow();
        for peer in &peers {
            let rtt = seen.rtts.get(peer).copied().flatten();
            rows.extend(self.ui.peer_row(peer, "", rtt));
        }
        if let Some(list) = self.ui.document.get_element_by_id("peer-list") {
            list.set_text_content(None);
            for row in rows {
                let _ = list.append_child(&row);
            }
        }
    }
}

/// A presence state: round trip (NaN when unmeasured) and cursor.
fn encode_presence(rtt: Option<f64>, cursor: Option<(u16, u16)>) -> Vec<u8> {
    let (x, y) = cursor.unwrap_or((OFF_BOARD, OFF_BOARD));
    let mut bytes = Vec::with_capacity(PRESENCE_BYTES);
    bytes.extend_from_slice(&rtt.map_or(f32::NAN, |ms| ms as f32).to_le_bytes());
    bytes.extend_from_slice(&x.to_le_bytes());
    bytes.extend_from_slice(&y.to_le_bytes());
    bytes
}

/// A point on the scaled board.
type Point = (u16, u16);

/// A presence state's round trip and cursor; `None` unless 8 bytes.
fn decode_presence(state: &[u8]) -> Option<(Option<f64>, Option<Point>)> {
    let bytes: &[u8; PRESENCE_BYTES] = state.try_into().ok()?;
    let ms = f64::from(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    let rtt = (ms.is_finite() && ms >= 0.0).then_some(ms);
    let (x, y) = (
        u16::from_le_bytes([bytes[4], bytes[5]]),
        u16::from_le_bytes([bytes[6], bytes[7]]),
    );
    let cursor = (x != OFF_BOARD || y != OFF_BOARD).then_some((x, y));
    Some((rtt, cursor))
}

/// A peer's colour, derived from its id: a hue from the id's hash.
fn color_of(peer: &str) -> [u8; 3] {
    let hash = peer.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let (hue, saturation, lightness) = (f64::from(hash % 360), 0.7_f64, 0.45_f64);
    let a = saturation * lightness.min(1.0 - lightness);
    let channel = |n: f64| {
        let k = (n + hue / 30.0) % 12.0;
        let value = lightness - a * (k - 3.0).min(9.0 - k).clamp(-1.0, 1.0);
        (value * 255.0).round() as u8
    };
    [channel(0.0), channel(8.0), channel(4.0)]
}

/// A round trip for people.
fn show_rtt(rtt: Option<f64>) -> String {
    rtt.map_or("–".into(), |ms| format!("{ms:.1} ms"))
}

/// A byte count for people.
fn show_bytes(bytes: f64) -> String {
    match bytes {
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b} B"),
    }
}

/// A JavaScript function that runs `f` (kept for the page's lifetime).
fn function(f: impl FnMut(JsValue) + 'static) -> Function {
    Closure::<dyn FnMut(JsValue)>::new(f)
        .into_js_value()
        .unchecked_into()
}

/// A JavaScript function of two arguments that runs `f`.
fn function2(f: impl FnMut(JsValue, JsValue) + 'static) -> Function {
    Closure::<dyn FnMut(JsValue, JsValue)>::new(f)
        .into_js_value()
        .unchecked_into()
}

/// Runs `handler` on each `event` at `target`.
fn listen<T: AsRef<EventTarget>>(
    target: Option<T>,
    event: &str,
    handler: impl FnMut(JsValue) + 'static,
) {
    let Some(target) = target else {
        return tracing::error!("nothing to listen to for {event}");
    };
    let target = target.as_ref();
    if let Err(error) = target.add_event_listener_with_callback(event, &function(handler)) {
        tracing::error!("cannot listen to {event}: {}", error_text(&error));
    }
}

/// Runs `f` every `ms` milliseconds.
fn every(ms: i32, mut f: impl FnMut() + 'static) {
    let run = function(move |_| f());
    let set = web_sys::window()
        .map(|w| w.set_interval_with_callback_and_timeout_and_arguments_0(&run, ms));
    if !matches!(set, Some(Ok(_))) {
        tracing::error!("cannot start a {ms} ms timer");
    }
}

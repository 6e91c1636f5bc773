//! The demo's direct call: a WebRTC data channel straight between two tabs
//! of a session, signalled entirely through the relay's direct messages
//! (`sendTo` / `onMessage`, PROTOCOL §9). No media: the call is one
//! negotiated data channel on which the caller pings and the callee pongs,
//! and the round trip is shown.
//!
//! The signalling messages are JSON text: `{"call":"offer","sdp":…}` and
//! `{"call":"answer","sdp":…}`, each carrying the whole SDP once ICE
//! gathering is complete (no trickle).

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{JSON, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{
    RtcDataChannel, RtcDataChannelInit, RtcPeerConnection, RtcSdpType, RtcSessionDescriptionInit,
};

use super::js::{error_text, get, object};
use super::page::Connection;

/// The longest wait for ICE gathering before the SDP goes as it is.
const GATHERING_MS: u32 = 3000;

/// One call at a time: its peer connection and channel, and the peer.
#[derive(Default)]
struct Active {
    pc: Option<RtcPeerConnection>,
    channel: Option<RtcDataChannel>,
    /// Kept alive while the channel may call them.
    _handlers: Vec<Closure<dyn FnMut(JsValue)>>,
}

/// The call feature: the connection to signal through and where to show
/// the call's state.
pub(super) struct Caller {
    conn: Rc<Connection>,
    show: Box<dyn Fn(&str)>,
    active: RefCell<Active>,
}

impl Caller {
    /// A caller that signals through `conn` and reports with `show`.
    pub(super) fn new(conn: Rc<Connection>, show: impl Fn(&str) + 'static) -> Rc<Caller> {
        Rc::new(Caller {
            conn,
            show: Box::new(show),
            active: RefCell::default(),
        })
    }

    /// Calls `peer`: a new peer connection, its offer by direct message.
    pub(super) fn call(self: &Rc<Self>, peer: String) {
        let caller = self.clone();
        spawn_local(async move {
            (caller.show)(&format!("calling {}", short(&peer)));
            let result = async {
                let pc = caller.open(true)?;
                let offer = JsFuture::from(pc.create_offer())
                    .await
                    .map_err(|e| error_text(&e))?;
                let sdp = get(&offer, "sdp").as_string().ok_or("no offer SDP")?;
                let sdp = describe(&pc, RtcSdpType::Offer, sdp).await?;
                caller.signal(&peer, "offer", &sdp)
            };
            if let Err(why) = result.await {
                (caller.show)(&format!("call failed: {why}"));
            }
        });
    }

    /// A direct message: an offer (answered) or the answer to this peer's
    /// offer. Returns false when it is not a call message.
    pub(super) fn on_message(self: &Rc<Self>, from: String, payload: &Uint8Array) -> bool {
        let text = String::from_utf8_lossy(&payload.to_vec()).into_owned();
        let Ok(message) = JSON::parse(&text) else {
            return false;
        };
        let (Some(kind), Some(sdp)) = (
            get(&message, "call").as_string(),
            get(&message, "sdp").as_string(),
        ) else {
            return false;
        };
        let caller = self.clone();
        spawn_local(async move {
            let result = match kind.as_str() {
                "offer" => caller.answer(&from, sdp).await,
                "answer" => caller.accept(sdp).await,
                other => Err(format!("unknown call message {other:?}")),
            };
            if let Err(why) = result {
                (caller.show)(&format!("call failed: {why}"));
            }
        });
        true
    }

    async fn answer(self: &Rc<Self>, from: &str, offer: String) -> Result<(), String> {
        (self.show)(&format!("answering {}", short(from)));
        let pc = self.open(false)?;
        remote(&pc, RtcSdpType::Offer, offer).await?;
        let answer = JsFuture::from(pc.create_answer())
            .await
            .map_err(|e| error_text(&e))?;
        let sdp = get(&answer, "sdp").as_string().ok_or("no answer SDP")?;
        let sdp = describe(&pc, RtcSdpType::Answer, sdp).await?;
        self.signal(from, "answer", &sdp)
    }

    async fn accept(&self, answer: String) -> Result<(), String> {
        let pc = self
            .active
            .borrow()
            .pc
            .clone()
            .ok_or("an answer without a call")?;
        remote(&pc, RtcSdpType::Answer, answer).await
    }

    fn signal(&self, to: &str, kind: &str, sdp: &str) -> Result<(), String> {
        let message = object(&[("call", kind.into()), ("sdp", sdp.into())]);
        let text = JSON::stringify(&message).map_err(|e| error_text(&e))?;
        let bytes = String::from(text).into_bytes();
        self.conn
            .send_to(to, &Uint8Array::from(&bytes[..]))
            .map_err(|e| error_text(&e))
    }

    /// A fresh peer connection with the call's negotiated channel (id 0 on
    /// both sides, so neither waits for the other to announce it).
    fn open(self: &Rc<Self>, calling: bool) -> Result<RtcPeerConnection, String> {
        self.hang_up();
        let pc = RtcPeerConnection::new().map_err(|e| error_text(&e))?;
        let init = RtcDataChannelInit::new();
        init.set_negotiated(true);
        init.set_id(0);
        let channel = pc.create_data_channel_with_data_channel_dict("call", &init);
        let caller = self.clone();
        let opened = channel.clone();
        let on_open = Closure::<dyn FnMut(JsValue)>::new(move |_| {
            if calling {
                let ping = format!("ping:{}", js_sys::Date::now());
                if opened.send_with_str(&ping).is_err() {
                    (caller.show)("call failed: the channel refused the ping");
                }
            } else {
                (caller.show)("in a call (waiting for the ping)");
            }
        });
        let caller = self.clone();
        let replies = channel.clone();
        let on_message = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            let text = get(&event, "data").as_string().unwrap_or_default();
            if let Some(sent) = text.strip_prefix("ping:") {
                let _ = replies.send_with_str(&format!("pong:{sent}"));
                (caller.show)("connected directly (answered a ping)");
            } else if let Some(sent) = text.strip_prefix("pong:") {
                let rtt = sent.parse::<f64>().map(|at| js_sys::Date::now() - at);
                let rtt = rtt.map_or("?".into(), |ms| format!("{ms:.1} ms"));
                (caller.show)(&format!("connected directly, ping {rtt}"));
            }
        });
        channel.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        *self.active.borrow_mut() = Active {
            pc: Some(pc.clone()),
            channel: Some(channel),
            _handlers: vec![on_open, on_message],
        };
        Ok(pc)
    }

    /// Ends the current call, if any.
    fn hang_up(&self) {
        let old = std::mem::take(&mut *self.active.borrow_mut());
        if let Some(channel) = old.channel {
            channel.set_onopen(None);
            channel.set_onmessage(None);
            channel.close();
        }
        if let Some(pc) = old.pc {
            pc.close();
        }
    }
}

/// Sets the local description and returns its SDP once ICE gathering is
/// complete (or after [`GATHERING_MS`]), so it carries the candidates.
async fn describe(pc: &RtcPeerConnection, kind: RtcSdpType, sdp: String) -> Result<String, String> {
    let description = RtcSessionDescriptionInit::new(kind);
    description.set_sdp(&sdp);
    JsFuture::from(pc.set_local_description(&description))
        .await
        .map_err(|e| format!("setLocalDescription: {}", error_text(&e)))?;
    let mut waited = 0;
    while get(pc, "iceGatheringState").as_string().as_deref() != Some("complete")
        && waited < GATHERING_MS
    {
        sleep(50).await;
        waited += 50;
    }
    let local = get(pc, "localDescription");
    get(&local, "sdp")
        .as_string()
        .ok_or_else(|| "no local description".to_owned())
}

async fn remote(pc: &RtcPeerConnection, kind: RtcSdpType, sdp: String) -> Result<(), String> {
    let description = RtcSessionDescriptionInit::new(kind);
    description.set_sdp(&sdp);
    JsFuture::from(pc.set_remote_description(&description))
        .await
        .map(|_| ())
        .map_err(|e| format!("setRemoteDescription: {}", error_text(&e)))
}

async fn sleep(ms: u32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        if let Some(window) = web_sys::window() {
            let _ =
                window.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms as i32);
        }
    });
    let _ = JsFuture::from(promise).await;
}

/// A peer id's first eight characters.
fn short(peer: &str) -> String {
    peer.chars().take(8).collect()
}

//! The worker's WebSocket lane (PROTOCOL §11): one `WebSocket` to
//! `GET /v1/sessions/{s}/socket`, opened by the worker itself (dedicated
//! workers have `WebSocket`), the token in `?access_token=` (a browser
//! cannot set `Authorization` on a WebSocket). Every message is one
//! channel id byte and the message that channel carries, read into and
//! written from the same [`crate::core::PeerCore`] as the data channels.
//!
//! A browser sees neither the status nor the body of a refused upgrade,
//! only a close (1006) before `open`; [`super::signaling::socket_refusal`]
//! then asks signal the same question over `fetch` to learn why.

use std::cell::Cell;
use std::rc::Rc;

use deltamesh_proto::channel::Channel;
use js_sys::{ArrayBuffer, Uint8Array};
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use super::js::error_text;
use super::messages::Config;

/// Bytes the socket may buffer before writes wait (as for a channel).
const HIGH_WATER: u32 = 1 << 20;

/// Something the lane socket reports.
pub(super) enum SocketEvent {
    /// The upgrade succeeded; messages may be written.
    Opened,
    /// A binary message: the channel id byte, then the channel's message.
    Message(ArrayBuffer),
    /// A text message (the lane has none).
    Text,
    /// The socket closed (or never opened: `opened` false).
    Closed {
        /// Whether `open` had fired.
        opened: bool,
        /// The close code (1006 when the connection just dropped).
        code: u16,
        /// The close reason.
        reason: String,
    },
}

/// One lane message taken apart: its channel and the channel's message
/// (which starts at byte 1 of the buffer).
pub(super) struct LaneMessage {
    /// The channel it belongs to.
    pub(super) channel: Channel,
    /// The channel's message, copied into wasm memory.
    pub(super) bytes: Vec<u8>,
}

/// Reads a lane message: `Err` names what is wrong with it (empty, or an
/// unknown channel id).
pub(super) fn read(buffer: &ArrayBuffer) -> Result<LaneMessage, String> {
    let view = Uint8Array::new(buffer);
    if view.length() == 0 {
        return Err("an empty message on the WebSocket lane".into());
    }
    let id = view.get_index(0);
    let channel = Channel::from_stream_id(u16::from(id))
        .ok_or_else(|| format!("a WebSocket lane message for unknown channel {id}"))?;
    Ok(LaneMessage {
        channel,
        bytes: view.subarray(1, view.length()).to_vec(),
    })
}

/// The lane URL of `config.session` (`http` becomes `ws`, `https` `wss`)
/// with the token in the query.
fn url(config: &Config) -> Result<String, String> {
    let base = config.signal_url.trim_end_matches('/');
    let rest = base
        .strip_prefix("http")
        .ok_or_else(|| format!("signalUrl must be http(s), not {base:?}"))?;
    let token = String::from(js_sys::encode_uri_component(&config.token));
    Ok(format!(
        "ws{rest}/v1/sessions/{}/socket?access_token={token}",
        config.session
    ))
}

/// An open (or opening) lane socket and its listeners.
pub(super) struct LaneSocket {
    socket: WebSocket,
    _listeners: Vec<Closure<dyn FnMut(JsValue)>>,
}

impl LaneSocket {
    /// Opens the lane of `config.session`; `on_event` hears everything
    /// the socket reports, until [`LaneSocket::close`].
    pub(super) fn open(
        config: &Config,
        on_event: impl Fn(SocketEvent) + 'static,
    ) -> Result<Self, String> {
        let socket = WebSocket::new(&url(config)?)
            .map_err(|e| format!("the WebSocket lane: {}", error_text(&e)))?;
        socket.set_binary_type(BinaryType::Arraybuffer);
        let on_event = Rc::new(on_event);
        let listener = |f: Box<dyn Fn(JsValue)>| Closure::<dyn FnMut(JsValue)>::new(f);
        let opened = Rc::new(Cell::new(false));
        let on_open = {
            let (on_event, opened) = (on_event.clone(), opened.clone());
            listener(Box::new(move |_| {
                opened.set(true);
                on_event(SocketEvent::Opened)
            }))
        };
        let on_message = {
            let on_event = on_event.clone();
            listener(Box::new(move |event: JsValue| {
                let event: MessageEvent = event.unchecked_into();
                match event.data().dyn_into::<ArrayBuffer>() {
                    Ok(buffer) => on_event(SocketEvent::Message(buffer)),
                    Err(_) => on_event(SocketEvent::Text),
                }
            }))
        };
        let on_close = listener(Box::new(move |event: JsValue| {
            let event: CloseEvent = event.unchecked_into();
            on_event(SocketEvent::Closed {
                opened: opened.get(),
                code: event.code(),
                reason: event.reason(),
            })
        }));
        socket.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        socket.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        socket.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(LaneSocket {
            socket,
            _listeners: vec![on_open, on_message, on_close],
        })
    }

    /// Writes `bytes` for `channel` unless the socket's buffer is full
    /// (`Ok(false)`: try again once it drained) or it is not open yet.
    pub(super) fn send(&self, channel: Channel, bytes: &[u8]) -> Result<bool, String> {
        if self.socket.ready_state() != WebSocket::OPEN
            || self.socket.buffered_amount() > HIGH_WATER
        {
            return Ok(false);
        }
        let mut message = Vec::with_capacity(bytes.len() + 1);
        message.push(channel.stream_id() as u8);
        message.extend_from_slice(bytes);
        self.socket
            .send_with_u8_array(&message)
            .map(|()| true)
            .map_err(|e| format!("writing to the WebSocket lane: {}", error_text(&e)))
    }

    /// Whether writes wait for the buffer to drain (the browser has no
    /// event for it, so the driver looks again after a moment).
    pub(super) fn is_full(&self) -> bool {
        self.socket.buffered_amount() > HIGH_WATER
    }

    /// Bytes waiting in the socket's send buffer.
    pub(super) fn buffered_amount(&self) -> u32 {
        self.socket.buffered_amount()
    }

    /// Closes the socket (leaving the session) and stops listening.
    pub(super) fn close(&self) {
        self.socket.set_onopen(None);
        self.socket.set_onmessage(None);
        self.socket.set_onclose(None);
        let _ = self.socket.close_with_code(1000);
    }
}

//! One `RTCPeerConnection` with deltamesh's four pre-negotiated channels:
//! made by the page (Chromium has none in workers) or, where the browser
//! offers it, by the worker itself.

use deltamesh_proto::channel::Channel;
use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    RtcDataChannel, RtcDataChannelInit, RtcPeerConnection, RtcPeerConnectionState, RtcSdpType,
    RtcSessionDescriptionInit,
};

use super::js::{error_text, get};

/// A peer connection and the handler that reports its failure.
pub struct PeerConnection {
    pc: RtcPeerConnection,
    _on_state_change: Closure<dyn FnMut()>,
}

impl PeerConnection {
    /// Whether this global scope can make peer connections.
    pub fn available() -> bool {
        js_sys::Reflect::has(&js_sys::global(), &JsValue::from_str("RTCPeerConnection"))
            .unwrap_or(false)
    }

    /// Makes the connection and its `command`, `send` and `receive`
    /// channels (ordered, reliable) and `presence` (unordered, no
    /// retransmits; PROTOCOL §8), all negotiated by stream id. `on_failed`
    /// runs once if the connection fails or closes under us.
    pub fn open(
        on_failed: impl FnOnce(String) + 'static,
    ) -> Result<(PeerConnection, [RtcDataChannel; 4]), String> {
        let pc = RtcPeerConnection::new().map_err(|e| error_text(&e))?;
        let channel = |channel: Channel| {
            let init = RtcDataChannelInit::new();
            init.set_negotiated(true);
            init.set_id(channel.stream_id());
            init.set_ordered(channel.ordered());
            if let Some(retransmits) = channel.max_retransmits() {
                init.set_max_retransmits(retransmits);
            }
            pc.create_data_channel_with_data_channel_dict(channel.label(), &init)
        };
        let channels = Channel::ALL.map(channel);
        let mut on_failed = Some(on_failed);
        let watched = pc.clone();
        let on_state_change = Closure::<dyn FnMut()>::new(move || {
            let state = watched.connection_state();
            if matches!(
                state,
                RtcPeerConnectionState::Failed | RtcPeerConnectionState::Closed
            ) && let Some(report) = on_failed.take()
            {
                report(format!("peer connection {state:?}").to_lowercase());
            }
        });
        pc.set_onconnectionstatechange(Some(on_state_change.as_ref().unchecked_ref()));
        Ok((
            PeerConnection {
                pc,
                _on_state_change: on_state_change,
            },
            channels,
        ))
    }

    /// The handle to pass to [`offer`] and [`accept`] from a task.
    pub fn handle(&self) -> RtcPeerConnection {
        self.pc.clone()
    }

    /// Closes the connection and its channels.
    pub fn close(&self) {
        self.pc.set_onconnectionstatechange(None);
        self.pc.close();
    }
}

/// Makes the offer and sets it as the local description; returns its SDP.
/// ICE-lite relays answer with all their candidates and learn ours from
/// our checks, so the offer goes out without waiting for gathering.
pub async fn offer(pc: RtcPeerConnection) -> Result<String, String> {
    let offer = JsFuture::from(pc.create_offer())
        .await
        .map_err(|e| format!("createOffer: {}", error_text(&e)))?;
    let sdp = get(&offer, "sdp")
        .as_string()
        .ok_or("createOffer gave no SDP")?;
    let description = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
    description.set_sdp(&sdp);
    JsFuture::from(pc.set_local_description(&description))
        .await
        .map_err(|e| format!("setLocalDescription: {}", error_text(&e)))?;
    Ok(sdp)
}

/// Applies the relay's answer.
pub async fn accept(pc: RtcPeerConnection, sdp: String) -> Result<(), String> {
    let description = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
    description.set_sdp(&sdp);
    let applied: Promise = pc.set_remote_description(&description);
    JsFuture::from(applied)
        .await
        .map(|_| ())
        .map_err(|e| format!("setRemoteDescription: {}", error_text(&e)))
}

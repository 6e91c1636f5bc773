//! One `RTCPeerConnection` with deltamesh's four pre-negotiated channels:
//! made by the page (Chromium has none in workers) or, where the browser
//! offers it, by the worker itself, with the ICE servers signal listed
//! (PROTOCOL §10) and the application's `iceTransportPolicy`. Candidates it
//! gathers are reported for trickling.

use deltamesh_proto::channel::Channel;
use js_sys::{Array, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    RtcDataChannel, RtcDataChannelInit, RtcPeerConnection, RtcPeerConnectionState, RtcSdpType,
    RtcSessionDescriptionInit,
};

use super::js::{error_text, get, object};
use super::messages::{IceTransportPolicy, ice_servers_array};
use crate::ice_servers::IceServer;
use crate::lane::Lane;

/// A peer connection and the handlers that report its failure and its
/// candidates.
pub struct PeerConnection {
    pc: RtcPeerConnection,
    _on_state_change: Closure<dyn FnMut()>,
    _on_candidate: Closure<dyn FnMut(JsValue)>,
    on_ice_state: Option<Closure<dyn FnMut()>>,
}

impl PeerConnection {
    /// Whether this global scope can make peer connections.
    pub fn available() -> bool {
        js_sys::Reflect::has(&js_sys::global(), &JsValue::from_str("RTCPeerConnection"))
            .unwrap_or(false)
    }

    /// Makes the connection and its `command`, `send` and `receive`
    /// channels (ordered, reliable) and `presence` (unordered, no
    /// retransmits; PROTOCOL §8), all negotiated by stream id, gathering
    /// through `ice_servers` under `policy`. `on_failed` runs once if the
    /// connection fails or closes under us; `on_candidate` with each
    /// candidate gathered (the `RTCIceCandidate.candidate` string).
    pub fn open(
        ice_servers: &[IceServer],
        policy: IceTransportPolicy,
        on_failed: impl FnOnce(String) + 'static,
        on_candidate: impl FnMut(String) + 'static,
    ) -> Result<(PeerConnection, [RtcDataChannel; 4]), String> {
        let pc = new_peer_connection(ice_servers, policy)?;
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
        let mut on_candidate = on_candidate;
        let on_ice_candidate = Closure::<dyn FnMut(JsValue)>::new(move |event: JsValue| {
            // `candidate` is null at the end of gathering.
            if let Some(line) = get(&get(&event, "candidate"), "candidate").as_string()
                && !line.is_empty()
            {
                on_candidate(line);
            }
        });
        pc.set_onicecandidate(Some(on_ice_candidate.as_ref().unchecked_ref()));
        Ok((
            PeerConnection {
                pc,
                _on_state_change: on_state_change,
                _on_candidate: on_ice_candidate,
                on_ice_state: None,
            },
            channels,
        ))
    }

    /// The handle to pass to [`offer`] and [`accept`] from a task.
    pub fn handle(&self) -> RtcPeerConnection {
        self.pc.clone()
    }

    /// Runs `on_trouble` each time ICE becomes `disconnected` or
    /// `failed` (the path broke: an ICE restart may mend it).
    pub fn on_ice_trouble(&mut self, mut on_trouble: impl FnMut() + 'static) {
        let watched = self.pc.clone();
        let on_change = Closure::<dyn FnMut()>::new(move || {
            let state = get(&watched, "iceConnectionState").as_string();
            if matches!(state.as_deref(), Some("disconnected" | "failed")) {
                on_trouble();
            }
        });
        self.pc
            .set_oniceconnectionstatechange(Some(on_change.as_ref().unchecked_ref()));
        self.on_ice_state = Some(on_change);
    }

    /// Closes the connection and its channels.
    pub fn close(&self) {
        self.pc.set_onconnectionstatechange(None);
        self.pc.set_onicecandidate(None);
        self.pc.set_oniceconnectionstatechange(None);
        self.pc.close();
    }
}

/// `new RTCPeerConnection({iceServers, iceTransportPolicy})`, built from a
/// plain object (the configuration dictionary needs nothing more).
fn new_peer_connection(
    ice_servers: &[IceServer],
    policy: IceTransportPolicy,
) -> Result<RtcPeerConnection, String> {
    let configuration = object(&[
        ("iceServers", ice_servers_array(ice_servers).into()),
        ("iceTransportPolicy", policy.as_str().into()),
    ]);
    let constructor =
        Reflect::get(&js_sys::global(), &"RTCPeerConnection".into()).map_err(|e| error_text(&e))?;
    let constructor: js_sys::Function = constructor
        .dyn_into()
        .map_err(|_| "RTCPeerConnection is not available here".to_owned())?;
    Reflect::construct(&constructor, &Array::of1(&configuration))
        .map(JsCast::unchecked_into)
        .map_err(|e| format!("RTCPeerConnection: {}", error_text(&e)))
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

/// The lane the connection's selected candidate pair runs on, from
/// `getStats()`: its local candidate's type and protocol
/// ([`Lane::of_local_candidate`]). `None` until a pair is selected (or if
/// the stats cannot be read).
pub async fn lane(pc: RtcPeerConnection) -> Option<Lane> {
    let report = JsFuture::from(pc.get_stats()).await.ok()?;
    // An `RTCStatsReport` is a map of id to stats object.
    let stats: Vec<JsValue> = Array::from(&report)
        .iter()
        .map(|entry| Array::from(&entry).get(1))
        .collect();
    let text = |value: &JsValue, key: &str| get(value, key).as_string();
    let by_id = |id: String| {
        stats
            .iter()
            .find(|s| text(s, "id").as_deref() == Some(id.as_str()))
    };
    let of_type = |kind: &'static str| {
        stats
            .iter()
            .filter(move |s| text(s, "type").as_deref() == Some(kind))
    };
    // Chromium names the pair on the transport; others flag it `selected`.
    let pair = of_type("transport")
        .find_map(|t| text(t, "selectedCandidatePairId").and_then(by_id))
        .or_else(|| {
            of_type("candidate-pair").find(|p| get(p, "selected").as_bool() == Some(true))
        })?;
    let local = by_id(text(pair, "localCandidateId")?)?;
    let candidate_type = text(local, "candidateType")?;
    let protocol = text(local, "protocol").unwrap_or_default();
    Some(Lane::of_local_candidate(&candidate_type, &protocol))
}

/// Restarts ICE (`restartIce()`, then a new offer as the local
/// description) and returns the new `ice-ufrag` and `ice-pwd`.
pub async fn restart_offer(pc: RtcPeerConnection) -> Result<(String, String), String> {
    let restart: js_sys::Function = get(&pc, "restartIce")
        .dyn_into()
        .map_err(|_| "this browser has no restartIce()".to_owned())?;
    restart
        .call0(&pc)
        .map_err(|e| format!("restartIce: {}", error_text(&e)))?;
    let sdp = offer(pc).await?;
    let value = |name: &str| {
        sdp.lines()
            .find_map(|line| line.trim().strip_prefix(name))
            .map(str::to_owned)
            .ok_or_else(|| format!("the restart offer has no {name}"))
    };
    Ok((value("a=ice-ufrag:")?, value("a=ice-pwd:")?))
}

/// Applies the relay's new ICE credentials after a restart: the current
/// answer with its `ice-ufrag` and `ice-pwd` replaced.
pub async fn accept_restart(pc: RtcPeerConnection, ufrag: &str, pwd: &str) -> Result<(), String> {
    let current = get(&get(&pc, "remoteDescription"), "sdp")
        .as_string()
        .ok_or("no remote description to restart")?;
    let sdp: String = current
        .split_inclusive('\n')
        .map(|line| {
            let ending = if line.ends_with("\r\n") { "\r\n" } else { "\n" };
            if line.starts_with("a=ice-ufrag:") {
                format!("a=ice-ufrag:{ufrag}{ending}")
            } else if line.starts_with("a=ice-pwd:") {
                format!("a=ice-pwd:{pwd}{ending}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    accept(pc, sdp).await
}

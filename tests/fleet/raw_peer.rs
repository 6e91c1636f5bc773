//! A bare WebRTC peer for the fleet tests: it offers through signal like
//! any client, then only writes what it is told to and hands back every
//! message it receives, raw, by channel, so a test can speak parts of the
//! protocol (presence, `PeerSignal`) that `NativePeer` does not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use deltamesh_proto::Id;
use deltamesh_proto::channel::Channel;
use deltamesh_proto::command;
use deltamesh_proto::pb::command::Body;
use deltamesh_proto::presence::PresenceState;
use deltamesh_worker::channel_config;
use str0m::change::SdpAnswer;
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::common::TOKEN;

/// A connected bare peer and everything it received.
pub(crate) struct RawPeer {
    /// Its peer id (from `Welcome`).
    pub id: Id,
    /// The relay that welcomed it.
    pub relay: Id,
    /// Every message received, in order, with its channel.
    pub received: Vec<(Channel, Vec<u8>)>,
    /// The peer resource's URL, for `PATCH` and `DELETE`.
    pub resource: String,
    /// The resource's `ETag` from the `201`, quoted.
    pub etag: String,
    outgoing: mpsc::UnboundedSender<(Channel, Vec<u8>)>,
    incoming: mpsc::UnboundedReceiver<(Channel, Vec<u8>)>,
    driver: JoinHandle<()>,
}

impl RawPeer {
    /// Joins `session` through the signal at `signal_url` (development
    /// token: every grant) and waits for its `Welcome`.
    pub(crate) async fn join(signal_url: &str, session: &str) -> RawPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let local = socket.local_addr().expect("address");
        let mut rtc = Rtc::builder()
            .set_sctp_max_message_size(1 << 20)
            .clear_codecs()
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("candidate"));
        let mut sdp = rtc.sdp_api();
        let channels =
            Channel::ALL.map(|channel| sdp.add_channel_with_config(channel_config(channel)));
        let (offer, pending) = sdp.apply().expect("an offer");
        let response = reqwest::Client::new()
            .post(format!("{signal_url}/v1/sessions/{session}/peers"))
            .header("content-type", "application/sdp")
            .bearer_auth(TOKEN)
            .body(offer.to_sdp_string())
            .send()
            .await
            .expect("signal answers");
        assert_eq!(response.status().as_u16(), 201, "offer accepted");
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("a Location")
            .to_owned();
        let etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .expect("an ETag")
            .to_owned();
        let answer = response.text().await.expect("answer");
        rtc.sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&answer).expect("answer sdp"),
            )
            .expect("answer applies");
        let (outgoing, outbox) = mpsc::unbounded_channel();
        let (inbox, incoming) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(rtc, socket, local, channels, outbox, inbox));
        let mut peer = RawPeer {
            id: Id::default(),
            relay: Id::default(),
            received: Vec::new(),
            resource: format!("{signal_url}{location}"),
            etag,
            outgoing,
            incoming,
            driver,
        };
        let welcome = peer
            .wait_for(Duration::from_secs(15), |p| {
                p.commands().into_iter().find_map(|c| match c {
                    Body::Welcome(w) => Some(w),
                    _ => None,
                })
            })
            .await
            .expect("welcomed");
        peer.id = Id::from_slice(&welcome.peer_id).expect("peer id");
        peer.relay = Id::from_slice(&welcome.relay_id).expect("relay id");
        peer
    }

    /// Leaves the session: `DELETE` on the peer resource, then stops.
    pub(crate) async fn leave(self) {
        let response = reqwest::Client::new()
            .delete(&self.resource)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("signal answers");
        assert!(response.status().is_success(), "{}", response.status());
    }

    /// Writes `bytes` on `channel` (queued until the channel is open).
    pub(crate) fn write(&self, channel: Channel, bytes: Vec<u8>) {
        let _ = self.outgoing.send((channel, bytes));
    }

    /// Writes `body` on the command channel.
    pub(crate) fn command(&self, body: Body) {
        self.write(Channel::Command, command::encode(body));
    }

    /// The commands received, decoded, in order.
    pub(crate) fn commands(&self) -> Vec<Body> {
        self.received
            .iter()
            .filter(|(c, _)| *c == Channel::Command)
            .filter_map(|(_, bytes)| command::decode(bytes).ok())
            .collect()
    }

    /// The presence states received: whose, version, state.
    pub(crate) fn presence(&self) -> Vec<(Id, u64, Vec<u8>)> {
        self.received
            .iter()
            .filter(|(c, _)| *c == Channel::Presence)
            .filter_map(|(_, bytes)| PresenceState::parse(bytes))
            .map(|s| (s.peer_id, s.version, s.state.to_vec()))
            .collect()
    }

    /// Takes what arrives until `found` finds something, or `wait` passes.
    pub(crate) async fn wait_for<T>(
        &mut self,
        wait: Duration,
        found: impl Fn(&RawPeer) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(value) = found(self) {
                return Some(value);
            }
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(message)) => self.received.push(message),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Takes what arrives for `span`.
    pub(crate) async fn settle(&mut self, span: Duration) {
        let _ = self.wait_for(span, |_| None::<()>).await;
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Drives `rtc` over `socket`: writes what the test queued once its channel
/// is open, passes every received message on.
async fn drive(
    mut rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    channels: [ChannelId; 4],
    mut outbox: mpsc::UnboundedReceiver<(Channel, Vec<u8>)>,
    inbox: mpsc::UnboundedSender<(Channel, Vec<u8>)>,
) {
    let mut waiting: Vec<(Channel, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; 2048];
    loop {
        waiting.retain(|(channel, bytes)| {
            let id = channels[channel.stream_id() as usize];
            match rtc.channel(id) {
                Some(mut handle) => !handle.write(true, bytes).unwrap_or(false),
                None => true,
            }
        });
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(Event::ChannelData(data))) => {
                    if let Some(channel) = Channel::ALL
                        .into_iter()
                        .find(|c| channels[c.stream_id() as usize] == data.id)
                    {
                        let _ = inbox.send((channel, data.data));
                    }
                }
                Ok(Output::Event(_)) => {}
                Ok(Output::Timeout(at)) => break at,
                Err(_) => return,
            }
        };
        let wait = timeout
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(20));
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, source)) = received else { return };
                let Ok(contents) = buf[..n].try_into() else { continue };
                let input = Input::Receive(
                    Instant::now(),
                    Receive { proto: Protocol::Udp, source, destination: local, contents },
                );
                if rtc.handle_input(input).is_err() {
                    return;
                }
            }
            queued = outbox.recv() => match queued {
                Some(message) => waiting.push(message),
                None => return,
            },
            () = tokio::time::sleep(wait) => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return;
                }
            }
        }
    }
}

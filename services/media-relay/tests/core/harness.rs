//! A relay and its peers wired in memory with a virtual clock, as str0m's
//! `tests/common.rs` does for two `Rtc`s: every shard is a [`RelayCore`],
//! every peer a native [`PeerCore`] over an offering `Rtc`, and
//! [`Net::progress`] moves datagrams between them and time forward. No
//! socket, no runtime, no real clock: a rule test runs in milliseconds.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use deltamesh_proto::channel::Channel;
use deltamesh_proto::command;
use deltamesh_proto::pb::command::Body;
use deltamesh_proto::{Grants, Id, pb};
use deltamesh_relay::{
    ChunkStore, MemoryLog, Offer, PeerAccess, RelayConfig, RelayCore, RelayMetrics, Shared,
    WallClock,
};
use deltamesh_worker::{PeerCore, PeerEvent, channel_config};
use opentelemetry::trace::Tracer;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// The virtual time one [`Net::progress`] step moves on.
const STEP: Duration = Duration::from_millis(1);

/// One peer: its WebRTC side, its protocol core, and what it has seen.
pub(crate) struct TestPeer {
    /// Its offering `Rtc`.
    pub(crate) rtc: Rtc,
    /// Its protocol state.
    pub(crate) core: PeerCore,
    /// Its host address.
    pub(crate) addr: SocketAddr,
    /// Its relay-side peer id.
    pub(crate) peer_id: Id,
    /// Every event it reported, in order.
    pub(crate) events: Vec<PeerEvent>,
    /// While set, the network drops everything to and from it.
    pub(crate) cut_off: bool,
    /// Every message it received on `receive`, `command` and `presence`,
    /// raw, with when it arrived (the core does not read all of them).
    pub(crate) raw: Vec<(Instant, Channel, Vec<u8>)>,
    /// Raw messages waiting for room in its channels ([`TestPeer::queue_raw`]).
    raw_outbox: VecDeque<(Channel, Vec<u8>)>,
    channels: [ChannelId; 4],
}

impl TestPeer {
    /// Writes `bytes` on `channel`, bypassing the protocol core.
    pub(crate) fn write_raw(&mut self, channel: Channel, bytes: &[u8]) {
        let id = self.channels[channel.stream_id() as usize];
        let mut handle = self.rtc.channel(id).expect("the channel is open");
        assert!(handle.write(true, bytes).expect("write"), "channel full");
    }

    /// Queues `bytes` for `channel`, bypassing the protocol core: written,
    /// in order and before the core's messages, as the channel has room.
    pub(crate) fn queue_raw(&mut self, channel: Channel, bytes: Vec<u8>) {
        self.raw_outbox.push_back((channel, bytes));
    }

    /// Whether every queued raw message is written.
    pub(crate) fn raw_sent(&self) -> bool {
        self.raw_outbox.is_empty()
    }

    /// The raw messages it got on `channel`, in order.
    pub(crate) fn received_on(&self, channel: Channel) -> impl Iterator<Item = &[u8]> {
        self.raw
            .iter()
            .filter(move |(_, c, _)| *c == channel)
            .map(|(_, _, bytes)| bytes.as_slice())
    }

    /// Writes `body` on the command channel, bypassing the protocol core.
    pub(crate) fn command_raw(&mut self, body: Body) {
        self.write_raw(Channel::Command, &command::encode(body));
    }

    /// The messages it received on `channel`, raw, in order, with when
    /// each arrived.
    pub(crate) fn received_raw(&self, channel: Channel) -> Vec<(Instant, &[u8])> {
        self.raw
            .iter()
            .filter(|(_, c, _)| *c == channel)
            .map(|(at, _, bytes)| (*at, bytes.as_slice()))
            .collect()
    }

    /// The commands it received, decoded, in order.
    pub(crate) fn commands(&self) -> Vec<Body> {
        self.received_raw(Channel::Command)
            .into_iter()
            .filter_map(|(_, bytes)| command::decode(bytes).ok())
            .collect()
    }

    /// The deltas it received, as seqs, in order.
    pub(crate) fn seqs(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::Delta(d) => Some(d.seq),
                _ => None,
            })
            .collect()
    }

    /// The acks it got, as (client_seq, seq).
    pub(crate) fn acks(&self) -> Vec<(u64, u64)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::Acked { client_seq, seq } => Some((*client_seq, *seq)),
                _ => None,
            })
            .collect()
    }

    /// The errors the relay reported to it.
    pub(crate) fn relay_errors(&self) -> Vec<pb::Error> {
        self.events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::RelayError(error) => Some(error.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether its connection was closed.
    pub(crate) fn disconnected(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, PeerEvent::Disconnected(_)))
    }

    /// The rejects it got.
    pub(crate) fn rejects(&self) -> Vec<pb::Reject> {
        self.events
            .iter()
            .filter_map(|e| match e {
                PeerEvent::Rejected(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A relay's shards and their peers in memory.
pub(crate) struct Net {
    /// Virtual time now.
    pub(crate) now: Instant,
    /// The shards' cores, by index.
    pub(crate) shards: Vec<RelayCore>,
    /// The peers, by the index [`Net::join`] returned.
    pub(crate) peers: Vec<TestPeer>,
    /// What the shards share (budgets, config).
    pub(crate) shared: Arc<Shared>,
    /// The relay's metrics.
    pub(crate) metrics: RelayMetrics,
}

/// Full grants.
pub(crate) fn all_grants() -> Grants {
    Grants {
        publish: true,
        subscribe: true,
        ..Grants::default()
    }
}

impl Net {
    /// A relay with `config` (its `shards` shards) over an in-memory log.
    pub(crate) fn new(config: RelayConfig) -> Net {
        let now = Instant::now();
        let store = Arc::new(ChunkStore::new(config.chunk_size, config.max_chunks));
        let log = Arc::new(MemoryLog::new(store));
        let clock = WallClock::new(now, SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30));
        let metrics = RelayMetrics::default();
        let shared = Shared::new(config, log, metrics.clone(), clock);
        let shards = (0..shared.shard_count())
            .map(|i| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 40_000 + i as u16));
                RelayCore::new(Arc::clone(&shared), i, addr).expect("a certificate")
            })
            .collect();
        Net {
            now,
            shards,
            peers: Vec::new(),
            shared,
            metrics,
        }
    }

    /// Connects a new peer with `grants` to `session` on `shard`, and runs
    /// until it is welcomed; returns its index.
    pub(crate) fn join(&mut self, session: &str, shard: usize, grants: Grants) -> usize {
        let core = PeerCore::new(65_536, false);
        self.connect(core, session, shard, grants)
    }

    /// Connects `core` (a fresh one, or one whose connection was lost) as a
    /// new connection to `session` on `shard`; returns its index.
    pub(crate) fn connect(
        &mut self,
        core: PeerCore,
        session: &str,
        shard: usize,
        grants: Grants,
    ) -> usize {
        let addr = SocketAddr::from(([127, 0, 0, 1], 20_000 + self.peers.len() as u16));
        let mut rtc = Rtc::builder()
            .set_sctp_max_message_size(1 << 20)
            .set_sctp_max_buffered_amount(1 << 20)
            .clear_codecs()
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        let mut sdp = rtc.sdp_api();
        let channels =
            Channel::ALL.map(|channel| sdp.add_channel_with_config(channel_config(channel)));
        let (offer, pending) = sdp.apply().expect("an offer");
        let peer_id = Id::random();
        let offer = Offer {
            peer_id,
            session: session.into(),
            access: PeerAccess {
                identity: "tester".into(),
                grants,
            },
            sdp: SdpOffer::from_sdp_string(&offer.to_sdp_string()).expect("sdp"),
            connection: opentelemetry::global::tracer("harness").start("peer connection"),
        };
        let answer = self.shards[shard].offer(self.now, offer).expect("accepted");
        let answer = SdpAnswer::from_sdp_string(&answer.answer_sdp).expect("answer");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("applied");
        self.peers.push(TestPeer {
            rtc,
            core,
            addr,
            peer_id,
            events: Vec::new(),
            cut_off: false,
            raw: Vec::new(),
            raw_outbox: VecDeque::new(),
            channels,
        });
        let index = self.peers.len() - 1;
        self.run_until(Duration::from_secs(5), |net| {
            net.peers[index].core.welcome().is_some()
        });
        index
    }

    /// Steps until `done` holds; panics after `limit` of virtual time.
    pub(crate) fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Net) -> bool) {
        let until = self.now + limit;
        while !done(self) {
            assert!(
                self.now < until,
                "not done within {limit:?} of virtual time"
            );
            self.progress();
        }
    }

    /// Steps for `span` of virtual time.
    pub(crate) fn run_for(&mut self, span: Duration) {
        let until = self.now + span;
        while self.now < until {
            self.progress();
        }
    }

    /// One step: every shard and peer handles what is due, datagrams move
    /// both ways, and the clock moves on by [`STEP`].
    pub(crate) fn progress(&mut self) {
        let now = self.now;
        for shard in &mut self.shards {
            shard.handle_timeout(now);
            shard.handle_wake(now);
        }
        for index in 0..self.shards.len() {
            while let Some(transmit) = self.shards[index].poll_transmit() {
                let source = self.shards[index].local_addr();
                let Some(peer) = self
                    .peers
                    .iter_mut()
                    .find(|p| p.addr == transmit.destination && !p.cut_off)
                else {
                    continue;
                };
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: peer.addr,
                        contents: transmit.contents.as_slice().try_into().expect("datagram"),
                    },
                );
                let _ = peer.rtc.handle_input(input);
            }
        }
        for peer in &mut self.peers {
            if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
                continue;
            }
            drive_peer(peer, &mut self.shards, now);
        }
        self.now += STEP;
    }
}

/// Writes what a peer's core wants sent, drains its `Rtc`, hands its
/// datagrams to the shard they are for and its channel data to its core.
fn drive_peer(peer: &mut TestPeer, shards: &mut [RelayCore], now: Instant) {
    while let Some((channel, bytes)) = peer.raw_outbox.pop_front() {
        let id = peer.channels[channel.stream_id() as usize];
        let written = peer
            .rtc
            .channel(id)
            .is_some_and(|mut handle| handle.write(true, &bytes).unwrap_or(false));
        if !written {
            peer.raw_outbox.push_front((channel, bytes));
            break;
        }
    }
    while let Some((channel, bytes)) = peer.core.poll_transmit() {
        let id = peer.channels[channel.stream_id() as usize];
        let written = peer
            .rtc
            .channel(id)
            .is_some_and(|mut handle| handle.write(true, &bytes).unwrap_or(false));
        if !written {
            peer.core.unpoll_transmit(channel, bytes);
            break;
        }
    }
    while let Ok(output) = peer.rtc.poll_output() {
        match output {
            Output::Transmit(transmit) => {
                if peer.cut_off {
                    continue;
                }
                if let Some(shard) = shards
                    .iter_mut()
                    .find(|s| s.local_addr() == transmit.destination)
                {
                    shard.handle_datagram(now, peer.addr, &transmit.contents);
                }
            }
            Output::Event(Event::ChannelData(data)) => {
                if let Some(channel) = Channel::ALL
                    .into_iter()
                    .find(|c| peer.channels[c.stream_id() as usize] == data.id)
                {
                    if matches!(
                        channel,
                        Channel::Receive | Channel::Command | Channel::Presence
                    ) {
                        peer.raw.push((now, channel, data.data.clone()));
                    }
                    peer.core.handle_message(channel, data.data);
                }
            }
            Output::Event(Event::Closed | Event::ChannelClose(_)) => {
                peer.events
                    .push(PeerEvent::Disconnected("closed by the relay".into()));
            }
            Output::Event(_) => {}
            Output::Timeout(_) => break,
        }
    }
    while let Some(event) = peer.core.poll_event() {
        peer.events.push(event);
    }
}

//! Raw str0m, the baseline the benchmarks measure deltamesh against: an
//! offering `Rtc` and an ICE-lite answering one with deltamesh's three v1
//! channels, wired in memory (no sockets), on the caller's thread.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use deltamesh_proto::channel::Channel;
use str0m::change::SdpOffer;
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// A sender and a receiver `Rtc` and the datagrams between them.
pub(crate) struct Pair {
    /// The offering side, which writes on [`Pair::channel`].
    pub(crate) sender: Rtc,
    receiver: Rtc,
    sender_addr: SocketAddr,
    receiver_addr: SocketAddr,
    /// The sender's `send` channel.
    pub(crate) channel: ChannelId,
    to_receiver: VecDeque<Vec<u8>>,
    to_sender: VecDeque<Vec<u8>>,
    /// Messages received on either side.
    pub(crate) received_messages: u64,
    /// Bytes of those messages.
    pub(crate) received_bytes: usize,
}

impl Pair {
    /// A negotiated pair; `index` keeps the addresses of several apart.
    pub(crate) fn new(index: u8) -> Pair {
        let now = Instant::now();
        let mut sender = Rtc::builder().clear_codecs().build(now);
        let mut receiver = RtcConfig::new()
            .set_ice_lite(true)
            .clear_codecs()
            .build(now);
        let sender_addr = SocketAddr::from((Ipv4Addr::new(10, 0, 1, index), 5000));
        let receiver_addr = SocketAddr::from((Ipv4Addr::new(10, 0, 2, index), 6000));
        sender.add_local_candidate(Candidate::host(sender_addr, "udp").expect("candidate"));
        receiver.add_local_candidate(Candidate::host(receiver_addr, "udp").expect("candidate"));
        let config = |c: Channel| ChannelConfig {
            label: c.label().into(),
            negotiated: Some(c.stream_id()),
            ..ChannelConfig::default()
        };
        let mut sdp = sender.sdp_api();
        let channels = Channel::V1.map(|c| sdp.add_channel_with_config(config(c)));
        let (offer, pending) = sdp.apply().expect("offer");
        for c in Channel::V1 {
            receiver.direct_api().create_data_channel(config(c));
        }
        let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).expect("offer parses");
        let answer = receiver.sdp_api().accept_offer(offer).expect("answer");
        sender
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accepted");
        Pair {
            sender,
            receiver,
            sender_addr,
            receiver_addr,
            channel: channels[Channel::Send.stream_id() as usize],
            to_receiver: VecDeque::new(),
            to_sender: VecDeque::new(),
            received_messages: 0,
            received_bytes: 0,
        }
    }

    /// Moves datagrams both ways until none are left; returns the earlier
    /// of the two deadlines.
    pub(crate) fn exchange(&mut self) -> Instant {
        let mut next = self.drain_sender().min(self.drain_receiver());
        while !self.to_receiver.is_empty() || !self.to_sender.is_empty() {
            while let Some(datagram) = self.to_receiver.pop_front() {
                deliver(
                    &mut self.receiver,
                    &datagram,
                    self.sender_addr,
                    self.receiver_addr,
                );
                next = next.min(self.drain_receiver());
            }
            while let Some(datagram) = self.to_sender.pop_front() {
                deliver(
                    &mut self.sender,
                    &datagram,
                    self.receiver_addr,
                    self.sender_addr,
                );
                next = next.min(self.drain_sender());
            }
        }
        next
    }

    /// Lets both sides handle their timers at `now`.
    pub(crate) fn timeout(&mut self, now: Instant) {
        self.sender
            .handle_input(Input::Timeout(now))
            .expect("timeout");
        self.receiver
            .handle_input(Input::Timeout(now))
            .expect("timeout");
    }

    fn drain_sender(&mut self) -> Instant {
        let (rtc, out) = (&mut self.sender, &mut self.to_receiver);
        drain(
            rtc,
            out,
            &mut self.received_messages,
            &mut self.received_bytes,
        )
    }

    fn drain_receiver(&mut self) -> Instant {
        let (rtc, out) = (&mut self.receiver, &mut self.to_sender);
        drain(
            rtc,
            out,
            &mut self.received_messages,
            &mut self.received_bytes,
        )
    }
}

/// Drains `rtc`'s output (str0m requires it after every input): datagrams
/// go to `out`, received channel messages are counted. Returns its deadline.
fn drain(
    rtc: &mut Rtc,
    out: &mut VecDeque<Vec<u8>>,
    messages: &mut u64,
    bytes: &mut usize,
) -> Instant {
    loop {
        match rtc.poll_output().expect("poll") {
            Output::Transmit(t) => out.push_back(t.contents.to_vec()),
            Output::Event(Event::ChannelData(data)) => {
                *messages += 1;
                *bytes += data.data.len();
            }
            Output::Event(_) => {}
            Output::Timeout(at) => return at,
        }
    }
}

fn deliver(rtc: &mut Rtc, datagram: &[u8], source: SocketAddr, destination: SocketAddr) {
    let input = Input::Receive(
        Instant::now(),
        Receive {
            proto: Protocol::Udp,
            source,
            destination,
            contents: datagram.try_into().expect("datagram"),
        },
    );
    rtc.handle_input(input).expect("input");
}

//! What carries a peer's channels: WebRTC data channels (an `Rtc` and
//! str0m's channel ids) or one WebSocket (PROTOCOL §11), whose messages
//! are the channel id byte and the message that channel would carry.
//!
//! Everything above the link (commands, the delta path, delivery,
//! presence, direct messages) writes through [`Link::write`] and measures
//! back-pressure with [`Link::in_flight`], so both lanes keep one code
//! path and one set of rules: a socket's bounded outbound queue counts its
//! bytes until the socket's driver has written them, as str0m counts a
//! channel's buffered amount until SCTP has them acknowledged.

use std::collections::VecDeque;

use deltamesh_proto::channel::Channel;
use str0m::Rtc;
use str0m::channel::ChannelId;

use crate::ice_restart::RestartOffer;

/// The transport under one peer connection.
pub(crate) enum Link {
    /// WebRTC: the connection's state machine and its channels by stream id.
    WebRtc {
        /// Its WebRTC state machine.
        rtc: Box<Rtc>,
        /// Its channels, indexed by stream id.
        channels: [Option<ChannelId>; 4],
        /// The peer's offer, renegotiated on an ICE restart.
        offer: RestartOffer,
    },
    /// A WebSocket (PROTOCOL §11).
    Socket(SocketLink),
}

/// How a write went.
pub(crate) enum Write {
    /// Taken.
    Done,
    /// No room now: flush again when the link says it has room.
    Full,
    /// The channel or socket is gone.
    Closed,
}

impl Link {
    /// A WebRTC link over `rtc` with these channels, made from `offer`.
    pub(crate) fn webrtc(rtc: Rtc, channels: [ChannelId; 4], offer: RestartOffer) -> Self {
        Link::WebRtc {
            rtc: Box::new(rtc),
            channels: channels.map(Some),
            offer,
        }
    }

    /// The `Rtc`, for a WebRTC link.
    pub(crate) fn rtc(&mut self) -> Option<&mut Rtc> {
        match self {
            Link::WebRtc { rtc, .. } => Some(rtc),
            Link::Socket(_) => None,
        }
    }

    /// The `Rtc` and the offer it accepted, for a WebRTC link.
    pub(crate) fn rtc_and_offer(&mut self) -> Option<(&mut Rtc, &RestartOffer)> {
        match self {
            Link::WebRtc { rtc, offer, .. } => Some((rtc, offer)),
            Link::Socket(_) => None,
        }
    }

    /// The socket, for a WebSocket link.
    pub(crate) fn socket(&mut self) -> Option<&mut SocketLink> {
        match self {
            Link::Socket(socket) => Some(socket),
            Link::WebRtc { .. } => None,
        }
    }

    /// The deltamesh channel str0m's `id` is, on a WebRTC link.
    pub(crate) fn channel_of(&self, id: ChannelId) -> Option<Channel> {
        match self {
            Link::WebRtc { channels, .. } => Channel::ALL
                .into_iter()
                .find(|c| channels[c.stream_id() as usize] == Some(id)),
            Link::Socket(_) => None,
        }
    }

    /// Writes one message on `channel`.
    pub(crate) fn write(&mut self, channel: Channel, bytes: &[u8]) -> Write {
        match self {
            Link::WebRtc { rtc, channels, .. } => {
                let id = channels[channel.stream_id() as usize];
                let Some(mut handle) = id.and_then(|id| rtc.channel(id)) else {
                    return Write::Closed;
                };
                match handle.write(true, bytes) {
                    Ok(true) => Write::Done,
                    Ok(false) => Write::Full,
                    Err(_) => Write::Closed,
                }
            }
            Link::Socket(socket) => socket.write(channel, bytes),
        }
    }

    /// Bytes written to the link and not yet taken by the other side
    /// (acknowledged by SCTP, or written to the socket).
    pub(crate) fn in_flight(&mut self) -> usize {
        match self {
            Link::WebRtc { rtc, channels, .. } => channels
                .iter()
                .flatten()
                .filter_map(|&id| rtc.channel(id).map(|mut c| c.buffered_amount()))
                .sum(),
            Link::Socket(socket) => socket.buffered,
        }
    }
}

/// One WebSocket's side of a peer: the messages written and not yet taken
/// by the socket's driver, and the bytes the driver has not yet written.
pub(crate) struct SocketLink {
    /// Whether the socket has arrived (the ticket was redeemed).
    attached: bool,
    /// Messages for the driver, each the channel id byte and the message.
    outbound: VecDeque<Vec<u8>>,
    /// Bytes written and not yet reported written by the driver.
    buffered: usize,
    /// Most bytes held: a write that would go past it is `Full`.
    capacity: usize,
    /// At or below this after being above, the peer flushes again.
    low_water: usize,
    /// The close code the socket gets, when not the normal one.
    pub(crate) close_code: Option<u16>,
}

impl SocketLink {
    /// A link still waiting for its socket, holding at most `capacity`
    /// bytes and flushing again at `low_water`.
    pub(crate) fn new(capacity: usize, low_water: usize) -> Self {
        SocketLink {
            attached: false,
            outbound: VecDeque::new(),
            buffered: 0,
            capacity,
            low_water,
            close_code: None,
        }
    }

    /// Whether the socket has arrived.
    pub(crate) fn is_attached(&self) -> bool {
        self.attached
    }

    /// The socket arrived.
    pub(crate) fn attach(&mut self) {
        self.attached = true;
    }

    fn write(&mut self, channel: Channel, bytes: &[u8]) -> Write {
        if !self.attached {
            return Write::Closed;
        }
        if self.buffered + bytes.len() > self.capacity {
            return Write::Full;
        }
        let mut message = Vec::with_capacity(bytes.len() + 1);
        message.push(channel.stream_id() as u8);
        message.extend_from_slice(bytes);
        self.buffered += bytes.len();
        self.outbound.push_back(message);
        Write::Done
    }

    /// The next message for the driver to write, in order.
    pub(crate) fn take_outbound(&mut self) -> Option<Vec<u8>> {
        self.outbound.pop_front()
    }

    /// The driver wrote a message of `len` bytes (its id byte included);
    /// true when that brought the buffered bytes down to the low-water
    /// mark, so the peer should write again.
    pub(crate) fn written(&mut self, len: usize) -> bool {
        let before = self.buffered;
        self.buffered = self.buffered.saturating_sub(len.saturating_sub(1));
        before > self.low_water && self.buffered <= self.low_water
    }
}

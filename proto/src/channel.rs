//! The pre-negotiated data channels every connection carries (PROTOCOL §2,
//! and §8 for `presence`).

/// A deltamesh data channel, by its negotiated SCTP stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// id 0, both ways: one protobuf `Command` per message.
    Command,
    /// id 1, peer to relay: delta frames, fragments or batches.
    Send,
    /// id 2, relay to peer: relayed frames, fragments or batches.
    Receive,
    /// id 3, both ways, unordered and never retransmitted: presence states
    /// (v1.1; used only with the `presence` option in force).
    Presence,
}

impl Channel {
    /// All channels, in stream-id order.
    pub const ALL: [Channel; 4] = [
        Channel::Command,
        Channel::Send,
        Channel::Receive,
        Channel::Presence,
    ];

    /// The channels of v1: a connection is welcomed once these are open.
    pub const V1: [Channel; 3] = [Channel::Command, Channel::Send, Channel::Receive];

    /// The negotiated SCTP stream id.
    pub fn stream_id(self) -> u16 {
        match self {
            Channel::Command => 0,
            Channel::Send => 1,
            Channel::Receive => 2,
            Channel::Presence => 3,
        }
    }

    /// The channel label.
    pub fn label(self) -> &'static str {
        match self {
            Channel::Command => "command",
            Channel::Send => "send",
            Channel::Receive => "receive",
            Channel::Presence => "presence",
        }
    }

    /// Whether messages arrive in the order sent.
    pub fn ordered(self) -> bool {
        self != Channel::Presence
    }

    /// How often a lost message is sent again: `None` for reliable
    /// channels, `Some(0)` for presence (a lost state is replaced by the
    /// next one).
    pub fn max_retransmits(self) -> Option<u16> {
        (self == Channel::Presence).then_some(0)
    }

    /// The channel with this label, if it is one of ours.
    pub fn from_label(label: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.label() == label)
    }

    /// The channel with this stream id, if it is one of ours.
    pub fn from_stream_id(id: u16) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.stream_id() == id)
    }
}

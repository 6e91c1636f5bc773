//! The three pre-negotiated data channels every connection carries (PROTOCOL §2).

/// A deltamesh data channel, by its negotiated SCTP stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// id 0, both ways: one protobuf `Command` per message.
    Command,
    /// id 1, peer to relay: one delta frame per message.
    Send,
    /// id 2, relay to peer: one relayed frame per message.
    Receive,
}

impl Channel {
    /// All channels, in stream-id order.
    pub const ALL: [Channel; 3] = [Channel::Command, Channel::Send, Channel::Receive];

    /// The negotiated SCTP stream id.
    pub fn stream_id(self) -> u16 {
        match self {
            Channel::Command => 0,
            Channel::Send => 1,
            Channel::Receive => 2,
        }
    }

    /// The channel label.
    pub fn label(self) -> &'static str {
        match self {
            Channel::Command => "command",
            Channel::Send => "send",
            Channel::Receive => "receive",
        }
    }

    /// The channel with this label, if it is one of ours.
    pub fn from_label(label: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.label() == label)
    }
}

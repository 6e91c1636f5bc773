//! What the peer wants to write, per channel, and in which order.
//!
//! `command` messages go first, then the latest presence state, then the
//! `send` channel: so commands and presence pass between the fragments of
//! a large delta (PROTOCOL §6) instead of waiting behind all of them. On
//! `send`, frames are referred to by `client_seq` and read from the
//! unacknowledged frames when written: a large frame is cut into fragments
//! one at a time (never copied whole into the queue), and with `batch` in
//! force consecutive small frames are packed into one message (§7).

use std::collections::{BTreeMap, VecDeque};

use deltamesh_proto::channel::Channel;
use deltamesh_proto::fragment::{FRAGMENT_HEADER_LEN, FragmentHeader};

/// One entry of the `send` queue.
#[derive(Debug)]
enum Outgoing {
    /// The frame `client_seq`, whole (or packed with the next ones).
    Frame(u64),
    /// The frame `client_seq` as fragments, from `offset` on.
    Fragments { client_seq: u64, offset: usize },
    /// A message as it is (put back by the driver, or raw).
    Bytes(Vec<u8>),
}

/// How `send` messages are cut and packed, from `Welcome` and the options
/// in force.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shaping {
    /// Bytes of frame per fragment.
    pub(super) fragment_body: usize,
    /// With `batch` in force: the longest message of packed frames.
    pub(super) batch_limit: Option<usize>,
}

/// The messages waiting to be written.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Commands, and raw messages for `receive` (tools and tests), with
    /// their channel.
    commands: VecDeque<(Channel, Vec<u8>)>,
    /// The latest presence state not yet written: only the newest matters.
    presence: Option<Vec<u8>>,
    /// Presence messages put back by the driver (written before `presence`).
    presence_back: Option<Vec<u8>>,
    sends: VecDeque<Outgoing>,
}

impl Outbox {
    /// Queues a command message.
    pub(super) fn push_command(&mut self, bytes: Vec<u8>) {
        self.commands.push_back((Channel::Command, bytes));
    }

    /// Queues the frame `client_seq`, whole or in fragments.
    pub(super) fn push_frame(&mut self, client_seq: u64, fragmented: bool) {
        self.sends.push_back(if fragmented {
            Outgoing::Fragments {
                client_seq,
                offset: 0,
            }
        } else {
            Outgoing::Frame(client_seq)
        });
    }

    /// Replaces the presence state waiting to be written.
    pub(super) fn set_presence(&mut self, state: Vec<u8>) {
        self.presence_back = None;
        self.presence = Some(state);
    }

    /// Whether a presence state waits.
    pub(super) fn has_presence(&self) -> bool {
        self.presence.is_some() || self.presence_back.is_some()
    }

    /// Puts back a message the driver could not write yet.
    pub(super) fn unpoll(&mut self, channel: Channel, bytes: Vec<u8>) {
        match channel {
            Channel::Command | Channel::Receive => self.commands.push_front((channel, bytes)),
            Channel::Send => self.sends.push_front(Outgoing::Bytes(bytes)),
            // A newer state waiting supersedes the one put back.
            Channel::Presence if self.presence.is_none() => self.presence_back = Some(bytes),
            Channel::Presence => {}
        }
    }

    /// Whether anything waits (presence only when it may be sent).
    pub(super) fn is_empty(&self, presence_allowed: bool) -> bool {
        self.commands.is_empty()
            && self.sends.is_empty()
            && !(presence_allowed && self.has_presence())
    }

    /// Forgets everything (the connection is gone).
    pub(super) fn clear(&mut self) {
        *self = Outbox::default();
    }

    /// The next message to write. `frames` are the unacknowledged frames
    /// by client_seq; an entry whose frame is gone (acked or rejected
    /// meanwhile) is skipped.
    pub(super) fn poll(
        &mut self,
        frames: &BTreeMap<u64, Vec<u8>>,
        shaping: Shaping,
        presence_allowed: bool,
    ) -> Option<(Channel, Vec<u8>)> {
        if let Some(message) = self.commands.pop_front() {
            return Some(message);
        }
        if presence_allowed
            && let Some(state) = self.presence_back.take().or_else(|| self.presence.take())
        {
            return Some((Channel::Presence, state));
        }
        loop {
            match self.sends.pop_front()? {
                Outgoing::Bytes(bytes) => return Some((Channel::Send, bytes)),
                Outgoing::Frame(client_seq) => {
                    let Some(frame) = frames.get(&client_seq) else {
                        continue;
                    };
                    return Some((Channel::Send, self.pack(frame.clone(), frames, shaping)));
                }
                Outgoing::Fragments { client_seq, offset } => {
                    let Some(frame) = frames.get(&client_seq) else {
                        continue;
                    };
                    let end = (offset + shaping.fragment_body).min(frame.len());
                    let mut message = Vec::with_capacity(FRAGMENT_HEADER_LEN + end - offset);
                    FragmentHeader {
                        total_len: u32::try_from(frame.len()).expect("a frame under 4 GiB"),
                        offset: u32::try_from(offset).expect("a frame under 4 GiB"),
                    }
                    .encode_into(&mut message);
                    message.extend_from_slice(&frame[offset..end]);
                    if end < frame.len() {
                        self.sends.push_front(Outgoing::Fragments {
                            client_seq,
                            offset: end,
                        });
                    }
                    return Some((Channel::Send, message));
                }
            }
        }
    }

    /// With `batch` in force, appends the whole frames queued next while
    /// the message stays within the batch limit.
    fn pack(
        &mut self,
        mut message: Vec<u8>,
        frames: &BTreeMap<u64, Vec<u8>>,
        shaping: Shaping,
    ) -> Vec<u8> {
        let Some(limit) = shaping.batch_limit else {
            return message;
        };
        while let Some(Outgoing::Frame(next)) = self.sends.front() {
            match frames.get(next) {
                Some(frame) if message.len() + frame.len() <= limit => {
                    message.extend_from_slice(frame);
                    self.sends.pop_front();
                }
                Some(_) => break,
                None => {
                    self.sends.pop_front();
                }
            }
        }
        message
    }
}

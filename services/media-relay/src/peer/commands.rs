//! The command channel of one connection: options, resume, membership
//! news and drain; `PeerSignal`s go to `direct`.

use std::collections::HashSet;
use std::time::Instant;

use deltamesh_proto::Id;
use deltamesh_proto::command;
use deltamesh_proto::pb::{self, command::Body};

use super::Peer;
use crate::shared::Shared;

impl Peer {
    pub(super) fn on_command(&mut self, bytes: &[u8], shared: &Shared, now: Instant) {
        let body = match command::decode(bytes) {
            Ok(body) => body,
            Err(error) => {
                return self.send_command(
                    Body::Error(pb::Error {
                        code: pb::ErrorCode::MalformedCommand.into(),
                        detail: error.to_string(),
                    }),
                    shared,
                );
            }
        };
        match body {
            Body::Ping(ping) => {
                self.send_command(Body::Pong(pb::Pong { nonce: ping.nonce }), shared)
            }
            Body::Pong(_) => {}
            Body::Options(options) => self.set_options(options, shared),
            Body::Resume(resume) => self.resume(resume, shared, now),
            Body::Signal(signal) => self.on_signal(signal, shared),
            other => self.send_command(
                Body::Error(pb::Error {
                    code: pb::ErrorCode::UnexpectedCommand.into(),
                    detail: format!("a peer may not send {}", body_name(&other)),
                }),
                shared,
            ),
        }
    }

    /// Puts the peer's options in force, whole, and answers with what is
    /// now in force (PROTOCOL §5).
    fn set_options(&mut self, asked: pb::Options, shared: &Shared) {
        self.echo = asked.echo;
        self.batch = asked.batch;
        let presence_came = self.set_presence(asked.presence);
        let in_force = pb::Options {
            echo: self.echo,
            batch: self.batch,
            presence: self.presence.on,
        };
        self.send_command(Body::Options(in_force), shared);
        if presence_came {
            self.sync_presence(shared);
        }
    }

    fn resume(&mut self, resume: pb::Resume, shared: &Shared, now: Instant) {
        let mut continued = false;
        if !resume.previous_peer_id.is_empty() {
            let claimed = Id::from_slice(&resume.previous_peer_id)
                .ok()
                .and_then(|previous| {
                    let last =
                        shared
                            .log
                            .claim_origin(&self.session, previous, &resume.resume_token)?;
                    Some((previous, last))
                });
            match claimed {
                Some((previous, last_client_seq)) => {
                    // The connection that held the origin may linger until
                    // it times out; this one replaces it now.
                    if let Some(old) = shared.directory.holder_of(&self.session, previous)
                        && old.peer_id != self.id
                    {
                        shared.close_peer(
                            old.shard,
                            old.peer_id,
                            "replaced by a resumed connection",
                        );
                    }
                    shared
                        .directory
                        .set_origin(&self.session, self.id, previous);
                    self.origin = previous;
                    self.next_client_seq = last_client_seq + 1;
                    continued = true;
                }
                None => self.send_command(
                    Body::Error(pb::Error {
                        code: pb::ErrorCode::ResumeRefused.into(),
                        detail: "unknown previous connection or wrong resume token; \
                                 sending as a new origin"
                            .into(),
                    }),
                    shared,
                ),
            }
        }
        let head = shared.log.head(&self.session);
        self.cursor = resume.last_seq.min(head) + 1;
        self.best_lag = head - resume.last_seq.min(head);
        self.timeline.resumed(self.cursor, continued);
        tracing::info!(peer = %self.id, from = self.cursor, continued, "peer resumes");
        self.send_command(
            Body::Resumed(pb::Resumed {
                from_seq: self.cursor,
                continued,
                next_client_seq: self.next_client_seq,
            }),
            shared,
        );
        self.flush(shared, now);
    }

    /// Tells the peer this relay is going away.
    pub(crate) fn drain(
        &mut self,
        reconnect_after: std::time::Duration,
        reason: &str,
        shared: &Shared,
    ) {
        self.send_command(
            Body::Drain(pb::Drain {
                reconnect_after_ms: u32::try_from(reconnect_after.as_millis()).unwrap_or(u32::MAX),
                reason: reason.to_owned(),
            }),
            shared,
        );
    }

    /// Tells the peer who joined and left since it last heard.
    pub(crate) fn sync_members(&mut self, shared: &Shared, scratch: &mut HashSet<Id>) {
        if !self.welcomed {
            return;
        }
        shared.directory.connected(&self.session, scratch);
        scratch.remove(&self.id);
        let left: Vec<Id> = self
            .known_members
            .iter()
            .filter(|m| !scratch.contains(m))
            .copied()
            .collect();
        for peer in left {
            self.known_members.remove(&peer);
            self.presence.forget(peer);
            self.send_command(
                Body::PeerLeft(pb::PeerLeft {
                    peer_id: peer.0.to_vec(),
                    reason: String::new(),
                }),
                shared,
            );
        }
        let mut joined = false;
        for &peer in scratch.iter() {
            if self.known_members.insert(peer) {
                joined = true;
                self.send_command(
                    Body::PeerJoined(pb::PeerJoined {
                        peer_id: peer.0.to_vec(),
                    }),
                    shared,
                );
            }
        }
        if joined {
            // A peer's state waits for its PeerJoined.
            self.sync_presence(shared);
        }
    }
}

fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Welcome(_) => "Welcome",
        Body::Ack(_) => "Ack",
        Body::Reject(_) => "Reject",
        Body::PeerJoined(_) => "PeerJoined",
        Body::PeerLeft(_) => "PeerLeft",
        Body::Ping(_) => "Ping",
        Body::Pong(_) => "Pong",
        Body::Resume(_) => "Resume",
        Body::Signal(_) => "PeerSignal",
        Body::Drain(_) => "Drain",
        Body::Error(_) => "Error",
        Body::Options(_) => "Options",
        Body::SlowConsumer(_) => "SlowConsumer",
        Body::Resumed(_) => "Resumed",
        Body::Acks(_) => "Acks",
    }
}

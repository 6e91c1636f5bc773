//! Names shared by the services of a deployment over NATS: subjects, streams,
//! key-value buckets and keys, and the internal protobuf messages (registry
//! gRPC, relay control requests). Clients never see any of it.
//!
//! Session names (`[A-Za-z0-9._-]`) become one NATS token by writing `.` as
//! `=`, which no session name contains: the mapping is one-to-one, so two
//! sessions never share a stream, a subject or a key.

use crate::{Grants, Id};

/// Internal protobuf types: the registry's gRPC API and relay control.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/deltamesh.fleet.v1.rs"));
}

/// Key-value bucket of live relays (key: [`relay_key`], value: `RelayInfo`).
pub const RELAYS_BUCKET: &str = "dm_relays";
/// Key-value bucket of peer connections (key: [`peer_key`], value: `PeerRecord`).
pub const PEERS_BUCKET: &str = "dm_peers";
/// NATS header naming the peer a delta is from (its origin id).
pub const ORIGIN_HEADER: &str = "Dm-Origin";

/// The session name as one NATS token.
pub fn session_token(session: &str) -> String {
    session.replace('.', "=")
}

/// The session name back from [`session_token`].
pub fn session_from_token(token: &str) -> String {
    token.replace('=', ".")
}

/// The JetStream stream holding one session's deltas; its sequence is the
/// session's `seq`.
pub fn deltas_stream(session: &str) -> String {
    format!("DM_DELTAS_{}", session_token(session))
}

/// The subject a session's deltas are published on.
pub fn deltas_subject(session: &str) -> String {
    format!("dm.deltas.{}", session_token(session))
}

/// The JetStream message id of a delta: its origin and client_seq, so a
/// resent frame is stored once.
pub fn delta_msg_id(origin: Id, client_seq: u64) -> String {
    format!("{origin}:{client_seq}")
}

/// The subject a relay answers control requests (`RelayRequest`) on.
pub fn relay_control_subject(relay: Id) -> String {
    format!("dm.relay.{relay}.control")
}

/// A relay's key in [`RELAYS_BUCKET`].
pub fn relay_key(relay: Id) -> String {
    relay.to_string()
}

/// A peer's key in [`PEERS_BUCKET`].
pub fn peer_key(session: &str, peer: Id) -> String {
    format!("{}.{peer}", session_token(session))
}

/// The key filter matching every peer of a session in [`PEERS_BUCKET`].
pub fn session_peers_filter(session: &str) -> String {
    format!("{}.*", session_token(session))
}

impl From<Grants> for pb::Grants {
    fn from(grants: Grants) -> Self {
        pb::Grants {
            publish: grants.publish,
            subscribe: grants.subscribe,
            signal: grants.signal,
        }
    }
}

impl From<pb::Grants> for Grants {
    fn from(grants: pb::Grants) -> Self {
        Grants {
            publish: grants.publish,
            subscribe: grants.subscribe,
            signal: grants.signal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_are_one_to_one_and_one_token() {
        for session in ["a", "a.b", "a=b", "Doc-1.v2_x", "..."] {
            if crate::session::is_valid_session(session) {
                let token = session_token(session);
                assert!(!token.contains('.'), "{token}");
                assert_eq!(session_from_token(&token), session);
            }
        }
        assert_ne!(deltas_stream("a.b"), deltas_stream("a_b"));
        assert_eq!(
            peer_key("a.b", Id([0; 16])),
            "a=b.00000000-0000-0000-0000-000000000000"
        );
    }
}

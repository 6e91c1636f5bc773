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

/// The JetStream stream holding the parts of large deltas of every
/// session (one stream, so large deltas add no stream per session).
pub const DELTA_PARTS_STREAM: &str = "DM_DELTA_PARTS";
/// NATS header on a large delta's message in its session's stream: the
/// [`DELTA_PARTS_STREAM`] sequences of its parts, in order, comma separated.
pub const PARTS_HEADER: &str = "Dm-Parts";

/// The subjects of [`DELTA_PARTS_STREAM`].
pub fn delta_parts_subjects() -> String {
    "dm.parts.>".into()
}

/// The subject the parts of one large delta are published on.
pub fn delta_parts_subject(session: &str, origin: Id, client_seq: u64) -> String {
    format!("dm.parts.{}.{origin}.{client_seq}", session_token(session))
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

/// Why [`registry_endpoint`] refused a registry URL.
#[cfg(feature = "grpc")]
#[derive(Debug, thiserror::Error)]
pub enum RegistryEndpointError {
    /// Not a valid gRPC URL.
    #[error("invalid registry URL {url:?}: {source}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why tonic refused it.
        #[source]
        source: tonic::transport::Error,
    },
    /// TLS with an `http://` URL (tonic would connect in plaintext), or an
    /// `https://` URL without TLS.
    #[error("registry URL {0:?}: use https:// with TLS (the registry's CA) and http:// without")]
    Scheme(String),
    /// The TLS configuration is unusable (e.g. an unreadable CA certificate).
    #[error("registry TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
}

/// The registry's gRPC endpoint at `url`: `https://` verified with `tls`,
/// or plaintext `http://` without it.
#[cfg(feature = "grpc")]
pub fn registry_endpoint(
    url: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, RegistryEndpointError> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned()).map_err(|source| {
        RegistryEndpointError::Url {
            url: url.to_owned(),
            source,
        }
    })?;
    let https = endpoint.uri().scheme_str() == Some("https");
    match tls {
        Some(tls) if https => endpoint.tls_config(tls).map_err(RegistryEndpointError::Tls),
        None if !https => Ok(endpoint),
        _ => Err(RegistryEndpointError::Scheme(url.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "grpc")]
    #[test]
    fn registry_endpoints_use_tls_exactly_for_https() {
        use tonic::transport::ClientTlsConfig;
        let tls = || Some(ClientTlsConfig::new());
        assert!(registry_endpoint("http://127.0.0.1:1", None).is_ok());
        assert!(registry_endpoint("https://127.0.0.1:1", tls()).is_ok());
        for (url, tls) in [("http://127.0.0.1:1", tls()), ("https://127.0.0.1:1", None)] {
            let error = registry_endpoint(url, tls).unwrap_err();
            assert!(matches!(error, RegistryEndpointError::Scheme(_)), "{error}");
        }
        let error = registry_endpoint("not a url", None).unwrap_err();
        assert!(
            matches!(error, RegistryEndpointError::Url { .. }),
            "{error}"
        );
    }

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

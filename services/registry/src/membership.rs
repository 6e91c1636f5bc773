//! Session membership in the peers bucket: relays put and remove the peers
//! they host; the registry lists and watches them.
//!
//! Keys are [`peer_key`] (`<session token>.<peer id>`), values prost-encoded
//! `PeerRecord`s.

use std::collections::HashSet;

use async_nats::jetstream::kv;
use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::{MembershipEvent, PeerRecord};
use deltamesh_proto::fleet::{peer_key, session_peers_filter};
use deltamesh_proto::session::is_valid_session;
use futures_util::{Stream, StreamExt, future};
use prost::Message;

use crate::buckets;

/// Stores `peer` (its session must be valid and its peer id 16 bytes).
pub async fn put_peer(store: &kv::Store, peer: &PeerRecord) -> Result<(), async_nats::Error> {
    let key = checked_key(&peer.session, &peer.peer_id)?;
    store.put(key, peer.encode_to_vec().into()).await?;
    Ok(())
}

/// Removes a peer from its session (a no-op for a peer already gone).
pub async fn remove_peer(
    store: &kv::Store,
    session: &str,
    peer: Id,
) -> Result<(), async_nats::Error> {
    let key = checked_key(session, peer.as_bytes())?;
    store.delete(key).await?;
    Ok(())
}

/// One peer of `session`, if it is there.
pub async fn get_peer(
    store: &kv::Store,
    session: &str,
    peer: Id,
) -> Result<Option<PeerRecord>, async_nats::Error> {
    let key = checked_key(session, peer.as_bytes())?;
    match store.get(key).await? {
        Some(value) => Ok(Some(PeerRecord::decode(value)?)),
        None => Ok(None),
    }
}

/// Every peer of `session`, on every relay, in no particular order.
pub async fn list_peers(
    store: &kv::Store,
    session: &str,
) -> Result<Vec<PeerRecord>, async_nats::Error> {
    check_session(session)?;
    let values = buckets::values(store, &session_peers_filter(session)).await?;
    Ok(values
        .into_iter()
        .filter_map(|(key, value)| decode(&key, &value))
        .collect())
}

/// The peers of `session` now (one event each), then every change as it
/// happens. A removal carries the peer's id and session only; removals of
/// peers this watch never announced are skipped.
pub async fn watch(
    store: &kv::Store,
    session: &str,
) -> Result<
    impl Stream<Item = Result<MembershipEvent, async_nats::Error>> + Send + 'static,
    async_nats::Error,
> {
    check_session(session)?;
    let entries = store
        .watch_with_history(session_peers_filter(session))
        .await?;
    let session = session.to_owned();
    let mut present = HashSet::new();
    Ok(entries.filter_map(move |entry| {
        future::ready(match entry {
            Ok(entry) => event(&session, &mut present, entry).map(Ok),
            Err(error) => Some(Err(error.into())),
        })
    }))
}

/// The event for one watched entry, tracking which peers are `present`.
fn event(session: &str, present: &mut HashSet<Id>, entry: kv::Entry) -> Option<MembershipEvent> {
    let peer_id = entry.key.rsplit('.').next()?.parse::<Id>().ok()?;
    match entry.operation {
        kv::Operation::Put => {
            let peer = decode(&entry.key, &entry.value)?;
            present.insert(peer_id);
            Some(MembershipEvent {
                peer: Some(peer),
                removed: false,
            })
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            present.remove(&peer_id).then(|| MembershipEvent {
                peer: Some(PeerRecord {
                    peer_id: peer_id.as_bytes().to_vec(),
                    session: session.to_owned(),
                    ..Default::default()
                }),
                removed: true,
            })
        }
    }
}

/// Decodes a stored record, skipping (and logging) a corrupt one.
fn decode(key: &str, value: &[u8]) -> Option<PeerRecord> {
    PeerRecord::decode(value)
        .inspect_err(|error| tracing::warn!(key, %error, "skipping a corrupt peer record"))
        .ok()
}

fn check_session(session: &str) -> Result<(), async_nats::Error> {
    if is_valid_session(session) {
        Ok(())
    } else {
        Err(format!(
            "invalid session name {:?}",
            session.chars().take(140).collect::<String>()
        )
        .into())
    }
}

fn checked_key(session: &str, peer_id: &[u8]) -> Result<String, async_nats::Error> {
    check_session(session)?;
    Ok(peer_key(session, Id::from_slice(peer_id)?))
}

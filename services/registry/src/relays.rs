//! Relays in the relays bucket: read, write, and which ones are live.

use std::time::Duration;

use async_nats::jetstream::kv;
use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::RelayInfo;
use deltamesh_proto::fleet::relay_key;
use deltamesh_proto::time::unix_millis;
use prost::Message;

use crate::buckets;

/// Whether `relay` was heard from within `ttl` of `now_ms`.
fn is_live(relay: &RelayInfo, now_ms: u64, ttl: Duration) -> bool {
    now_ms.saturating_sub(relay.heartbeat_at_ms) <= ttl.as_millis() as u64
}

/// Stores `relay` under its id (which the caller has checked).
pub(crate) async fn put(
    store: &kv::Store,
    id: Id,
    relay: &RelayInfo,
) -> Result<(), async_nats::Error> {
    store
        .put(relay_key(id), relay.encode_to_vec().into())
        .await?;
    Ok(())
}

/// Forgets relay `id` (a no-op for one already gone).
pub(crate) async fn remove(store: &kv::Store, id: Id) -> Result<(), async_nats::Error> {
    store.delete(relay_key(id)).await?;
    Ok(())
}

/// The relay `id` if it is live.
pub(crate) async fn get_live(
    store: &kv::Store,
    id: Id,
    ttl: Duration,
) -> Result<Option<RelayInfo>, async_nats::Error> {
    let Some(value) = store.get(relay_key(id)).await? else {
        return Ok(None);
    };
    let relay = RelayInfo::decode(value)?;
    Ok(is_live(&relay, unix_millis(), ttl).then_some(relay))
}

/// Every live relay, in no particular order (corrupt records are skipped).
pub(crate) async fn live(
    store: &kv::Store,
    ttl: Duration,
) -> Result<Vec<RelayInfo>, async_nats::Error> {
    let now = unix_millis();
    let values = buckets::values(store, ">").await?;
    Ok(values
        .into_iter()
        .filter_map(|(key, value)| {
            RelayInfo::decode(value)
                .inspect_err(|error| tracing::warn!(key, %error, "skipping a corrupt relay record"))
                .ok()
        })
        .filter(|relay| is_live(relay, now, ttl))
        .collect())
}

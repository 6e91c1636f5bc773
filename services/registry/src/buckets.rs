//! The registry's two key-value buckets, created or opened with the same
//! configuration by every registry instance and every relay.

use std::time::Duration;

use async_nats::jetstream::context::CreateKeyValueError;
use async_nats::jetstream::{self, kv};
use deltamesh_proto::fleet::{PEERS_BUCKET, RELAYS_BUCKET};
use futures_util::TryStreamExt;
use prost::bytes::Bytes;

/// Creates or opens the bucket of live relays ([`RELAYS_BUCKET`]): one value
/// per relay, kept for `ttl` after its last write, so a relay that stops
/// heartbeating disappears. Every caller must pass the same `ttl` (the one
/// the registry announces on register).
pub async fn relays(
    js: &jetstream::Context,
    ttl: Duration,
) -> Result<kv::Store, CreateKeyValueError> {
    js.create_or_update_key_value(kv::Config {
        bucket: RELAYS_BUCKET.to_owned(),
        description: "deltamesh live relays (RelayInfo), expiring without heartbeats".to_owned(),
        history: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
}

/// Creates or opens the bucket of peer connections ([`PEERS_BUCKET`]): one
/// `PeerRecord` per peer, kept until removed (by its relay or the janitor).
pub async fn peers(js: &jetstream::Context) -> Result<kv::Store, CreateKeyValueError> {
    js.create_or_update_key_value(kv::Config {
        bucket: PEERS_BUCKET.to_owned(),
        description: "deltamesh peer connections (PeerRecord)".to_owned(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
}

/// The current (not deleted) values of the keys matching `key_filter` (NATS
/// wildcards allowed), with their keys, in no particular order.
pub(crate) async fn values(
    store: &kv::Store,
    key_filter: &str,
) -> Result<Vec<(String, Bytes)>, async_nats::Error> {
    let mut subjects = store
        .stream
        .info_with_subjects(format!("{}{key_filter}", store.prefix))
        .await?;
    let mut values = Vec::new();
    while let Some((subject, _)) = subjects.try_next().await? {
        let Some(key) = subject.strip_prefix(&store.prefix) else {
            continue;
        };
        // Deleted keys (and values expired since the listing) read as None.
        if let Some(value) = store.get(key).await? {
            values.push((key.to_owned(), value));
        }
    }
    Ok(values)
}

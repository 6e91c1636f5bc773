//! The janitor: removes the peer records of relays that are gone (lease
//! expired, e.g. killed with SIGKILL), so their peers leave every session and
//! watchers see the removals.
//!
//! It follows the whole peers bucket with a watch (peer key → relay and
//! revision) and, every interval, deletes the records whose relay is not
//! live. Deletes expect the revision it saw, so several registry instances
//! can run it at once, and a peer that moved meanwhile is left alone.

use std::collections::{HashMap, HashSet};

use async_nats::jetstream::kv;
use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::PeerRecord;
use futures_util::StreamExt;
use prost::Message;
use tokio::time::MissedTickBehavior;

use crate::{RegistryConfig, relays};

/// Where each peer record is hosted: key → (relay, revision).
type Homes = HashMap<String, (Id, u64)>;

/// Runs the janitor forever; NATS errors are logged and it starts over.
pub async fn run(relays: kv::Store, peers: kv::Store, config: RegistryConfig) {
    loop {
        if let Err(error) = follow(&relays, &peers, config).await {
            tracing::warn!(%error, "janitor: NATS error, starting over");
        }
        tokio::time::sleep(config.janitor_interval).await;
    }
}

/// Follows the peers bucket and sweeps every interval, until an error.
async fn follow(
    relays: &kv::Store,
    peers: &kv::Store,
    config: RegistryConfig,
) -> Result<(), async_nats::Error> {
    let mut entries = peers.watch_with_history(">").await?;
    let mut homes = Homes::new();
    let mut tick = tokio::time::interval(config.janitor_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            entry = entries.next() => {
                let entry = entry.ok_or("the peers bucket watch ended")??;
                track(&mut homes, entry);
            }
            _ = tick.tick() => sweep(relays, peers, &homes, config).await?,
        }
    }
}

/// Updates `homes` with one watched entry.
fn track(homes: &mut Homes, entry: kv::Entry) {
    let relay = match entry.operation {
        kv::Operation::Put => PeerRecord::decode(entry.value)
            .ok()
            .and_then(|peer| Id::from_slice(&peer.relay_id).ok()),
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    match relay {
        Some(relay) => homes.insert(entry.key, (relay, entry.revision)),
        None => homes.remove(&entry.key),
    };
}

/// Deletes the records in `homes` whose relay is not live.
async fn sweep(
    relays: &kv::Store,
    peers: &kv::Store,
    homes: &Homes,
    config: RegistryConfig,
) -> Result<(), async_nats::Error> {
    let live: HashSet<Vec<u8>> = relays::live(relays, config.relay_ttl)
        .await?
        .into_iter()
        .map(|relay| relay.relay_id)
        .collect();
    for (key, (relay, revision)) in homes {
        if live.contains(relay.as_bytes().as_slice()) {
            continue;
        }
        match peers.delete_expect_revision(key, Some(*revision)).await {
            Ok(()) => tracing::info!(key, %relay, "janitor: removed a peer of a gone relay"),
            // Another instance removed it already, or its relay wrote it again.
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

//! A relay's membership in the fleet: it registers with the registry and
//! heartbeats its load (a relay that stops is gone once its lease expires);
//! it writes its peers' records to the peers bucket as they connect and
//! leave; and it follows the membership of every session it hosts, so its
//! peers hear of peers on other relays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::{self, registry_client::RegistryClient};
use deltamesh_registry::membership;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::sessions::SessionLinks;
use crate::RelayHandle;
use crate::directory::{MemberChange, MemberState};

/// Heartbeat interval until the registry names one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Wait before retrying a failed write or watch.
const RETRY: Duration = Duration::from_millis(250);

/// Registers `relay` and heartbeats its load for as long as it runs.
/// `queue_depth` reports deltas waiting to be made durable. After a lost
/// lease (the registry's janitor then removed its peers' records), it
/// registers again and writes its connected peers' records again.
pub async fn keep_registered(
    relay: RelayHandle,
    mut registry: RegistryClient<Channel>,
    peers: kv::Store,
    queue_depth: impl Fn() -> usize,
) {
    let mut lost_lease = false;
    let mut interval = DEFAULT_HEARTBEAT;
    let mut registered = false;
    let mut cpu = CpuMeter::default();
    loop {
        let load = pb::RelayLoad {
            peers: count(relay.peer_count()),
            sessions: count(relay.session_count()),
            cpu_percent: cpu.sample(),
            queue_depth: count(queue_depth()),
        };
        if registered {
            let heartbeat = pb::HeartbeatRequest {
                relay_id: relay.id().0.to_vec(),
                load: Some(load),
                draining: relay.is_draining(),
            };
            match registry.heartbeat(heartbeat).await {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::NotFound => {
                    tracing::warn!(relay = %relay.id(), "lease expired; registering again");
                    registered = false;
                    lost_lease = true;
                    continue;
                }
                Err(status) => tracing::warn!(relay = %relay.id(), %status, "heartbeat failed"),
            }
        } else {
            match registry
                .register_relay(register_request(&relay, load))
                .await
            {
                Ok(response) => {
                    registered = true;
                    let every = response.into_inner().heartbeat_interval_ms;
                    interval = Duration::from_millis(u64::from(every.max(100)));
                    tracing::info!(relay = %relay.id(), ?interval, "registered");
                    if std::mem::take(&mut lost_lease) {
                        rewrite_members(&relay, &peers).await;
                    }
                }
                Err(status) => tracing::warn!(relay = %relay.id(), %status, "cannot register"),
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Writes the records of `relay`'s connected peers again.
async fn rewrite_members(relay: &RelayHandle, peers: &kv::Store) {
    for (session, member) in relay.all_members() {
        if member.state != MemberState::Connected {
            continue;
        }
        let change = MemberChange {
            session,
            member,
            removed: false,
        };
        if let Err(error) = membership::put_peer(peers, &peer_record(relay.id(), &change)).await {
            tracing::warn!(%error, "cannot write a member's record again");
        }
    }
}

/// What the registry is told of `relay` when it registers.
pub fn register_request(relay: &RelayHandle, load: pb::RelayLoad) -> pb::RegisterRelayRequest {
    pb::RegisterRelayRequest {
        relay: Some(pb::RelayInfo {
            relay_id: relay.id().0.to_vec(),
            udp_addrs: relay.udp_addrs().iter().map(ToString::to_string).collect(),
            capacity: count(relay.capacity()),
            load: Some(load),
            draining: relay.is_draining(),
            public_key: relay.public_key().map(|k| k.to_vec()).unwrap_or_default(),
            heartbeat_at_ms: 0,
        }),
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Process CPU use between samples, from `/proc/self/stat` (0 elsewhere).
#[derive(Default)]
struct CpuMeter {
    last: Option<(Instant, u64)>,
}

impl CpuMeter {
    /// Percent of one core used since the previous sample.
    fn sample(&mut self) -> f32 {
        let Some(ticks) = cpu_ticks() else {
            return 0.0;
        };
        let now = Instant::now();
        let percent = match self.last {
            // Linux reports in USER_HZ, 100 per second.
            Some((at, before)) => {
                let busy = ticks.saturating_sub(before) as f64 / 100.0;
                (busy / now.duration_since(at).as_secs_f64().max(1e-3) * 100.0) as f32
            }
            None => 0.0,
        };
        self.last = Some((now, ticks));
        percent
    }
}

/// User plus system time of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Writes `relay`'s member changes to the peers bucket, in order, and
/// follows the membership of each session while it has local peers (and,
/// through `links`, its presence and direct messages).
pub(crate) async fn publish_members(
    relay: RelayHandle,
    peers: kv::Store,
    mut changes: mpsc::UnboundedReceiver<MemberChange>,
    mut links: SessionLinks,
) {
    let mut follows: HashMap<Arc<str>, JoinHandle<()>> = HashMap::new();
    while let Some(change) = changes.recv().await {
        let record = peer_record(relay.id(), &change);
        let hosted = !relay.members(&change.session).is_empty();
        if hosted {
            // Before the record: a peer announced here is reachable.
            links.update(&change.session, true).await;
        }
        loop {
            let written = if change.removed {
                membership::remove_peer(&peers, &change.session, change.member.peer_id).await
            } else {
                membership::put_peer(&peers, &record).await
            };
            match written {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(peer = %change.member.peer_id, %error, "cannot record a member; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        let hosted = !relay.members(&change.session).is_empty();
        links.update(&change.session, hosted).await;
        if hosted && !follows.contains_key(&change.session) {
            let task = tokio::spawn(follow_members(
                relay.clone(),
                peers.clone(),
                Arc::clone(&change.session),
            ));
            follows.insert(Arc::clone(&change.session), task);
        } else if !hosted && let Some(task) = follows.remove(&change.session) {
            task.abort();
        }
    }
    for task in follows.into_values() {
        task.abort();
    }
}

/// A local member as its record in the peers bucket.
fn peer_record(relay: Id, change: &MemberChange) -> pb::PeerRecord {
    let member = &change.member;
    pb::PeerRecord {
        peer_id: member.peer_id.0.to_vec(),
        session: change.session.to_string(),
        relay_id: relay.0.to_vec(),
        state: match member.state {
            MemberState::Connecting => pb::PeerState::Connecting,
            MemberState::Connected => pb::PeerState::Connected,
        }
        .into(),
        joined_at_ms: deltamesh_proto::time::millis_since_epoch(member.joined_at),
        identity: member.identity.to_string(),
    }
}

/// Tells the relay's directory which peers of `session` are connected on
/// other relays, following the peers bucket (again after any error).
async fn follow_members(relay: RelayHandle, peers: kv::Store, session: Arc<str>) {
    loop {
        match membership::watch(&peers, &session).await {
            Ok(events) => {
                futures_util::pin_mut!(events);
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(event) => event,
                        Err(error) => {
                            tracing::warn!(%session, %error, "membership watch failed");
                            break;
                        }
                    };
                    let Some(peer) = event.peer else { continue };
                    let Ok(peer_id) = Id::from_slice(&peer.peer_id) else {
                        continue;
                    };
                    if peer.relay_id == relay.id().0 {
                        continue;
                    }
                    let connected =
                        !event.removed && peer.state == i32::from(pb::PeerState::Connected);
                    relay.set_remote_member(&session, peer_id, connected);
                }
            }
            Err(error) => tracing::warn!(%session, %error, "cannot follow the session's members"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

//! A relay as one of a fleet, over NATS and the registry: the JetStream log
//! ([`JetStreamLog`]), the control subject signal sends offers to
//! ([`control`]), the relay's membership: registration, heartbeats, peer
//! records and cross-relay membership ([`membership`]), and, per hosted
//! session ([`sessions`]), presence ([`presence`], PROTOCOL §8) and direct
//! messages ([`direct`], §9) over core NATS.
//!
//! Start order: [`open_log`], then [`crate::start`] with that log, then
//! [`join`], which answers control requests before it registers, so a
//! relay is never placed before it can answer.

pub mod control;
mod direct;
pub mod jetstream_log;
pub mod membership;
mod presence;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use deltamesh_proto::fleet::pb::{self, registry_client::RegistryClient};
use deltamesh_proto::fleet::registry_endpoint;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, ClientTlsConfig};

pub use jetstream_log::{JetStreamLog, LogTelemetry, StreamLimits};

use crate::RelayHandle;
use crate::signing::DeltaSigner;
use crate::store::ChunkStore;

/// Key-value bucket of secrets every relay of the fleet shares.
pub const SECRETS_BUCKET: &str = "dm_secrets";
/// The key resume tokens are made with, in [`SECRETS_BUCKET`].
const RESUME_KEY: &str = "resume-token-key";

/// Why a relay could not join the fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// NATS or JetStream refused.
    #[error("NATS: {0}")]
    Nats(String),
    /// The registry's address is unusable.
    #[error("registry address: {0}")]
    Registry(String),
}

fn nats_error(error: impl std::fmt::Display) -> FleetError {
    FleetError::Nats(error.to_string())
}

/// The fleet's shared resume-token key: made by the first relay, read by the others.
pub async fn resume_secret(js: &jetstream::Context) -> Result<Vec<u8>, FleetError> {
    let secrets = js
        .create_key_value(kv::Config {
            bucket: SECRETS_BUCKET.into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            ..kv::Config::default()
        })
        .await
        .map_err(nats_error)?;
    let mut fresh = [0u8; 32];
    aws_lc_rs::rand::fill(&mut fresh).map_err(|_| FleetError::Nats("no randomness".into()))?;
    // Only one `create` wins; everyone then reads the winner's key.
    let _ = secrets.create(RESUME_KEY, fresh.to_vec().into()).await;
    let key = secrets
        .get(RESUME_KEY)
        .await
        .map_err(nats_error)?
        .ok_or_else(|| FleetError::Nats("the resume key vanished".into()))?;
    Ok(key.to_vec())
}

/// The JetStream log for a relay with id `relay_id`, replicating into `store`.
pub async fn open_log(
    nats: &async_nats::Client,
    store: Arc<ChunkStore>,
    relay_id: deltamesh_proto::Id,
    signer: Option<Arc<DeltaSigner>>,
    limits: StreamLimits,
    telemetry: LogTelemetry,
) -> Result<Arc<JetStreamLog>, FleetError> {
    let js = jetstream::new(nats.clone());
    let secret = resume_secret(&js).await?;
    Ok(Arc::new(JetStreamLog::new(
        js, store, relay_id, signer, &secret, limits, telemetry,
    )))
}

/// How long a leaving relay waits for the registry to forget it.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// A relay's fleet tasks; dropping it does not stop them, [`Fleet::leave`] does.
pub struct Fleet {
    relay: RelayHandle,
    registry: RegistryClient<Channel>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Stops answering control requests, heartbeating and publishing
    /// members, and deregisters (best effort: otherwise the lease expires).
    pub async fn leave(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let request = pb::DeregisterRelayRequest {
            relay_id: self.relay.id().0.to_vec(),
        };
        match tokio::time::timeout(DEREGISTER_TIMEOUT, self.registry.deregister_relay(request))
            .await
        {
            Ok(Ok(_)) => tracing::info!(relay = %self.relay.id(), "left the fleet"),
            Ok(Err(status)) => tracing::warn!(%status, "cannot deregister; the lease will expire"),
            Err(_) => tracing::warn!("the registry did not answer; the lease will expire"),
        }
    }
}

/// Joins `relay` (running on `log`) to the fleet: answers its control
/// subject, publishes its members, follows its sessions' membership, and
/// registers with the registry at `registry_url` (then heartbeats). With
/// `registry_tls` the registry is reached over TLS and the URL must be
/// `https://` ([`registry_endpoint`]).
pub async fn join(
    relay: RelayHandle,
    log: Arc<JetStreamLog>,
    nats: async_nats::Client,
    registry_url: &str,
    registry_tls: Option<ClientTlsConfig>,
) -> Result<Fleet, FleetError> {
    let endpoint = registry_endpoint(registry_url, registry_tls)
        .map_err(|e| FleetError::Registry(e.to_string()))?;
    let js = jetstream::new(nats.clone());
    let peers = deltamesh_registry::buckets::peers(&js)
        .await
        .map_err(nats_error)?;
    let changes = relay
        .observe_members()
        .ok_or_else(|| FleetError::Nats("the relay is already in a fleet".into()))?;
    let registry = RegistryClient::new(endpoint.connect_lazy());
    // Subscribed before registering: a placed peer's offer is answered.
    let subscription = nats
        .subscribe(deltamesh_proto::fleet::relay_control_subject(relay.id()))
        .await
        .map_err(nats_error)?;
    let presence_changes = relay
        .shared()
        .presence
        .observe()
        .ok_or_else(|| FleetError::Nats("the relay's presence is already published".into()))?;
    let direct_out =
        relay.shared().direct.to_fleet().ok_or_else(|| {
            FleetError::Nats("the relay's direct messages are already taken".into())
        })?;
    let presence = tokio::spawn(presence::publish(
        relay.clone(),
        nats.clone(),
        presence_changes,
    ));
    let direct = tokio::spawn(direct::publish(nats.clone(), direct_out));
    let links = sessions::SessionLinks::new(relay.clone(), nats.clone());
    let control = tokio::spawn(control::answer(nats, relay.clone(), subscription));
    let members = tokio::spawn(membership::publish_members(
        relay.clone(),
        peers.clone(),
        changes,
        links,
    ));
    let heartbeat = tokio::spawn(membership::keep_registered(
        relay.clone(),
        registry.clone(),
        peers,
        move || log.pending(),
    ));
    Ok(Fleet {
        relay,
        registry,
        tasks: vec![control, members, heartbeat, presence, direct],
    })
}

//! The services of a fleet, each started on its own against NATS: the
//! registry (gRPC), a media relay (JetStream log, control subject,
//! registration) and signal (HTTP, placing peers through the registry).
//! `deltamesh registry|relay|signal` run one each; `deltamesh --nats URL`
//! runs one of each in a single process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deltamesh_registry::RegistryConfig;
use deltamesh_relay::fleet::{self as relay_fleet, Fleet, StreamLimits};
use deltamesh_relay::{ChunkStore, RelayConfig, RelayHandle, RelayMetrics};
use deltamesh_signal::fleet::{FleetNetwork, FleetTimeouts};
use deltamesh_signal::{SignalConfig, SignalMetrics};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::stack::random_uuid_v4;

/// Connects to NATS, retrying until it answers (services may start before
/// the NATS server does); later outages are reconnected by the client.
pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("deltamesh")
        .retry_on_initial_connect()
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// A registry serving gRPC on `listen` until `shutdown`. Returns the bound
/// address and the server task.
pub async fn start_registry(
    nats: async_nats::Client,
    listen: SocketAddr,
    config: RegistryConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the registry to {listen}"))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        deltamesh_registry::serve(nats, config, listener, shutdown).await?;
        Ok(())
    });
    Ok((addr, server))
}

/// A relay in the fleet: its JetStream log, its shards, and its presence
/// (control subject, registration, members).
pub struct FleetRelay {
    /// The running relay.
    pub handle: RelayHandle,
    fleet: Fleet,
}

impl FleetRelay {
    /// Drains the relay: it is marked draining (no new placements, offers
    /// refused), its peers are told to reconnect elsewhere, those still
    /// here after `grace` are closed, and the relay leaves the fleet.
    pub async fn drain(self, grace: Duration) {
        self.handle
            .drain(Duration::from_millis(100), "relay shutting down")
            .await;
        let deadline = tokio::time::Instant::now() + grace;
        while self.handle.peer_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.handle.close_all("relay shutting down").await;
        // Give the heartbeat a moment to report the drain before leaving.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.fleet.leave().await;
    }
}

/// Starts a relay against NATS and registers it with the registry at
/// `registry_url`.
pub async fn start_relay(
    nats: async_nats::Client,
    registry_url: &str,
    mut config: RelayConfig,
    limits: StreamLimits,
    metrics: RelayMetrics,
) -> anyhow::Result<FleetRelay> {
    if config.relay_id == deltamesh_proto::Id::default() {
        config.relay_id = random_uuid_v4();
    }
    let store = Arc::new(ChunkStore::new(config.chunk_size, config.max_chunks));
    let log =
        relay_fleet::open_log(&nats, store, config.relay_id, config.signer.clone(), limits).await?;
    let handle = deltamesh_relay::start(config, log.clone(), metrics).await?;
    let fleet = relay_fleet::join(handle.clone(), log, nats, registry_url).await?;
    Ok(FleetRelay { handle, fleet })
}

/// Signal serving HTTP on `listen`, placing peers through the registry at
/// `registry_url` and reaching relays over `nats`, until `shutdown`.
pub async fn start_signal(
    nats: async_nats::Client,
    registry_url: String,
    listen: SocketAddr,
    config: SignalConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let mut registry = Registry::default();
    let metrics = SignalMetrics::register(&mut registry);
    let network = FleetNetwork::new(nats, registry_url, FleetTimeouts::default())?;
    let router = deltamesh_signal::router(Arc::new(network), config, metrics, Arc::new(registry));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding signal to {listen}"))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(deltamesh_signal::serve(listener, router, shutdown));
    Ok((addr, server))
}

//! The services of a fleet, each started on its own against NATS: the
//! registry (gRPC), a media relay (JetStream log, control subject,
//! registration) and signal (HTTP, placing peers through the registry).
//! `deltamesh registry|relay|signal` run one each; `deltamesh --nats URL`
//! runs one of each in a single process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deltamesh_registry::{RegistryConfig, RegistryMetrics};
use deltamesh_relay::fleet::{
    self as relay_fleet, Fleet, JetStreamLog, LogTelemetry, StreamLimits,
};
use deltamesh_relay::{ChunkStore, RelayConfig, RelayHandle, RelayMetrics};
use deltamesh_signal::fleet::{FleetMetrics, FleetNetwork, FleetTimeouts};
use deltamesh_signal::{SignalConfig, SignalMetrics};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use crate::ops::service_metrics;

/// How a service authenticates to NATS and checks the server's certificate.
/// Without any of it the connection is anonymous (and plaintext, unless the
/// URL is `tls://`): for development only.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NatsSecurity {
    /// A NATS credentials file (user JWT and nkey seed; `nsc generate creds`).
    #[arg(long, env = "NATS_CREDS", conflicts_with = "nats_nkey_seed")]
    pub nats_creds: Option<PathBuf>,
    /// A file holding an nkey seed (`nk -gen user`) to authenticate with.
    #[arg(long, env = "NATS_NKEY_SEED")]
    pub nats_nkey_seed: Option<PathBuf>,
    /// The CA certificate (PEM) the NATS server's certificate must chain
    /// to; TLS is then required.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for NATS servers that verify clients.
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsSecurity {
    /// Whether connecting to `url` authenticates (credentials, nkey or a
    /// client certificate) or verifies the server over TLS.
    pub fn is_secured(&self, url: &str) -> bool {
        self.nats_creds.is_some()
            || self.nats_nkey_seed.is_some()
            || self.nats_tls_ca.is_some()
            || self.nats_tls_cert.is_some()
            || url.starts_with("tls://")
    }

    /// The connect options these settings make. Every file is read now, so
    /// a missing one fails at start rather than on each reconnect.
    async fn options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(path) = &self.nats_creds {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("--nats-creds {}", path.display()))?;
        }
        if let Some(path) = &self.nats_nkey_seed {
            let seed = read_text(path, "--nats-nkey-seed")?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &self.nats_tls_ca {
            read_text(path, "--nats-tls-ca")?;
            options = options
                .add_root_certificates(path.clone())
                .require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            read_text(cert, "--nats-tls-cert")?;
            read_text(key, "--nats-tls-key")?;
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// The contents of the file `flag` names.
pub fn read_text(path: &Path, flag: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag}: reading {}", path.display()))
}

/// Connects to NATS with `security`, retrying until it answers (services
/// may start before the NATS server does); later outages are reconnected
/// by the client.
pub async fn connect_nats(
    url: &str,
    security: &NatsSecurity,
) -> anyhow::Result<async_nats::Client> {
    security
        .options()
        .await?
        .name("deltamesh")
        .retry_on_initial_connect()
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// A registry serving gRPC on `listen` (over TLS with `tls`) and counting
/// into `metrics` until `shutdown`. Returns the bound address and the server
/// task.
pub async fn start_registry(
    nats: async_nats::Client,
    listen: SocketAddr,
    config: RegistryConfig,
    metrics: RegistryMetrics,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the registry to {listen}"))?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        deltamesh_registry::serve(nats, config, metrics, listener, tls, shutdown).await?;
        Ok(())
    });
    Ok((addr, server))
}

/// A relay in the fleet: its JetStream log, its shards, and its fleet tasks
/// (control subject, registration, members).
pub struct FleetRelay {
    /// The running relay.
    pub handle: RelayHandle,
    /// Its JetStream log (see [`JetStreamLog::pending`]).
    pub log: Arc<JetStreamLog>,
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
        self.fleet.leave().await;
    }
}

/// Starts a relay against NATS and registers it with the registry at
/// `registry_url` (over TLS with `registry_tls`). One delta in
/// `trace_delta_every` is traced across relays (0: none).
pub async fn start_relay(
    nats: async_nats::Client,
    registry_url: &str,
    registry_tls: Option<ClientTlsConfig>,
    mut config: RelayConfig,
    limits: StreamLimits,
    metrics: RelayMetrics,
    trace_delta_every: u64,
) -> anyhow::Result<FleetRelay> {
    if config.relay_id == deltamesh_proto::Id::default() {
        config.relay_id = deltamesh_proto::Id::random();
    }
    let store = Arc::new(ChunkStore::new(config.chunk_size, config.max_chunks));
    let telemetry = LogTelemetry {
        publish_seconds: metrics.jetstream_publish_seconds.clone(),
        trace_every: trace_delta_every,
    };
    let log = relay_fleet::open_log(
        &nats,
        store,
        config.relay_id,
        config.signer.clone(),
        limits,
        telemetry,
    )
    .await?;
    let handle = deltamesh_relay::start(config, log.clone(), metrics).await?;
    let fleet = relay_fleet::join(
        handle.clone(),
        log.clone(),
        nats,
        registry_url,
        registry_tls,
    )
    .await?;
    Ok(FleetRelay { handle, log, fleet })
}

/// Signal serving HTTP on `listen`, placing peers through the registry at
/// `registry_url` (over TLS with `registry_tls`) and reaching relays over
/// `nats`, until `shutdown`. Its `/metrics` serves `metrics` with signal's
/// own added, or (`None`) a registry labelled as this signal instance.
pub async fn start_signal(
    nats: async_nats::Client,
    registry_url: &str,
    registry_tls: Option<ClientTlsConfig>,
    listen: SocketAddr,
    config: SignalConfig,
    metrics: Option<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding signal to {listen}"))?;
    let addr = listener.local_addr()?;
    let mut registry = metrics.unwrap_or_else(|| service_metrics("signal", addr.to_string()));
    let metrics = SignalMetrics::register(&mut registry);
    let network = FleetNetwork::new(nats, registry_url, registry_tls, FleetTimeouts::default())?
        .with_metrics(FleetMetrics::register(&mut registry));
    let router = deltamesh_signal::router(Arc::new(network), config, metrics, Arc::new(registry));
    let server = tokio::spawn(deltamesh_signal::serve(listener, router, shutdown));
    Ok((addr, server))
}

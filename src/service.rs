//! Each command's service run to the end: started from its configuration
//! (which [`crate::cli`] builds from the flags), announced on stdout (the
//! start-up lines scripts and tests read: `signal: URL`, `relay: ID ADDRS`
//! …), served until SIGTERM or Ctrl-C, then stopped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use deltamesh_registry::{RegistryConfig, RegistryMetrics};
use deltamesh_relay::fleet::StreamLimits;
use deltamesh_relay::hex;
use deltamesh_relay::{RelayConfig, RelayHandle, RelayMetrics};
use deltamesh_signal::SignalConfig;
use prometheus_client::registry::Registry;
use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use crate::LOG_TARGET;
use crate::fleet::{NatsSecurity, connect_nats, start_registry, start_relay, start_signal};
use crate::ops::{FnGauge, OpsListen, nats_ready, serve_ops, service_metrics};
use crate::stack::{StackConfig, start};

/// One published delta in this many is traced across relays, by default.
pub(crate) const DEFAULT_TRACE_DELTA_EVERY: u64 = 1000;

/// The NATS server a service connects to, and how.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The server's URL.
    pub url: String,
    /// Authentication and TLS.
    pub security: NatsSecurity,
}

impl NatsConfig {
    /// Connects (see [`connect_nats`]).
    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        connect_nats(&self.url, &self.security).await
    }
}

/// Where a fleet service finds NATS and the registry.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The NATS server.
    pub nats: NatsConfig,
    /// The registry's gRPC URL.
    pub registry_url: String,
    /// The registry client's TLS (with an `https://` URL).
    pub registry_tls: Option<ClientTlsConfig>,
}

/// `deltamesh` without a subcommand: the whole stack in this process.
#[derive(Debug)]
pub struct OneProcess {
    /// Where signal listens, and the relay's and signal's configuration.
    pub stack: StackConfig,
    /// Whether signal runs in development mode (its development token is
    /// printed).
    pub dev_mode: bool,
    /// On NATS with a registry of its own, or (`None`) in memory.
    pub nats: Option<OnNats>,
}

/// How the one-process stack runs on NATS.
#[derive(Debug)]
pub struct OnNats {
    /// The NATS server.
    pub nats: NatsConfig,
    /// Where the in-process registry's (plaintext) gRPC server listens.
    pub registry_listen: SocketAddr,
}

impl OneProcess {
    /// Runs the stack until SIGTERM or Ctrl-C: in memory, or on NATS.
    pub async fn run(self) -> anyhow::Result<()> {
        if let Some(nats) = &self.nats {
            return run_on_nats(nats, self.stack, self.dev_mode).await;
        }
        let config = self.stack;
        tracing::info!(target: LOG_TARGET, ?config, "starting");
        let stack = start(config.clone()).await?;
        if self.dev_mode {
            announce_dev_token(&config.signal.dev_token);
        }
        for relay in &stack.relays {
            announce_relay(relay);
        }
        announce(format_args!("signal: {}", stack.signal_url()));
        announce(format_args!("demo: {}/?session=demo", stack.signal_url()));
        shutdown_signal().await?;
        tracing::info!(target: LOG_TARGET, "shutting down");
        stack.shutdown().await?;
        Ok(())
    }
}

/// Registry, relay and signal in this process, coordinating over NATS.
async fn run_on_nats(on: &OnNats, stack: StackConfig, dev_mode: bool) -> anyhow::Result<()> {
    let StackConfig {
        listen,
        relay,
        signal,
    } = stack;
    let nats = on.nats.connect().await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|&s| s).await;
    };
    // Signal's /metrics serves all three services of this process.
    let mut metrics = Registry::default();
    let (registry_metrics, relay_metrics) = (
        RegistryMetrics::register(&mut metrics),
        RelayMetrics::register(&mut metrics),
    );
    let (registry_addr, registry) = start_registry(
        nats.clone(),
        on.registry_listen,
        RegistryConfig::default(),
        registry_metrics,
        None,
        until_stopped(stopped.clone()),
    )
    .await?;
    let registry_url = format!("http://{registry_addr}");
    announce(format_args!("registry: {registry_url}"));
    let fleet_relay = start_relay(
        nats.clone(),
        &registry_url,
        None,
        relay,
        StreamLimits::default(),
        relay_metrics,
        DEFAULT_TRACE_DELTA_EVERY,
    )
    .await?;
    announce_relay(&fleet_relay.handle);
    let dev_token = signal.dev_token.clone();
    let (signal_addr, server) = start_signal(
        nats,
        &registry_url,
        None,
        listen,
        signal,
        Some(metrics),
        until_stopped(stopped),
    )
    .await?;
    if dev_mode {
        announce_dev_token(&dev_token);
    }
    announce(format_args!("signal: http://{signal_addr}"));
    announce(format_args!("demo: http://{signal_addr}/?session=demo"));
    shutdown_signal().await?;
    tracing::info!(target: LOG_TARGET, "shutting down: draining the relay");
    fleet_relay.drain(Duration::from_secs(5)).await;
    let _ = stop.send(true);
    server.await??;
    registry.await??;
    Ok(())
}

/// `deltamesh registry`: the registry service of a fleet.
#[derive(Debug)]
pub struct RegistryService {
    /// The NATS server.
    pub nats: NatsConfig,
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// The registry's timing.
    pub config: RegistryConfig,
    /// The gRPC server's TLS; plaintext without it.
    pub tls: Option<ServerTlsConfig>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub ops_listen: OpsListen,
}

impl RegistryService {
    /// Serves until SIGTERM or Ctrl-C.
    pub async fn run(self) -> anyhow::Result<()> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let nats = self.nats.connect().await?;
        let mut registry = service_metrics("registry", self.listen.to_string());
        let metrics = RegistryMetrics::register(&mut registry);
        let shutdown = async {
            let _ = shutdown_signal().await;
        };
        let (addr, server) = start_registry(
            nats.clone(),
            self.listen,
            self.config,
            metrics,
            self.tls,
            shutdown,
        )
        .await?;
        announce(format_args!("registry: {scheme}://{addr}"));
        serve_and_announce_ops(self.ops_listen, registry, move || nats_ready(&nats)).await?;
        server.await?
    }
}

/// `deltamesh relay`: one media relay of a fleet.
#[derive(Debug)]
pub struct RelayService {
    /// NATS and the registry.
    pub fleet: FleetConfig,
    /// The relay's configuration (its id included).
    pub config: RelayConfig,
    /// How long a draining relay waits for its peers to move.
    pub drain_grace: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub ops_listen: OpsListen,
    /// One published delta in this many is traced across relays (0: none).
    pub trace_delta_every: u64,
}

impl RelayService {
    /// Serves until SIGTERM or Ctrl-C, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        let nats = self.fleet.nats.connect().await?;
        let mut registry = service_metrics("relay", self.config.relay_id.to_string());
        let metrics = RelayMetrics::register(&mut registry);
        let relay = start_relay(
            nats.clone(),
            &self.fleet.registry_url,
            self.fleet.registry_tls,
            self.config,
            StreamLimits::default(),
            metrics,
            self.trace_delta_every,
        )
        .await?;
        announce_relay(&relay.handle);
        let gauges = registry.sub_registry_with_prefix("relay");
        let log = relay.log.clone();
        gauges.register(
            "jetstream_pending",
            "Deltas waiting for JetStream to store them",
            FnGauge(move || i64::try_from(log.pending()).unwrap_or(i64::MAX)),
        );
        let handle = relay.handle.clone();
        gauges.register(
            "draining",
            "1 while the relay drains, else 0",
            FnGauge(move || i64::from(handle.is_draining())),
        );
        let handle = relay.handle.clone();
        let ready = move || {
            if handle.is_draining() {
                return Err("the relay is draining".to_owned());
            }
            nats_ready(&nats)
        };
        serve_and_announce_ops(self.ops_listen, registry, ready).await?;
        shutdown_signal().await?;
        tracing::info!(target: LOG_TARGET, "draining");
        relay.drain(self.drain_grace).await;
        Ok(())
    }
}

/// `deltamesh signal`: one signal instance of a fleet.
#[derive(Debug)]
pub struct SignalService {
    /// NATS and the registry.
    pub fleet: FleetConfig,
    /// Where the HTTP server listens.
    pub listen: SocketAddr,
    /// Signal's configuration.
    pub config: SignalConfig,
    /// Whether it runs in development mode (its development token is
    /// printed).
    pub dev_mode: bool,
}

impl SignalService {
    /// Serves until SIGTERM or Ctrl-C.
    pub async fn run(self) -> anyhow::Result<()> {
        let nats = self.fleet.nats.connect().await?;
        let dev_token = self.config.dev_token.clone();
        let (addr, server) = start_signal(
            nats,
            &self.fleet.registry_url,
            self.fleet.registry_tls,
            self.listen,
            self.config,
            None,
            async {
                let _ = shutdown_signal().await;
            },
        )
        .await?;
        if self.dev_mode {
            announce_dev_token(&dev_token);
        }
        announce(format_args!("signal: http://{addr}"));
        Ok(server.await??)
    }
}

/// Serves a service's `/metrics`, `/healthz` and `/readyz` on `listen`
/// for the rest of the process, and prints `ops: URL`.
async fn serve_and_announce_ops(
    listen: OpsListen,
    metrics: Registry,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let (ops, _) = serve_ops(listen, Arc::new(metrics), ready, std::future::pending()).await?;
    announce(format_args!("ops: http://{ops}"));
    Ok(())
}

/// Warns loudly and prints the development token.
fn announce_dev_token(token: &str) {
    tracing::warn!(
        target: LOG_TARGET,
        "development mode: the token below opens every session. Do not expose this stack."
    );
    announce(format_args!("dev token: {token}"));
}

/// Prints a relay's id, UDP addresses and signing key.
fn announce_relay(relay: &RelayHandle) {
    let addrs: Vec<String> = relay.udp_addrs().iter().map(ToString::to_string).collect();
    announce(format_args!("relay: {} {}", relay.id(), addrs.join(",")));
    if let Some(key) = relay.public_key() {
        announce(format_args!("relay key: {} {}", relay.id(), hex(&key)));
    }
}

/// Prints one line of start-up facts on stdout. A closed stdout (a reader
/// that took what it needed) must not stop the stack, so errors are ignored.
fn announce(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

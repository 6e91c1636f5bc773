//! `cargo run`: the whole deltamesh stack in one process (in-memory, or on
//! NATS with `--nats`); `deltamesh registry|relay|signal` run one service of
//! a fleet each; `deltamesh token` mints a signed token.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use deltamesh::fleet::{
    NatsSecurity, connect_nats, read_text, start_registry, start_relay, start_signal,
};
use deltamesh::ops::{FnGauge, OpsListen, nats_ready, serve_ops, service_metrics};
use deltamesh::ports::PortRange;
use deltamesh::stack::random_uuid_v4;
use deltamesh::telemetry::{LogFormat, Telemetry};
use deltamesh::{StackConfig, start};
use deltamesh_proto::Grants;
use deltamesh_registry::{RegistryConfig, RegistryMetrics};
use deltamesh_relay::RelayMetrics;
use deltamesh_relay::fleet::StreamLimits;
use deltamesh_relay::hex;
use deltamesh_relay::{DeltaSigner, Rate, RelayConfig};
use deltamesh_signal::token::{Claims, TokenSigner, TokenVerifier, unix_now};
use deltamesh_signal::{RateLimit, SignalConfig};
use prometheus_client::registry::Registry;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Runs signal, the registry and one media relay in one process, or one
/// service of a fleet.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// Log lines (on stderr) as text or JSON. Traces are configured by the
    /// standard OTEL_* variables, OTEL_EXPORTER_OTLP_ENDPOINT first.
    #[arg(
        long,
        global = true,
        env = "DELTAMESH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a signed token for one session (for development, tests and
    /// backends that have no JWT library at hand).
    Token(TokenArgs),
    /// Runs the registry service (gRPC) of a fleet.
    Registry(RegistryArgs),
    /// Runs one media relay of a fleet.
    Relay(RelayServiceArgs),
    /// Runs one signal instance (HTTP) of a fleet.
    Signal(SignalServiceArgs),
}

/// How the whole stack runs in one process.
#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    signal: SignalArgs,
    #[command(flatten)]
    relay: RelayArgs,
    /// Run on NATS/JetStream at this URL (registry, relay and signal as in
    /// a fleet, all in this process) instead of in memory.
    #[arg(long, env = "NATS_URL")]
    nats: Option<String>,
    #[command(flatten)]
    nats_security: NatsSecurity,
    /// Where the registry's gRPC server listens with `--nats` (plaintext:
    /// `--production` keeps it on loopback).
    #[arg(long, env = "DELTAMESH_REGISTRY_LISTEN", default_value = "127.0.0.1:0")]
    registry_listen: SocketAddr,
}

/// Where a fleet service finds NATS and the registry.
#[derive(Debug, Args)]
struct FleetArgs {
    /// The NATS server (JetStream enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    nats_security: NatsSecurity,
    /// The registry's gRPC URL (`https://` with `--registry-ca`).
    #[arg(
        long,
        env = "DELTAMESH_REGISTRY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    registry: String,
    /// The CA certificate (PEM) the registry's TLS certificate must chain
    /// to; the registry URL must then be `https://`.
    #[arg(long, env = "DELTAMESH_REGISTRY_CA")]
    registry_ca: Option<PathBuf>,
}

/// `deltamesh registry`.
#[derive(Debug, Args)]
struct RegistryArgs {
    /// The NATS server (JetStream enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[command(flatten)]
    nats_security: NatsSecurity,
    /// Where the gRPC server listens.
    #[arg(
        long,
        env = "DELTAMESH_REGISTRY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    listen: SocketAddr,
    /// How long a relay that stops heartbeating stays placeable.
    #[arg(long, env = "DELTAMESH_RELAY_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    relay_ttl: Duration,
    /// The gRPC server's TLS certificate chain (PEM); plaintext without it.
    #[arg(long, env = "DELTAMESH_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--grpc-tls-cert`.
    #[arg(long, env = "DELTAMESH_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
    /// Refuse to start without NATS security and gRPC TLS.
    #[arg(long, env = "DELTAMESH_PRODUCTION")]
    production: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP):
    /// IP:PORT, or IP:FIRST-LAST for the first free port of a range.
    #[arg(long, env = "DELTAMESH_OPS_LISTEN", default_value = "127.0.0.1:0")]
    ops_listen: OpsListen,
}

/// `deltamesh relay`.
#[derive(Debug, Args)]
struct RelayServiceArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    relay: RelayArgs,
    /// How long a draining relay (SIGTERM) waits for its peers to move
    /// before closing the rest.
    #[arg(long, env = "DELTAMESH_DRAIN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    drain_grace: Duration,
    /// Refuse to start without a signing key, NATS security and registry TLS.
    #[arg(long, env = "DELTAMESH_PRODUCTION")]
    production: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP):
    /// IP:PORT, or IP:FIRST-LAST for the first free port of a range.
    #[arg(long, env = "DELTAMESH_OPS_LISTEN", default_value = "127.0.0.1:0")]
    ops_listen: OpsListen,
    /// With tracing on, one published delta in this many is traced across
    /// relays: a span for its publish and one per relay replicating it
    /// (0: none).
    #[arg(long, env = "DELTAMESH_TRACE_DELTA_EVERY", default_value_t = DEFAULT_TRACE_DELTA_EVERY)]
    trace_delta_every: u64,
}

/// One published delta in this many is traced across relays, by default.
const DEFAULT_TRACE_DELTA_EVERY: u64 = 1000;

/// `deltamesh signal`.
#[derive(Debug, Args)]
struct SignalServiceArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    signal: SignalArgs,
    /// Development mode without token keys (the development token opens
    /// every session). Without it, signal refuses to start keyless.
    #[arg(long, env = "DELTAMESH_DEV")]
    dev: bool,
}

/// Signal's HTTP side.
#[derive(Debug, Args)]
struct SignalArgs {
    /// Address signal's HTTP server binds to.
    #[arg(long, env = "DELTAMESH_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port signal's HTTP server listens on.
    #[arg(long, short, env = "PORT", default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    limits: HttpLimitArgs,
    /// The browser bundle (demo page and wasm) that `scripts/build-web` makes.
    #[arg(long, env = "DELTAMESH_WEB_DIR", default_value = "target/web")]
    web_dir: PathBuf,
}

/// A relay's side.
#[derive(Debug, Args)]
struct RelayArgs {
    /// Address the relay's UDP sockets bind to.
    #[arg(long, env = "DELTAMESH_UDP_BIND", default_value = "127.0.0.1")]
    udp_bind: IpAddr,
    /// Address advertised in the relay's ICE host candidates (defaults to
    /// the bind address; must be concrete when binding 0.0.0.0).
    #[arg(long, env = "DELTAMESH_ADVERTISE_IP")]
    advertise_ip: Option<IpAddr>,
    /// UDP port of the relay: PORT (shard i uses PORT + i; 0 picks free
    /// ports), or FIRST-LAST (each shard takes the first free port of the
    /// range, so relays sharing a host each find theirs).
    #[arg(long, env = "DELTAMESH_UDP_PORT", default_value = "0")]
    udp_port: PortRange,
    /// Relay event-loop shards.
    #[arg(long, env = "DELTAMESH_SHARDS", default_value_t = 1)]
    shards: usize,
    /// Bytes the relay keeps in flight to one peer at most.
    #[arg(long, env = "DELTAMESH_SEND_WINDOW", default_value_t = 16 * 1024)]
    send_window: usize,
    /// An Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm
    /// ed25519`) the relay signs accepted deltas with. Unsigned without it.
    #[arg(long, env = "DELTAMESH_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    #[command(flatten)]
    limits: RelayLimitArgs,
}

/// Who may connect.
#[derive(Debug, Args)]
struct AuthArgs {
    /// An HS256 key for signed tokens, as KEY_ID=SECRET (at least 32 bytes).
    /// Repeat it (or separate with commas) to accept several keys while
    /// rotating.
    #[arg(
        long = "hs256-key",
        env = "DELTAMESH_HS256_KEYS",
        value_delimiter = ','
    )]
    hs256_keys: Vec<String>,
    /// An EdDSA key for signed tokens, as KEY_ID=PATH to an Ed25519 public
    /// key in PEM. Repeatable.
    #[arg(
        long = "eddsa-key",
        env = "DELTAMESH_EDDSA_KEYS",
        value_delimiter = ','
    )]
    eddsa_keys: Vec<String>,
    /// The issuer (`iss`) every token must name.
    #[arg(long, env = "DELTAMESH_TOKEN_ISSUER")]
    token_issuer: Option<String>,
    /// Refuse to start without token keys (and, in a fleet, without NATS
    /// security and registry TLS), and accept no development token.
    #[arg(long, env = "DELTAMESH_PRODUCTION")]
    production: bool,
    /// The development token that opens every session with every grant.
    /// Development mode is on when no token key is configured.
    #[arg(
        long,
        env = "DELTAMESH_DEV_TOKEN",
        default_value = "deltamesh-dev-token"
    )]
    dev_token: String,
}

/// What one HTTP client and token may use. 0 turns a rate off.
#[derive(Debug, Args)]
struct HttpLimitArgs {
    /// HTTP requests per second per client address (IPv6: per /64).
    #[arg(long, env = "DELTAMESH_ADDRESS_RATE", default_value_t = deltamesh_signal::DEFAULT_ADDRESS_RATE.per_second)]
    address_rate: u32,
    /// HTTP requests in one burst per client address.
    #[arg(long, env = "DELTAMESH_ADDRESS_BURST", default_value_t = deltamesh_signal::DEFAULT_ADDRESS_RATE.burst)]
    address_burst: u32,
    /// HTTP requests per second per token.
    #[arg(long, env = "DELTAMESH_TOKEN_RATE", default_value_t = deltamesh_signal::DEFAULT_TOKEN_RATE.per_second)]
    token_rate: u32,
    /// HTTP requests in one burst per token.
    #[arg(long, env = "DELTAMESH_TOKEN_BURST", default_value_t = deltamesh_signal::DEFAULT_TOKEN_RATE.burst)]
    token_burst: u32,
}

/// What one relay, peer and session may use. 0 turns a rate off.
#[derive(Debug, Args)]
struct RelayLimitArgs {
    /// Peer connections the relay takes.
    #[arg(long, env = "DELTAMESH_MAX_PEERS", default_value_t = RelayConfig::default().max_peers)]
    max_peers: usize,
    /// Peer connections one session may have on the relay.
    #[arg(long, env = "DELTAMESH_MAX_PEERS_PER_SESSION", default_value_t = RelayConfig::default().max_peers_per_session)]
    max_peers_per_session: usize,
    /// Connections being set up (ICE, DTLS, SCTP) at once.
    #[arg(long, env = "DELTAMESH_MAX_PENDING", default_value_t = RelayConfig::default().max_pending)]
    max_pending: usize,
    /// Deltas per second one peer may send.
    #[arg(long, env = "DELTAMESH_DELTA_RATE", default_value_t = RelayConfig::default().delta_rate.per_second)]
    delta_rate: u64,
    /// Deltas one peer may send in one burst.
    #[arg(long, env = "DELTAMESH_DELTA_BURST", default_value_t = RelayConfig::default().delta_rate.burst)]
    delta_burst: u64,
    /// Delta bytes per second one peer may send.
    #[arg(long, env = "DELTAMESH_BYTE_RATE", default_value_t = RelayConfig::default().byte_rate.per_second)]
    byte_rate: u64,
    /// Delta bytes one peer may send in one burst.
    #[arg(long, env = "DELTAMESH_BYTE_BURST", default_value_t = RelayConfig::default().byte_rate.burst)]
    byte_burst: u64,
    /// The largest delta frame, header included.
    #[arg(long, env = "DELTAMESH_MAX_FRAME_SIZE", default_value_t = RelayConfig::default().max_frame_size)]
    max_frame_size: usize,
}

/// What `deltamesh token` puts in the token.
#[derive(Debug, Args)]
struct TokenArgs {
    /// The session the token opens.
    #[arg(long)]
    session: String,
    /// The peer's identity (`sub`).
    #[arg(long)]
    subject: String,
    /// Grants, comma-separated: publish, subscribe, signal.
    #[arg(long, value_delimiter = ',', default_value = "publish,subscribe")]
    grants: Vec<String>,
    /// How long the token is valid, e.g. `1h`, `15m`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The issuer (`iss`).
    #[arg(long)]
    issuer: Option<String>,
    /// Sign with HS256, as KEY_ID=SECRET.
    #[arg(
        long,
        conflicts_with = "eddsa_private_key",
        required_unless_present = "eddsa_private_key"
    )]
    hs256_key: Option<String>,
    /// Sign with EdDSA, as KEY_ID=PATH to an Ed25519 private key in PEM.
    #[arg(long)]
    eddsa_private_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token(args)) = cli.command {
        println!("{}", mint(args)?);
        return Ok(());
    }
    let service = match cli.command {
        Some(Command::Registry(_)) => "deltamesh-registry",
        Some(Command::Relay(_)) => "deltamesh-relay",
        Some(Command::Signal(_)) => "deltamesh-signal",
        Some(Command::Token(_)) | None => "deltamesh",
    };
    let telemetry = Telemetry::init(service, cli.log_format)?;
    let result = match cli.command {
        Some(Command::Registry(args)) => run_registry(args).await,
        Some(Command::Relay(args)) => run_relay(args).await,
        Some(Command::Signal(args)) => run_signal(args).await,
        Some(Command::Token(_)) | None => run(cli.run).await,
    };
    telemetry.shutdown();
    result
}

/// The whole stack in this process: in memory, or on NATS with `--nats`.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    check_run(&args)?;
    let relay = relay_config(&args.relay)?;
    let (signal, dev_mode) = signal_config(&args.signal, true)?;
    if let Some(url) = &args.nats {
        return run_on_nats(url, &args, relay, signal, dev_mode).await;
    }
    let config = StackConfig {
        listen: SocketAddr::new(args.signal.host, args.signal.port),
        relay,
        signal,
    };
    tracing::info!(?config, "starting");
    let stack = start(config.clone()).await?;
    if dev_mode {
        announce_dev_token(&config.signal.dev_token);
    }
    for relay in &stack.relays {
        announce_relay(relay);
    }
    announce(format_args!("signal: {}", stack.signal_url()));
    announce(format_args!("demo: {}/?session=demo", stack.signal_url()));
    shutdown_signal().await?;
    tracing::info!("shutting down");
    stack.shutdown().await?;
    Ok(())
}

/// Registry, relay and signal in this process, coordinating over NATS.
async fn run_on_nats(
    url: &str,
    run: &RunArgs,
    relay: RelayConfig,
    signal: SignalConfig,
    dev_mode: bool,
) -> anyhow::Result<()> {
    let args = &run.signal;
    let nats = connect_nats(url, &run.nats_security).await?;
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
        run.registry_listen,
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
    let listen = SocketAddr::new(args.host, args.port);
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
        announce_dev_token(&args.auth.dev_token);
    }
    announce(format_args!("signal: http://{signal_addr}"));
    announce(format_args!("demo: http://{signal_addr}/?session=demo"));
    shutdown_signal().await?;
    tracing::info!("shutting down: draining the relay");
    fleet_relay.drain(Duration::from_secs(5)).await;
    let _ = stop.send(true);
    server.await??;
    registry.await??;
    Ok(())
}

/// `deltamesh registry`: serves until SIGTERM or Ctrl-C.
async fn run_registry(args: RegistryArgs) -> anyhow::Result<()> {
    check_registry(&args)?;
    let tls = registry_server_tls(&args)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let nats = connect_nats(&args.nats, &args.nats_security).await?;
    let config = RegistryConfig {
        relay_ttl: args.relay_ttl,
        ..RegistryConfig::default()
    };
    let mut registry = service_metrics("registry", args.listen.to_string());
    let metrics = RegistryMetrics::register(&mut registry);
    let (addr, server) = start_registry(nats.clone(), args.listen, config, metrics, tls, async {
        let _ = shutdown_signal().await;
    })
    .await?;
    announce(format_args!("registry: {scheme}://{addr}"));
    serve_and_announce_ops(args.ops_listen, registry, move || nats_ready(&nats)).await?;
    server.await?
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

/// `deltamesh relay`: serves until SIGTERM or Ctrl-C, then drains.
async fn run_relay(args: RelayServiceArgs) -> anyhow::Result<()> {
    check_relay(&args)?;
    let mut config = relay_config(&args.relay)?;
    config.relay_id = random_uuid_v4();
    let registry_tls = registry_tls(&args.fleet)?;
    let nats = connect_nats(&args.fleet.nats, &args.fleet.nats_security).await?;
    let mut registry = service_metrics("relay", config.relay_id.to_string());
    let metrics = RelayMetrics::register(&mut registry);
    let relay = start_relay(
        nats.clone(),
        &args.fleet.registry,
        registry_tls,
        config,
        StreamLimits::default(),
        metrics,
        args.trace_delta_every,
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
    serve_and_announce_ops(args.ops_listen, registry, ready).await?;
    shutdown_signal().await?;
    tracing::info!("draining");
    relay.drain(args.drain_grace).await;
    Ok(())
}

/// `deltamesh signal`: serves until SIGTERM or Ctrl-C.
async fn run_signal(args: SignalServiceArgs) -> anyhow::Result<()> {
    check_signal(&args)?;
    let (config, dev_mode) = signal_config(&args.signal, args.dev)?;
    let registry_tls = registry_tls(&args.fleet)?;
    let nats = connect_nats(&args.fleet.nats, &args.fleet.nats_security).await?;
    let listen = SocketAddr::new(args.signal.host, args.signal.port);
    let (addr, server) = start_signal(
        nats,
        &args.fleet.registry,
        registry_tls,
        listen,
        config,
        None,
        async {
            let _ = shutdown_signal().await;
        },
    )
    .await?;
    if dev_mode {
        announce_dev_token(&args.signal.auth.dev_token);
    }
    announce(format_args!("signal: http://{addr}"));
    Ok(server.await??)
}

/// `deltamesh --production`: with `--nats`, NATS must be secured, and the
/// registry (plaintext gRPC in this mode) must listen on loopback only.
fn check_run(args: &RunArgs) -> anyhow::Result<()> {
    let Some(url) = args.nats.as_deref().filter(|_| args.signal.auth.production) else {
        return Ok(());
    };
    require_secure_nats(url, &args.nats_security)?;
    if !args.registry_listen.ip().is_loopback() {
        bail!(
            "--production needs a loopback --registry-listen (the in-process registry has no TLS)"
        );
    }
    Ok(())
}

/// `deltamesh registry --production`: NATS secured, gRPC over TLS.
fn check_registry(args: &RegistryArgs) -> anyhow::Result<()> {
    if !args.production {
        return Ok(());
    }
    require_secure_nats(&args.nats, &args.nats_security)?;
    if args.grpc_tls_cert.is_none() {
        bail!("--production needs --grpc-tls-cert and --grpc-tls-key");
    }
    Ok(())
}

/// `deltamesh relay --production`: deltas signed, NATS secured, the
/// registry over TLS.
fn check_relay(args: &RelayServiceArgs) -> anyhow::Result<()> {
    if !args.production {
        return Ok(());
    }
    if args.relay.signing_key.is_none() {
        bail!("--production needs --signing-key");
    }
    require_secure_fleet(&args.fleet)
}

/// `deltamesh signal --production`: NATS secured, the registry over TLS
/// (token keys are checked with the rest of signal's configuration).
fn check_signal(args: &SignalServiceArgs) -> anyhow::Result<()> {
    if !args.signal.auth.production {
        return Ok(());
    }
    require_secure_fleet(&args.fleet)
}

/// In production, a fleet client secures NATS and verifies the registry.
fn require_secure_fleet(fleet: &FleetArgs) -> anyhow::Result<()> {
    require_secure_nats(&fleet.nats, &fleet.nats_security)?;
    if fleet.registry_ca.is_none() {
        bail!("--production needs --registry-ca");
    }
    if !fleet.registry.starts_with("https://") {
        bail!("--production needs an https:// --registry URL");
    }
    Ok(())
}

/// In production, NATS is authenticated or verified over TLS.
fn require_secure_nats(url: &str, security: &NatsSecurity) -> anyhow::Result<()> {
    if !security.is_secured(url) {
        bail!(
            "--production needs NATS security: pass --nats-creds, --nats-nkey-seed or --nats-tls-ca"
        );
    }
    Ok(())
}

/// The registry server's TLS from `--grpc-tls-cert` and `--grpc-tls-key`.
fn registry_server_tls(args: &RegistryArgs) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.grpc_tls_cert, &args.grpc_tls_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(
        read_text(cert, "--grpc-tls-cert")?,
        read_text(key, "--grpc-tls-key")?,
    );
    Ok(Some(ServerTlsConfig::new().identity(identity)))
}

/// The registry client's TLS, trusting `--registry-ca`.
fn registry_tls(fleet: &FleetArgs) -> anyhow::Result<Option<ClientTlsConfig>> {
    let Some(path) = &fleet.registry_ca else {
        return Ok(None);
    };
    let ca = Certificate::from_pem(read_text(path, "--registry-ca")?);
    Ok(Some(ClientTlsConfig::new().ca_certificate(ca)))
}

/// The relay's configuration from its flags.
fn relay_config(args: &RelayArgs) -> anyhow::Result<RelayConfig> {
    let limits = &args.limits;
    let signer = match &args.signing_key {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let signer = DeltaSigner::from_pem(&pem)
                .with_context(|| format!("signing key {}", path.display()))?;
            Some(std::sync::Arc::new(signer))
        }
        None => None,
    };
    Ok(RelayConfig {
        signer,
        bind_ip: args.udp_bind,
        advertised_ip: args.advertise_ip.unwrap_or(args.udp_bind),
        udp_port: *args.udp_port.0.start(),
        udp_port_last: args.udp_port.is_range().then_some(*args.udp_port.0.end()),
        shards: args.shards,
        send_window: args.send_window,
        max_peers: limits.max_peers,
        max_peers_per_session: limits.max_peers_per_session,
        max_pending: limits.max_pending,
        delta_rate: Rate {
            per_second: limits.delta_rate,
            burst: limits.delta_burst,
        },
        byte_rate: Rate {
            per_second: limits.byte_rate,
            burst: limits.byte_burst,
        },
        max_frame_size: limits.max_frame_size,
        ..RelayConfig::default()
    })
}

/// Signal's configuration from its flags, and whether it runs in
/// development mode (no token keys; only when `dev_allowed`).
fn signal_config(args: &SignalArgs, dev_allowed: bool) -> anyhow::Result<(SignalConfig, bool)> {
    let limits = &args.limits;
    let verifier = token_verifier(&args.auth)?;
    let dev_mode = verifier.is_empty();
    if dev_mode && args.auth.production {
        bail!(
            "--production needs token keys: pass --hs256-key KEY_ID=SECRET or --eddsa-key KEY_ID=PEM_PATH"
        );
    }
    if dev_mode && !dev_allowed {
        bail!(
            "no token keys: pass --hs256-key KEY_ID=SECRET or --eddsa-key KEY_ID=PEM_PATH, or --dev for development mode"
        );
    }
    if !args.web_dir.join("index.html").is_file() {
        tracing::warn!(
            "no demo bundle in {}; run scripts/build-web (scripts/run does it for you)",
            args.web_dir.display()
        );
    }
    let config = SignalConfig {
        tokens: std::sync::Arc::new(verifier),
        address_rate: RateLimit {
            per_second: limits.address_rate,
            burst: limits.address_burst,
        },
        token_rate: RateLimit {
            per_second: limits.token_rate,
            burst: limits.token_burst,
        },
        web_dir: Some(args.web_dir.clone()),
        ..SignalConfig::new(if dev_mode {
            args.auth.dev_token.clone()
        } else {
            String::new()
        })
    };
    Ok((config, dev_mode))
}

/// Warns loudly and prints the development token.
fn announce_dev_token(token: &str) {
    tracing::warn!(
        "development mode: the token below opens every session. Do not expose this stack."
    );
    announce(format_args!("dev token: {token}"));
}

/// Prints a relay's id, UDP addresses and signing key.
fn announce_relay(relay: &deltamesh_relay::RelayHandle) {
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

/// The verifier for the configured token keys (empty when there are none).
fn token_verifier(auth: &AuthArgs) -> anyhow::Result<TokenVerifier> {
    let mut verifier = TokenVerifier::default();
    for key in &auth.hs256_keys {
        let (kid, secret) = named(key, "--hs256-key")?;
        verifier.add_hs256(kid, secret.as_bytes())?;
    }
    for key in &auth.eddsa_keys {
        let (kid, path) = named(key, "--eddsa-key")?;
        let pem = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        verifier.add_eddsa_pem(kid, &pem)?;
    }
    if let Some(issuer) = &auth.token_issuer {
        verifier.require_issuer(issuer.clone());
    }
    Ok(verifier)
}

/// Signs the token `args` describe.
fn mint(args: TokenArgs) -> anyhow::Result<String> {
    let signer = match (&args.hs256_key, &args.eddsa_private_key) {
        (Some(key), _) => {
            let (kid, secret) = named(key, "--hs256-key")?;
            TokenSigner::hs256(kid, secret.as_bytes())?
        }
        (None, Some(key)) => {
            let (kid, path) = named(key, "--eddsa-private-key")?;
            let pem = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            TokenSigner::eddsa_pem(kid, &pem)?
        }
        (None, None) => bail!("pass --hs256-key or --eddsa-private-key"),
    };
    if !deltamesh_proto::session::is_valid_session(&args.session) {
        bail!("{:?} is not a valid session name", args.session);
    }
    let mut grants = Grants::default();
    for grant in &args.grants {
        match grant.trim() {
            "publish" => grants.publish = true,
            "subscribe" => grants.subscribe = true,
            "signal" => grants.signal = true,
            "" => {}
            other => bail!("unknown grant {other:?}: use publish, subscribe or signal"),
        }
    }
    let now = unix_now();
    Ok(signer.sign(&Claims {
        iss: args.issuer,
        sub: args.subject,
        session: args.session,
        grants: grants.into(),
        exp: now + args.ttl.as_secs(),
        nbf: Some(now),
        iat: Some(now),
    }))
}

/// Splits `KEY_ID=VALUE`.
fn named<'a>(text: &'a str, flag: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match text.split_once('=') {
        Some((kid, value)) if !kid.is_empty() && !value.is_empty() => Ok((kid, value)),
        _ => bail!("{flag} takes KEY_ID=VALUE"),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the production check of the service `args` start refuses ("" if nothing).
    fn refusal(args: &[&str]) -> String {
        let cli =
            Cli::try_parse_from(std::iter::once("deltamesh").chain(args.iter().copied())).unwrap();
        let checked = match cli.command {
            Some(Command::Registry(args)) => check_registry(&args),
            Some(Command::Relay(args)) => check_relay(&args),
            Some(Command::Signal(args)) => check_signal(&args),
            Some(Command::Token(_)) => unreachable!("not a service"),
            None => check_run(&cli.run),
        };
        checked.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn production_refuses_to_start_insecure_services() {
        let registry = ["registry", "--production"];
        assert!(refusal(&registry).contains("--nats-creds"));
        let registry = [&registry[..], &["--nats-nkey-seed", "seed"]].concat();
        assert_eq!(
            refusal(&registry),
            "--production needs --grpc-tls-cert and --grpc-tls-key"
        );
        let registry = [
            &registry[..],
            &["--grpc-tls-cert", "c", "--grpc-tls-key", "k"],
        ]
        .concat();
        assert_eq!(refusal(&registry), "");

        let relay = ["relay", "--production"];
        assert_eq!(refusal(&relay), "--production needs --signing-key");
        let relay = [&relay[..], &["--signing-key", "relay.pem"]].concat();
        assert!(refusal(&relay).contains("NATS security"));
        let relay = [&relay[..], &["--nats-tls-ca", "ca.pem"]].concat();
        assert_eq!(refusal(&relay), "--production needs --registry-ca");
        let relay = [&relay[..], &["--registry-ca", "ca.pem"]].concat();
        assert_eq!(
            refusal(&relay),
            "--production needs an https:// --registry URL"
        );
        let relay = [&relay[..], &["--registry", "https://registry:50051"]].concat();
        assert_eq!(refusal(&relay), "");

        let signal = ["signal", "--production", "--nats", "tls://nats:4222"];
        assert_eq!(refusal(&signal), "--production needs --registry-ca");
        let signal = [
            &signal[..],
            &["--registry-ca", "ca.pem", "--registry", "https://r:1"],
        ]
        .concat();
        assert_eq!(refusal(&signal), "");

        let one_process = ["--production", "--nats", "nats://nats:4222"];
        assert!(refusal(&one_process).contains("NATS security"));
        let one_process = [&one_process[..], &["--nats-creds", "user.creds"]].concat();
        assert_eq!(refusal(&one_process), "");
        let one_process = [&one_process[..], &["--registry-listen", "0.0.0.0:50051"]].concat();
        assert!(refusal(&one_process).contains("loopback --registry-listen"));

        // Without --production, anything goes.
        for service in [&["registry"][..], &["relay"], &["signal"], &["--nats", "x"]] {
            assert_eq!(refusal(service), "");
        }
    }

    #[test]
    fn tls_and_credential_flags_come_in_valid_combinations() {
        let parses = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("deltamesh").chain(args.iter().copied())).is_ok()
        };
        assert!(parses(&[
            "relay",
            "--nats-tls-cert",
            "c",
            "--nats-tls-key",
            "k"
        ]));
        assert!(!parses(&["relay", "--nats-tls-cert", "c"]));
        assert!(!parses(&[
            "signal",
            "--nats-creds",
            "c",
            "--nats-nkey-seed",
            "s"
        ]));
        assert!(!parses(&["registry", "--grpc-tls-key", "k"]));
    }

    #[tokio::test]
    async fn unreadable_security_files_are_named() {
        let missing = PathBuf::from("/nonexistent/deltamesh-test.pem");
        let security = NatsSecurity {
            nats_tls_ca: Some(missing.clone()),
            ..NatsSecurity::default()
        };
        let error = connect_nats("nats://127.0.0.1:1", &security)
            .await
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("--nats-tls-ca: reading /nonexistent"),
            "{error:#}"
        );
        let cli = Cli::try_parse_from(["deltamesh", "relay", "--registry-ca", "/nonexistent/ca"])
            .unwrap();
        let Some(Command::Relay(args)) = cli.command else {
            unreachable!()
        };
        let error = registry_tls(&args.fleet).unwrap_err().to_string();
        assert!(
            error.contains("--registry-ca: reading /nonexistent/ca"),
            "{error}"
        );
    }

    #[test]
    fn key_flags_need_a_key_id_and_a_value() {
        assert_eq!(named("k1=s=cret", "--x").unwrap(), ("k1", "s=cret"));
        for bad in ["k1", "=secret", "k1=", ""] {
            let error = named(bad, "--hs256-key").unwrap_err().to_string();
            assert!(
                error.contains("--hs256-key takes KEY_ID=VALUE"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn minting_refuses_unknown_grants_bad_sessions_and_weak_secrets() {
        let args = |session: &str, grants: &[&str], secret: &str| TokenArgs {
            session: session.into(),
            subject: "alice".into(),
            grants: grants.iter().map(|g| g.to_string()).collect(),
            ttl: Duration::from_secs(60),
            issuer: None,
            hs256_key: Some(format!("k={secret}")),
            eddsa_private_key: None,
        };
        let secret = "0123456789abcdef0123456789abcdef";
        let token = mint(args("doc-1", &["publish"], secret)).unwrap();
        let mut verifier = TokenVerifier::default();
        verifier.add_hs256("k", secret.as_bytes()).unwrap();
        let access = verifier.verify(&token).unwrap();
        assert!(access.grants.publish && !access.grants.subscribe);
        let error = mint(args("doc-1", &["admin"], secret))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown grant"), "{error}");
        let error = mint(args("a/b", &["publish"], secret))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a valid session name"), "{error}");
        let error = mint(args("doc-1", &["publish"], "short"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("shorter than 32 bytes"), "{error}");
    }
}

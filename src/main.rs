//! `cargo run`: the whole deltamesh stack in one process.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use deltamesh::{StackConfig, start};
use deltamesh_relay::RelayConfig;

/// Runs signal, the registry's placement and one media relay in one process.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address signal's HTTP server binds to.
    #[arg(long, env = "DELTAMESH_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port signal's HTTP server listens on.
    #[arg(long, short, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address the relay's UDP sockets bind to.
    #[arg(long, env = "DELTAMESH_UDP_BIND", default_value = "127.0.0.1")]
    udp_bind: IpAddr,
    /// Address advertised in the relay's ICE host candidates (defaults to
    /// the bind address; must be concrete when binding 0.0.0.0).
    #[arg(long, env = "DELTAMESH_ADVERTISE_IP")]
    advertise_ip: Option<IpAddr>,
    /// First UDP port of the relay (shard i uses port + i; 0 picks free ports).
    #[arg(long, env = "DELTAMESH_UDP_PORT", default_value_t = 0)]
    udp_port: u16,
    /// Relay event-loop shards.
    #[arg(long, env = "DELTAMESH_SHARDS", default_value_t = 1)]
    shards: usize,
    /// Bytes the relay keeps in flight to one peer at most.
    #[arg(long, env = "DELTAMESH_SEND_WINDOW", default_value_t = 16 * 1024)]
    send_window: usize,
    /// The development token that opens every session.
    #[arg(
        long,
        env = "DELTAMESH_DEV_TOKEN",
        default_value = "deltamesh-dev-token"
    )]
    dev_token: String,
    /// The browser bundle (demo page and wasm) that `scripts/build-web` makes.
    #[arg(long, env = "DELTAMESH_WEB_DIR", default_value = "target/web")]
    web_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,str0m=warn".into()),
        )
        .init();
    let args = Args::parse();
    let relay = RelayConfig {
        bind_ip: args.udp_bind,
        advertised_ip: args.advertise_ip.unwrap_or(args.udp_bind),
        udp_port: args.udp_port,
        shards: args.shards,
        send_window: args.send_window,
        ..RelayConfig::default()
    };
    let config = StackConfig {
        listen: SocketAddr::new(args.host, args.port),
        relay,
        dev_token: args.dev_token,
        web_dir: Some(args.web_dir.clone()),
    };
    if !args.web_dir.join("index.html").is_file() {
        eprintln!(
            "note: no demo bundle in {}; run scripts/build-web (scripts/run does it for you)",
            args.web_dir.display()
        );
    }
    tracing::info!(?config, "starting");
    let stack = start(config.clone()).await?;
    eprintln!(
        "WARNING: development mode: the token below opens every session. Do not expose this stack."
    );
    println!("dev token: {}", config.dev_token);
    println!("signal: {}", stack.signal_url());
    println!("demo: {}/?session=demo", stack.signal_url());
    shutdown_signal().await?;
    eprintln!("shutting down");
    stack.shutdown().await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

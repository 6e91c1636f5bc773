//! `cargo run`: the whole deltamesh stack in one process (in-memory, or on
//! NATS with `--nats`); `deltamesh registry|relay|signal` run one service of
//! a fleet each; `deltamesh token` mints a signed token.
//!
//! The flags are in [`deltamesh::cli`], which turns them into the
//! configuration [`deltamesh::service`] runs.

use clap::Parser;
use deltamesh::cli::{Cli, Command};
use deltamesh::telemetry::Telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token(args)) = cli.command {
        println!("{}", deltamesh::token::mint(args)?);
        return Ok(());
    }
    let telemetry = Telemetry::init(cli.service_name(), cli.log_format)?;
    let result = run(cli).await;
    telemetry.shutdown();
    result
}

/// Builds the configuration the command's flags describe and runs it.
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Registry(args)) => args.to_config()?.run().await,
        Some(Command::Relay(args)) => args.to_config()?.run().await,
        Some(Command::Signal(args)) => args.to_config()?.run().await,
        Some(Command::Token(_)) | None => cli.run.to_config()?.run().await,
    }
}

//! `deltamesh` without a subcommand: the flags of the whole stack in one
//! process (in memory, or on NATS with `--nats`), and the configuration
//! they describe.

use std::net::SocketAddr;

use clap::Args;

use super::relay::RelayArgs;
use super::signal::SignalArgs;
use crate::fleet::NatsSecurity;
use crate::production;
use crate::service::{NatsConfig, OnNats, OneProcess};
use crate::stack::StackConfig;

/// How the whole stack runs in one process.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub(crate) signal: SignalArgs,
    #[command(flatten)]
    relay: RelayArgs,
    /// Run on NATS/JetStream at this URL (registry, relay and signal as in
    /// a fleet, all in this process) instead of in memory.
    #[arg(long, env = "NATS_URL")]
    pub(crate) nats: Option<String>,
    #[command(flatten)]
    pub(crate) nats_security: NatsSecurity,
    /// Where the registry's gRPC server listens with `--nats` (plaintext:
    /// `--production` keeps it on loopback).
    #[arg(long, env = "DELTAMESH_REGISTRY_LISTEN", default_value = "127.0.0.1:0")]
    pub(crate) registry_listen: SocketAddr,
}

impl RunArgs {
    /// The one-process stack these flags describe, refused if
    /// `--production` is not met; key files are read now.
    pub fn to_config(&self) -> anyhow::Result<OneProcess> {
        production::check_run(self)?;
        let relay = self.relay.to_config()?;
        let (signal, dev_mode) = self.signal.to_config(true)?;
        let nats = self.nats.as_ref().map(|url| OnNats {
            nats: NatsConfig {
                url: url.clone(),
                security: self.nats_security.clone(),
            },
            registry_listen: self.registry_listen,
        });
        Ok(OneProcess {
            stack: StackConfig {
                listen: self.signal.listen(),
                relay,
                signal,
            },
            dev_mode,
            nats,
        })
    }
}

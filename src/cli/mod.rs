//! The `deltamesh` command line: the flags of every command, and the
//! `to_config` that turns each command's flags into the configuration
//! [`crate::service`] runs. Each subcommand has its own file; the flag
//! groups several commands share (`--nats`, `--production`,
//! `--ops-listen`, the registry client) are declared once here and
//! flattened into them.

mod registry;
mod relay;
mod run;
mod signal;
mod token;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::fleet::{NatsSecurity, read_text};
use crate::ops::OpsListen;
use crate::service::{FleetConfig, NatsConfig};
use crate::telemetry::LogFormat;

pub use registry::RegistryArgs;
pub use relay::RelayServiceArgs;
pub use run::RunArgs;
pub use signal::SignalServiceArgs;
pub use token::TokenArgs;

/// Runs signal, the registry and one media relay in one process, or one
/// service of a fleet.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// The subcommand; none runs the whole stack in this process.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// How the whole stack runs in this process (without a subcommand).
    #[command(flatten)]
    pub run: RunArgs,
    /// Log lines (on stderr) as text or JSON. Traces are configured by the
    /// standard OTEL_* variables, OTEL_EXPORTER_OTLP_ENDPOINT first.
    #[arg(
        long,
        global = true,
        env = "DELTAMESH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl Cli {
    /// The service name this command's logs and traces carry.
    pub fn service_name(&self) -> &'static str {
        match self.command {
            Some(Command::Registry(_)) => "deltamesh-registry",
            Some(Command::Relay(_)) => "deltamesh-relay",
            Some(Command::Signal(_)) => "deltamesh-signal",
            Some(Command::Token(_)) | None => "deltamesh",
        }
    }
}

/// The subcommands: minting a token, or one service of a fleet.
#[derive(Debug, Subcommand)]
pub enum Command {
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

/// The NATS server a fleet service connects to, and how.
#[derive(Debug, Args)]
pub(crate) struct NatsArgs {
    /// The NATS server (JetStream enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats: String,
    #[command(flatten)]
    pub(crate) nats_security: NatsSecurity,
}

impl NatsArgs {
    /// Where to connect, and how.
    pub(crate) fn to_config(&self) -> NatsConfig {
        NatsConfig {
            url: self.nats.clone(),
            security: self.nats_security.clone(),
        }
    }
}

/// `--production`. What it requires differs by command, so each command
/// that flattens it states that in the flag's help (`mut_arg`); the checks
/// are in [`crate::production`].
#[derive(Debug, Args)]
pub(crate) struct ProductionArgs {
    /// Refuse to start with development settings.
    #[arg(long, env = "DELTAMESH_PRODUCTION")]
    pub(crate) production: bool,
}

/// Where a fleet service serves its operators' endpoints.
#[derive(Debug, Args)]
pub(crate) struct OpsArgs {
    /// Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP):
    /// IP:PORT, or IP:FIRST-LAST for the first free port of a range.
    #[arg(long, env = "DELTAMESH_OPS_LISTEN", default_value = "127.0.0.1:0")]
    pub(crate) ops_listen: OpsListen,
}

/// Where a fleet service finds NATS and the registry.
#[derive(Debug, Args)]
pub(crate) struct FleetArgs {
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    /// The registry's gRPC URL (`https://` with `--registry-ca`).
    #[arg(
        long,
        env = "DELTAMESH_REGISTRY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) registry: String,
    /// The CA certificate (PEM) the registry's TLS certificate must chain
    /// to; the registry URL must then be `https://`.
    #[arg(long, env = "DELTAMESH_REGISTRY_CA")]
    pub(crate) registry_ca: Option<PathBuf>,
}

impl FleetArgs {
    /// NATS and the registry client, trusting `--registry-ca` (read now).
    pub(crate) fn to_config(&self) -> anyhow::Result<FleetConfig> {
        let registry_tls = match &self.registry_ca {
            Some(path) => {
                let ca = Certificate::from_pem(read_text(path, "--registry-ca")?);
                Some(ClientTlsConfig::new().ca_certificate(ca))
            }
            None => None,
        };
        Ok(FleetConfig {
            nats: self.nats.to_config(),
            registry_url: self.registry.clone(),
            registry_tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::connect_nats;

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
        let error = args.fleet.to_config().unwrap_err().to_string();
        assert!(
            error.contains("--registry-ca: reading /nonexistent/ca"),
            "{error}"
        );
    }
}

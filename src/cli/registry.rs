//! `deltamesh registry`: the flags of the registry service, and the
//! [`RegistryService`] they describe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use deltamesh_registry::RegistryConfig;
use tonic::transport::{Identity, ServerTlsConfig};

use super::{NatsArgs, OpsArgs, ProductionArgs};
use crate::fleet::read_text;
use crate::production;
use crate::service::RegistryService;

/// `deltamesh registry`.
#[derive(Debug, Args)]
#[command(mut_arg("production", |arg| arg.help(
    "Refuse to start without NATS security and gRPC TLS"
)))]
pub struct RegistryArgs {
    #[command(flatten)]
    pub(crate) nats: NatsArgs,
    /// Where the gRPC server listens.
    #[arg(
        long,
        env = "DELTAMESH_REGISTRY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub(crate) listen: SocketAddr,
    /// How long a relay that stops heartbeating stays placeable.
    #[arg(long, env = "DELTAMESH_RELAY_TTL", default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) relay_ttl: Duration,
    /// The gRPC server's TLS certificate chain (PEM); plaintext without it.
    #[arg(long, env = "DELTAMESH_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub(crate) grpc_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--grpc-tls-cert`.
    #[arg(long, env = "DELTAMESH_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub(crate) grpc_tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) production: ProductionArgs,
    #[command(flatten)]
    pub(crate) ops: OpsArgs,
}

impl RegistryArgs {
    /// The registry service these flags describe, refused if `--production`
    /// is not met; its TLS files are read now.
    pub fn to_config(&self) -> anyhow::Result<RegistryService> {
        production::check_registry(self)?;
        Ok(RegistryService {
            nats: self.nats.to_config(),
            listen: self.listen,
            config: RegistryConfig {
                relay_ttl: self.relay_ttl,
                ..RegistryConfig::default()
            },
            tls: self.server_tls()?,
            ops_listen: self.ops.ops_listen.clone(),
        })
    }

    /// The gRPC server's TLS from `--grpc-tls-cert` and `--grpc-tls-key`.
    fn server_tls(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.grpc_tls_cert, &self.grpc_tls_key) else {
            return Ok(None);
        };
        let identity = Identity::from_pem(
            read_text(cert, "--grpc-tls-cert")?,
            read_text(key, "--grpc-tls-key")?,
        );
        Ok(Some(ServerTlsConfig::new().identity(identity)))
    }
}

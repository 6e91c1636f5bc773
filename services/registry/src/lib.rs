//! The deltamesh network registry: which relays exist, how loaded they are,
//! which peers are where, and where a new peer goes.
//!
//! All state lives in two NATS JetStream key-value buckets ([`buckets`]), so
//! any number of registry instances can serve the same fleet and a restart
//! loses nothing:
//!
//! - `relays`: one `RelayInfo` per relay. Relays register and heartbeat over
//!   gRPC; the bucket's `max_age` is the lease, so a relay that stops
//!   heartbeating disappears by itself.
//! - `peers`: one `PeerRecord` per peer connection, written by the relay that
//!   hosts it ([`membership`]). The [`janitor`] removes the peers of relays
//!   that are gone, so a killed relay's peers leave their sessions.
//!
//! [`service`] answers the `Registry` gRPC API over both buckets, and
//! [`placement`] is the rule that picks a relay for a new peer.

pub mod buckets;
pub mod janitor;
pub mod membership;
pub mod placement;
mod relays;
pub mod service;

use std::future::Future;
use std::time::Duration;

use deltamesh_proto::fleet::pb::registry_server::RegistryServer;
use deltamesh_proto::trace;
use futures_util::FutureExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

pub use placement::{PlacementError, RelayLoad, place};
pub use service::{RegistryMetrics, RegistryService};

/// The largest request the gRPC server decodes; bigger ones are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Puts the trace context of a request's `traceparent` and `tracestate`
/// metadata in its extensions, for the handler's span to continue.
fn continue_trace(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let metadata = request.metadata();
    let trace = trace::extract(|name| metadata.get(name)?.to_str().ok());
    request.extensions_mut().insert(trace);
    Ok(request)
}

/// Timing of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryConfig {
    /// How often relays must heartbeat (told to them on register).
    pub heartbeat_interval: Duration,
    /// A relay not heard from for this long is gone (its lease).
    pub relay_ttl: Duration,
    /// How often the janitor removes the peers of relays that are gone.
    pub janitor_interval: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            heartbeat_interval: Duration::from_secs(1),
            relay_ttl: Duration::from_secs(3),
            janitor_interval: Duration::from_secs(1),
        }
    }
}

/// Why the registry stopped.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A key-value bucket could not be created or opened.
    #[error("cannot open a registry bucket: {0}")]
    Bucket(#[from] async_nats::jetstream::context::CreateKeyValueError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Opens the buckets, runs the janitor and serves the `Registry` gRPC API on
/// `listener` (over TLS with `tls`, plaintext without), counting into
/// `metrics`, until `shutdown` completes.
pub async fn serve(
    nats: async_nats::Client,
    config: RegistryConfig,
    metrics: RegistryMetrics,
    listener: tokio::net::TcpListener,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let js = async_nats::jetstream::new(nats);
    let relays = buckets::relays(&js, config.relay_ttl).await?;
    let peers = buckets::peers(&js).await?;
    let janitor = tokio::spawn(janitor::run(relays.clone(), peers.clone(), config));
    let shutdown = shutdown.boxed().shared();
    let service =
        RegistryService::new(relays, peers, config, shutdown.clone()).with_metrics(metrics);
    let service = InterceptedService::new(
        RegistryServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        continue_trace,
    );
    let served = server
        .add_service(service)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await;
    janitor.abort();
    Ok(served?)
}

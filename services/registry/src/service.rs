//! The `Registry` gRPC service over the relays and peers buckets.
//!
//! Malformed input gets `INVALID_ARGUMENT`, NATS failures `UNAVAILABLE`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;

use async_nats::jetstream::kv;
use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::{
    DeregisterRelayRequest, DeregisterRelayResponse, HeartbeatRequest, HeartbeatResponse,
    ListPeersRequest, ListPeersResponse, ListRelaysRequest, ListRelaysResponse, LookupPeerRequest,
    MembershipEvent, PeerRecord, PlacePeerRequest, PlacePeerResponse, RegisterRelayRequest,
    RegisterRelayResponse, RelayInfo, WatchSessionRequest, registry_server::Registry,
};
use deltamesh_proto::session::is_valid_session;
use deltamesh_proto::trace::attribute;
use futures_util::future::{BoxFuture, Shared};
use futures_util::{FutureExt, Stream, StreamExt};
use opentelemetry::trace::{Span, SpanKind, Tracer};
use opentelemetry::{Context, KeyValue, global};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry as MetricsRegistry;
use tonic::{Code, Request, Response, Status};

use crate::placement::{self, RelayLoad};
use crate::{RegistryConfig, membership, relays};

/// Most addresses a relay may advertise.
const MAX_UDP_ADDRS: usize = 16;
/// Most relays a placement may exclude.
const MAX_EXCLUDED: usize = 64;

/// Labels of `registry_placements_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    /// `placed`, `no_capacity`, `invalid` (a malformed request) or
    /// `unavailable` (the registry's storage failed).
    outcome: &'static str,
}

/// What the registry counts. Clones share the same counters; the default
/// ones are registered nowhere.
#[derive(Debug, Clone, Default)]
pub struct RegistryMetrics {
    placements: Family<OutcomeLabels, Counter>,
}

impl RegistryMetrics {
    /// Creates the counters and registers them in `registry` under
    /// `registry_`.
    pub fn register(registry: &mut MetricsRegistry) -> Self {
        let metrics = RegistryMetrics::default();
        registry.sub_registry_with_prefix("registry").register(
            "placements",
            "Peer placements answered, by outcome (placed, no_capacity, invalid, unavailable)",
            metrics.placements.clone(),
        );
        metrics
    }

    /// Counts one placement that ended in `outcome`.
    fn placement(&self, outcome: &'static str) {
        self.placements
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// The `Registry` gRPC service; cheap to clone, state lives in NATS.
#[derive(Clone)]
pub struct RegistryService {
    relays: kv::Store,
    peers: kv::Store,
    config: RegistryConfig,
    closing: Shared<BoxFuture<'static, ()>>,
    metrics: RegistryMetrics,
}

impl RegistryService {
    /// A service over the buckets from [`crate::buckets`]. Watches end when
    /// `closing` completes, so a graceful shutdown does not wait for them.
    pub fn new(
        relays: kv::Store,
        peers: kv::Store,
        config: RegistryConfig,
        closing: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        RegistryService {
            relays,
            peers,
            config,
            closing: closing.boxed().shared(),
            metrics: RegistryMetrics::default(),
        }
    }

    /// This service, counting into `metrics`.
    pub fn with_metrics(mut self, metrics: RegistryMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Where a new peer of `request.session` goes: the placement itself.
    async fn place(&self, request: PlacePeerRequest) -> Result<Option<RelayInfo>, Status> {
        check_session(&request.session)?;
        if request.exclude_relays.len() > MAX_EXCLUDED {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_EXCLUDED} exclude_relays, got {}",
                request.exclude_relays.len()
            )));
        }
        let excluded = request
            .exclude_relays
            .iter()
            .map(|id| parse_id("exclude_relays", id))
            .collect::<Result<HashSet<Id>, Status>>()?;
        let hosts: HashSet<Vec<u8>> = membership::list_peers(&self.peers, &request.session)
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|peer| peer.relay_id)
            .collect();
        let candidates: Vec<(Id, RelayInfo)> = relays::live(&self.relays, self.config.relay_ttl)
            .await
            .map_err(unavailable)?
            .into_iter()
            .filter_map(|relay| Some((Id::from_slice(&relay.relay_id).ok()?, relay)))
            .filter(|(id, _)| !excluded.contains(id))
            .collect();
        let loads: Vec<RelayLoad> = candidates
            .iter()
            .map(|(id, relay)| RelayLoad {
                id: *id,
                peers: relay.load.map_or(0, |load| load.peers as usize),
                capacity: relay.capacity as usize,
                draining: relay.draining,
                hosts_session: hosts.contains(relay.relay_id.as_slice()),
            })
            .collect();
        let chosen = placement::place(&loads, |n| fastrand::usize(..n))
            .map_err(|_| Status::resource_exhausted("every relay is full, draining or gone"))?;
        Ok(candidates
            .into_iter()
            .find_map(|(id, relay)| (id == chosen).then_some(relay)))
    }
}

/// The stream of a `WatchSession` call.
pub type MembershipStream = Pin<Box<dyn Stream<Item = Result<MembershipEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register_relay(
        &self,
        request: Request<RegisterRelayRequest>,
    ) -> Result<Response<RegisterRelayResponse>, Status> {
        let mut relay = request
            .into_inner()
            .relay
            .ok_or_else(|| Status::invalid_argument("relay is required"))?;
        let id = check_relay(&relay)?;
        relay.heartbeat_at_ms = deltamesh_proto::time::unix_millis();
        relays::put(&self.relays, id, &relay)
            .await
            .map_err(unavailable)?;
        tracing::info!(relay = %id, addrs = ?relay.udp_addrs, "relay registered");
        Ok(Response::new(RegisterRelayResponse {
            heartbeat_interval_ms: millis(self.config.heartbeat_interval),
            ttl_ms: millis(self.config.relay_ttl),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let id = parse_id("relay_id", &request.relay_id)?;
        let mut relay = relays::get_live(&self.relays, id, self.config.relay_ttl)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "relay {id} is not registered (lease expired?): register again"
                ))
            })?;
        relay.load = request.load.or(relay.load);
        relay.draining = request.draining;
        relay.heartbeat_at_ms = deltamesh_proto::time::unix_millis();
        relays::put(&self.relays, id, &relay)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(HeartbeatResponse {}))
    }

    async fn deregister_relay(
        &self,
        request: Request<DeregisterRelayRequest>,
    ) -> Result<Response<DeregisterRelayResponse>, Status> {
        let id = parse_id("relay_id", &request.into_inner().relay_id)?;
        relays::remove(&self.relays, id)
            .await
            .map_err(unavailable)?;
        tracing::info!(relay = %id, "relay deregistered");
        Ok(Response::new(DeregisterRelayResponse {}))
    }

    async fn place_peer(
        &self,
        request: Request<PlacePeerRequest>,
    ) -> Result<Response<PlacePeerResponse>, Status> {
        let parent = request
            .extensions()
            .get::<Context>()
            .cloned()
            .unwrap_or_default();
        let request = request.into_inner();
        let tracer = global::tracer("deltamesh-registry");
        let mut span = tracer
            .span_builder("deltamesh.fleet.v1.Registry/PlacePeer")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new(attribute::SESSION, request.session.clone())])
            .start_with_context(&tracer, &parent);
        let placed = self.place(request).await;
        let outcome = match &placed {
            Ok(relay) => {
                if let Some(relay) = relay
                    .as_ref()
                    .and_then(|r| Id::from_slice(&r.relay_id).ok())
                {
                    span.set_attribute(KeyValue::new(attribute::RELAY_ID, relay.to_string()));
                }
                "placed"
            }
            Err(status) => {
                span.set_status(opentelemetry::trace::Status::error(
                    status.message().to_owned(),
                ));
                match status.code() {
                    Code::ResourceExhausted => "no_capacity",
                    Code::InvalidArgument => "invalid",
                    _ => "unavailable",
                }
            }
        };
        self.metrics.placement(outcome);
        span.end();
        placed.map(|relay| Response::new(PlacePeerResponse { relay }))
    }

    async fn lookup_peer(
        &self,
        request: Request<LookupPeerRequest>,
    ) -> Result<Response<PeerRecord>, Status> {
        let request = request.into_inner();
        check_session(&request.session)?;
        let peer = parse_id("peer_id", &request.peer_id)?;
        membership::get_peer(&self.peers, &request.session, peer)
            .await
            .map_err(unavailable)?
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!("no peer {peer} in session {}", request.session))
            })
    }

    async fn list_peers(
        &self,
        request: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        let session = request.into_inner().session;
        check_session(&session)?;
        let peers = membership::list_peers(&self.peers, &session)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(ListPeersResponse { peers }))
    }

    async fn list_relays(
        &self,
        _: Request<ListRelaysRequest>,
    ) -> Result<Response<ListRelaysResponse>, Status> {
        let relays = relays::live(&self.relays, self.config.relay_ttl)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(ListRelaysResponse { relays }))
    }

    type WatchSessionStream = MembershipStream;

    async fn watch_session(
        &self,
        request: Request<WatchSessionRequest>,
    ) -> Result<Response<MembershipStream>, Status> {
        let session = request.into_inner().session;
        check_session(&session)?;
        let events = membership::watch(&self.peers, &session)
            .await
            .map_err(unavailable)?;
        // tonic ends the call after the first error, and drops the stream
        // (and its NATS consumer) when the client goes away.
        let events = events
            .map(|event| event.map_err(unavailable))
            .take_until(self.closing.clone());
        Ok(Response::new(Box::pin(events)))
    }
}

/// Checks a relay's registration; returns its id.
fn check_relay(relay: &RelayInfo) -> Result<Id, Status> {
    let id = parse_id("relay_id", &relay.relay_id)?;
    if relay.udp_addrs.is_empty() || relay.udp_addrs.len() > MAX_UDP_ADDRS {
        return Err(Status::invalid_argument(format!(
            "udp_addrs: 1 to {MAX_UDP_ADDRS} addresses, got {}",
            relay.udp_addrs.len()
        )));
    }
    for addr in &relay.udp_addrs {
        addr.parse::<SocketAddr>().map_err(|_| {
            Status::invalid_argument(format!("udp_addrs: {:?} is not ip:port", truncate(addr)))
        })?;
    }
    if relay.capacity == 0 {
        return Err(Status::invalid_argument("capacity must be above 0"));
    }
    if !matches!(relay.public_key.len(), 0 | 32) {
        return Err(Status::invalid_argument(format!(
            "public_key: empty or 32 bytes, got {}",
            relay.public_key.len()
        )));
    }
    Ok(id)
}

fn check_session(session: &str) -> Result<(), Status> {
    if is_valid_session(session) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "session: {:?} is not 1 to 128 characters of [A-Za-z0-9._-]",
            truncate(session)
        )))
    }
}

fn parse_id(field: &str, bytes: &[u8]) -> Result<Id, Status> {
    Id::from_slice(bytes).map_err(|error| Status::invalid_argument(format!("{field}: {error}")))
}

/// At most 140 characters of `text`, for error messages.
fn truncate(text: &str) -> String {
    text.chars().take(140).collect()
}

fn millis(duration: std::time::Duration) -> u32 {
    duration.as_millis().try_into().unwrap_or(u32::MAX)
}

fn unavailable(error: async_nats::Error) -> Status {
    tracing::warn!(%error, "NATS request failed");
    Status::unavailable(format!("registry storage unavailable: {error}"))
}

//! The multi-process [`Network`]: signal asks the registry (gRPC) where a
//! peer goes or lives, then asks that relay over NATS request/reply.
//!
//! An offer is placed with `PlacePeer` and sent to the chosen relay's control
//! subject ([`relay_control_subject`]) as a `RelayRequest`; the relay's
//! `RelayReply` carries the answer or a failure. A relay that is still listed
//! but gone (killed before its lease expired) has no NATS responders: it is
//! excluded and the peer placed again, at most [`MAX_PLACEMENTS`] times, so a
//! client is never sent to a dead relay. Trickle, ICE restart and delete
//! find the peer's relay with `LookupPeer`, check its owner and ask that
//! relay, which checks the owner again (and, for a trickle, the ETag: the
//! relay holds the peer's current ICE ufrag, which a restart changes).
//!
//! When every placed relay turns out to be gone the offer fails with
//! [`NetworkError::Unavailable`] (503 with signal's default `Retry-After`):
//! the registry did find room, so it is not a capacity problem but a fleet
//! whose listing is out of date until the dead relays' leases expire. When
//! the registry itself has no relay left it answers `RESOURCE_EXHAUSTED`,
//! which is [`NetworkError::NoCapacity`] as for any placement.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{HeaderMap, RequestErrorKind};
use deltamesh_proto::Id;
use deltamesh_proto::fleet::pb::registry_client::RegistryClient;
use deltamesh_proto::fleet::pb::{self, RelayReply, RelayRequest, relay_reply, relay_request};
use deltamesh_proto::fleet::{RegistryEndpointError, registry_endpoint, relay_control_subject};
use deltamesh_proto::{time, trace};
use opentelemetry::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use prost::Message as _;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};

use crate::network::{
    ConnectRequest, Connected, IceRestartAnswer, IceRestartRequest, Network, NetworkError,
    PeerInfo, PeerState, SocketPlaced, SocketRequest,
};

/// How many relays an offer is placed on at most before giving up, when the
/// placed ones turn out to be gone.
pub const MAX_PLACEMENTS: usize = 3;

/// How long each hop may take before signal answers 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetTimeouts {
    /// One registry call, connecting included (default 2 s).
    pub registry: Duration,
    /// One relay's reply over NATS (default 5 s).
    pub relay: Duration,
}

impl Default for FleetTimeouts {
    fn default() -> Self {
        FleetTimeouts {
            registry: Duration::from_secs(2),
            relay: Duration::from_secs(5),
        }
    }
}

/// Labels of `signal_fleet_request_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    /// `registry` (gRPC) or `relay` (NATS request/reply).
    target: &'static str,
    /// `ok`, `timeout` or `error` (refusals, such as a full fleet or relay
    /// or an unknown peer, are `ok`: the request itself worked).
    outcome: &'static str,
}

/// How long signal's requests to the registry and relays take, and how
/// they end. Clones share the same histograms; the default ones are
/// registered nowhere.
#[derive(Debug, Clone)]
pub struct FleetMetrics {
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for FleetMetrics {
    fn default() -> Self {
        FleetMetrics {
            requests: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            }),
        }
    }
}

impl FleetMetrics {
    /// Creates the histograms and registers them in `registry` under `signal_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = FleetMetrics::default();
        registry
            .sub_registry_with_prefix("signal")
            .register_with_unit(
                "fleet_request",
                "Requests to the registry (gRPC) and relays (NATS), by target and outcome",
                Unit::Seconds,
                metrics.requests.clone(),
            );
        metrics
    }

    fn observe(&self, target: &'static str, outcome: &'static str, started: Instant) {
        self.requests
            .get_or_create(&RequestLabels { target, outcome })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Signal's view of a deployment: the registry over gRPC, relays over NATS.
#[derive(Debug, Clone)]
pub struct FleetNetwork {
    nats: async_nats::Client,
    registry: RegistryClient<Channel>,
    timeouts: FleetTimeouts,
    metrics: FleetMetrics,
}

/// What came of one request to a relay.
enum Asked {
    /// The relay replied.
    Reply(relay_reply::Reply),
    /// Nobody listens on the relay's control subject: it is gone.
    NoResponders,
}

impl FleetNetwork {
    /// A network reaching relays through `nats` and the registry at
    /// `registry_url`: `http://host:port`, or `https://host:port` with
    /// `registry_tls` ([`registry_endpoint`]). The registry connection is
    /// made lazily, on the first call (and again after it drops), so signal
    /// starts while the registry is down. Must be called within a Tokio
    /// runtime.
    pub fn new(
        nats: async_nats::Client,
        registry_url: &str,
        registry_tls: Option<ClientTlsConfig>,
        timeouts: FleetTimeouts,
    ) -> Result<Self, RegistryEndpointError> {
        let endpoint =
            registry_endpoint(registry_url, registry_tls)?.connect_timeout(timeouts.registry);
        Ok(FleetNetwork {
            nats,
            registry: RegistryClient::new(endpoint.connect_lazy()),
            timeouts,
            metrics: FleetMetrics::default(),
        })
    }

    /// The network, counting its requests in `metrics`.
    pub fn with_metrics(mut self, metrics: FleetMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A registry request carrying our deadline, so the registry knows it
    /// too, and the trace it is part of in its metadata.
    fn registry_request<T>(&self, message: T, trace: &Context) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeouts.registry);
        for (name, value) in trace::inject(trace) {
            if let Ok(value) = value.parse() {
                request.metadata_mut().insert(name, value);
            }
        }
        request
    }

    /// Runs one registry call within the registry timeout; running out of
    /// time is `DEADLINE_EXCEEDED`, as if the registry had said so.
    async fn registry_call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeouts.registry, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded("no answer from the registry")),
        };
        // A full fleet or an unknown peer is an answer, not a failure.
        let outcome = match result.as_ref().map_err(Status::code) {
            Ok(_) | Err(Code::ResourceExhausted | Code::NotFound) => "ok",
            Err(Code::DeadlineExceeded) => "timeout",
            Err(_) => "error",
        };
        self.metrics.observe("registry", outcome, started);
        result
    }

    /// Asks the registry for a relay for a new peer of `session`, not one of
    /// `exclude`.
    async fn place(
        &self,
        session: &str,
        exclude: &[Id],
        trace: &Context,
    ) -> Result<Id, NetworkError> {
        let request = self.registry_request(
            pb::PlacePeerRequest {
                session: session.to_owned(),
                exclude_relays: exclude.iter().map(|id| id.as_bytes().to_vec()).collect(),
            },
            trace,
        );
        let mut client = self.registry.clone();
        let placed = self
            .registry_call(client.place_peer(request))
            .await
            .map_err(registry_error)?;
        placed
            .relay
            .and_then(|relay| Id::from_slice(&relay.relay_id).ok())
            .ok_or_else(|| NetworkError::Unavailable("the registry placed no valid relay".into()))
    }

    /// The relay hosting `peer` of `session`, once the registry's record
    /// shows it belongs to `identity`.
    async fn hosting(&self, session: &str, peer: Id, identity: &str) -> Result<Id, NetworkError> {
        let request = self.registry_request(
            pb::LookupPeerRequest {
                session: session.to_owned(),
                peer_id: peer.as_bytes().to_vec(),
            },
            &Context::new(),
        );
        let mut client = self.registry.clone();
        let record = self
            .registry_call(client.lookup_peer(request))
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => NetworkError::UnknownPeer,
                _ => registry_error(status),
            })?;
        if record.identity != identity {
            return Err(NetworkError::NotOwner);
        }
        Id::from_slice(&record.relay_id).map_err(|_| {
            NetworkError::Unavailable("the registry's record names no valid relay".into())
        })
    }

    /// Sends `request` to `relay` and waits for its reply. `waiting_for`
    /// names the hop in a timeout.
    async fn ask(
        &self,
        relay: Id,
        request: relay_request::Request,
        trace: &Context,
        waiting_for: &'static str,
    ) -> Result<Asked, NetworkError> {
        let payload = RelayRequest {
            request: Some(request),
        }
        .encode_to_vec();
        // Our own timeout covers the whole request, publishing included.
        let mut nats_request = async_nats::Request::new()
            .payload(payload.into())
            .timeout(None);
        let trace_headers = trace::inject(trace);
        if !trace_headers.is_empty() {
            let mut headers = HeaderMap::new();
            for (name, value) in trace_headers {
                headers.insert(name, value.as_str());
            }
            nats_request = nats_request.headers(headers);
        }
        let sent = self
            .nats
            .send_request(relay_control_subject(relay), nats_request);
        let started = Instant::now();
        let answered = tokio::time::timeout(self.timeouts.relay, sent).await;
        let outcome = match &answered {
            Ok(Ok(_)) => "ok",
            Err(_) => "timeout",
            Ok(Err(error)) if error.kind() == RequestErrorKind::TimedOut => "timeout",
            Ok(Err(_)) => "error",
        };
        self.metrics.observe("relay", outcome, started);
        let message = match answered {
            Err(_) => return Err(NetworkError::Timeout(waiting_for)),
            Ok(Err(error)) => {
                return match error.kind() {
                    RequestErrorKind::NoResponders => Ok(Asked::NoResponders),
                    RequestErrorKind::TimedOut => Err(NetworkError::Timeout(waiting_for)),
                    _ => Err(NetworkError::Unavailable(format!(
                        "request to relay {relay} failed: {error}"
                    ))),
                };
            }
            Ok(Ok(message)) => message,
        };
        let reply = RelayReply::decode(message.payload).map_err(|error| {
            NetworkError::Unavailable(format!("undecodable reply from relay {relay}: {error}"))
        })?;
        reply
            .reply
            .map(Asked::Reply)
            .ok_or_else(|| NetworkError::Unavailable(format!("empty reply from relay {relay}")))
    }

    /// Sends a trickle, ICE restart or disconnect to the relay hosting
    /// `peer` and returns its reply when it is not a failure; a relay that
    /// is gone no longer hosts it.
    async fn ask_host(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        request: relay_request::Request,
    ) -> Result<(Id, relay_reply::Reply), NetworkError> {
        let relay = self.hosting(session, peer, identity).await?;
        match self
            .ask(relay, request, &Context::new(), "the relay")
            .await?
        {
            Asked::NoResponders => Err(NetworkError::UnknownPeer),
            Asked::Reply(relay_reply::Reply::Failure(failure)) => Err(NetworkError::from(failure)),
            Asked::Reply(reply) => Ok((relay, reply)),
        }
    }

    /// [`ask_host`](Self::ask_host) for a request the relay answers with
    /// `Done`.
    async fn ask_host_done(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        request: relay_request::Request,
    ) -> Result<(), NetworkError> {
        match self.ask_host(session, peer, identity, request).await? {
            (_, relay_reply::Reply::Done(_)) => Ok(()),
            (relay, _) => Err(NetworkError::Unavailable(format!(
                "relay {relay} did not answer with done"
            ))),
        }
    }
}

/// The [`NetworkError`] a failed registry call stands for.
fn registry_error(status: Status) -> NetworkError {
    match status.code() {
        Code::ResourceExhausted => {
            NetworkError::no_relay_room(Some(status.message()).filter(|m| !m.is_empty()))
        }
        // A tonic server answers CANCELLED when the deadline we sent it
        // (`grpc-timeout`) runs out, which may come just before our own.
        Code::DeadlineExceeded | Code::Cancelled => NetworkError::Timeout("the registry"),
        Code::Unavailable => {
            NetworkError::Unavailable(format!("registry unreachable: {}", status.message()))
        }
        code => NetworkError::Unavailable(format!(
            "registry failed ({}): {}",
            code.description(),
            status.message()
        )),
    }
}

/// A registry record as a listed peer; `None` when it is malformed.
fn peer_info(record: &pb::PeerRecord) -> Option<PeerInfo> {
    let state = match record.state() {
        pb::PeerState::Connecting => PeerState::Connecting,
        pb::PeerState::Connected => PeerState::Connected,
        pb::PeerState::Unspecified => return None,
    };
    Some(PeerInfo {
        peer_id: Id::from_slice(&record.peer_id).ok()?,
        relay_id: Id::from_slice(&record.relay_id).ok()?,
        state,
        joined_at: time::from_unix_millis(record.joined_at_ms)?,
    })
}

/// Whether a relay refused an offer for lack of room (full, the session
/// full there, too many connections being set up, draining): another relay
/// may take it.
fn is_out_of_room(failure: &pb::RelayFailure) -> bool {
    use pb::RelayFailureCode as Code;
    matches!(
        Code::try_from(failure.code),
        Ok(Code::Full | Code::SessionFull | Code::TooManyPending | Code::ShuttingDown)
    )
}

/// A relay's peer id, which must be 16 bytes.
fn peer_id_from(relay_id: Id, bytes: &[u8]) -> Result<Id, NetworkError> {
    Id::from_slice(bytes).map_err(|_| {
        NetworkError::Unavailable(format!("relay {relay_id} answered with an invalid peer id"))
    })
}

impl FleetNetwork {
    /// Places a new peer of `session` and asks the placed relay `request`
    /// (an offer or a lane socket). A relay may refuse for room the
    /// registry thought it had (its load is a heartbeat old): the peer is
    /// placed again elsewhere, and the last refusal is the answer if no
    /// relay takes it. Any other failure is the answer at once.
    async fn place_and_ask(
        &self,
        session: &str,
        request: relay_request::Request,
        trace: &Context,
        what: &'static str,
    ) -> Result<(Id, relay_reply::Reply), NetworkError> {
        let mut gone = Vec::new();
        let mut refused = None;
        for _ in 0..MAX_PLACEMENTS {
            let relay_id = match self.place(session, &gone, trace).await {
                Ok(relay_id) => relay_id,
                Err(error) => return Err(refused.unwrap_or(error)),
            };
            let reply = match self.ask(relay_id, request.clone(), trace, what).await? {
                Asked::Reply(reply) => reply,
                Asked::NoResponders => {
                    tracing::warn!(relay = %relay_id, "placed relay has no responders; placing again");
                    gone.push(relay_id);
                    continue;
                }
            };
            return match reply {
                relay_reply::Reply::Failure(failure) if is_out_of_room(&failure) => {
                    tracing::info!(relay = %relay_id, detail = %failure.detail, "placed relay has no room; placing again");
                    gone.push(relay_id);
                    refused = Some(NetworkError::from(failure));
                    continue;
                }
                relay_reply::Reply::Failure(failure) => Err(NetworkError::from(failure)),
                reply => Ok((relay_id, reply)),
            };
        }
        Err(refused.unwrap_or_else(|| {
            NetworkError::Unavailable(format!(
                "none of the {} relays placed on is reachable",
                gone.len()
            ))
        }))
    }
}

impl Network for FleetNetwork {
    async fn connect(&self, request: ConnectRequest) -> Result<Connected, NetworkError> {
        let offer = relay_request::Request::Offer(pb::OfferRequest {
            session: request.session.clone(),
            identity: request.identity,
            grants: Some(request.grants.into()),
            offer_sdp: request.offer_sdp,
        });
        let (relay_id, reply) = self
            .place_and_ask(
                &request.session,
                offer,
                &request.trace,
                "the relay's answer",
            )
            .await?;
        match reply {
            relay_reply::Reply::Answer(answer) => Ok(Connected {
                peer_id: peer_id_from(relay_id, &answer.peer_id)?,
                relay_id,
                answer_sdp: answer.answer_sdp,
                ice_ufrag: answer.ice_ufrag,
            }),
            _ => Err(NetworkError::Unavailable(format!(
                "relay {relay_id} did not answer the offer"
            ))),
        }
    }

    async fn open_socket(&self, request: SocketRequest) -> Result<SocketPlaced, NetworkError> {
        let socket = relay_request::Request::Socket(pb::SocketRequest {
            session: request.session.clone(),
            identity: request.identity,
            grants: Some(request.grants.into()),
        });
        let (relay_id, reply) = self
            .place_and_ask(
                &request.session,
                socket,
                &request.trace,
                "the relay's ticket",
            )
            .await?;
        match reply {
            relay_reply::Reply::Ticket(ticket) => Ok(SocketPlaced {
                peer_id: peer_id_from(relay_id, &ticket.peer_id)?,
                relay_id,
                url: ticket.url,
            }),
            _ => Err(NetworkError::Unavailable(format!(
                "relay {relay_id} did not answer with a ticket"
            ))),
        }
    }

    async fn trickle(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        if_match: Option<&str>,
        candidates: Vec<String>,
    ) -> Result<(), NetworkError> {
        NetworkError::refuse_ice_restart(if_match)?;
        let request = relay_request::Request::Trickle(pb::TrickleRequest {
            session: session.to_owned(),
            peer_id: peer.as_bytes().to_vec(),
            identity: identity.to_owned(),
            if_match: if_match.map(str::to_owned),
            candidates,
        });
        self.ask_host_done(session, peer, identity, request).await
    }

    async fn restart_ice(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        restart: IceRestartRequest,
    ) -> Result<IceRestartAnswer, NetworkError> {
        let request = relay_request::Request::IceRestart(pb::IceRestartRequest {
            session: session.to_owned(),
            peer_id: peer.as_bytes().to_vec(),
            identity: identity.to_owned(),
            ufrag: restart.ufrag,
            pwd: restart.pwd,
            candidates: restart.candidates,
        });
        match self.ask_host(session, peer, identity, request).await? {
            (_, relay_reply::Reply::Restarted(restarted)) => Ok(IceRestartAnswer {
                ufrag: restarted.ice_ufrag,
                pwd: restarted.ice_pwd,
                candidates: restarted.candidates,
            }),
            (relay, _) => Err(NetworkError::Unavailable(format!(
                "relay {relay} did not answer the ICE restart"
            ))),
        }
    }

    async fn disconnect(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
    ) -> Result<(), NetworkError> {
        let request = relay_request::Request::Disconnect(pb::DisconnectRequest {
            session: session.to_owned(),
            peer_id: peer.as_bytes().to_vec(),
            identity: identity.to_owned(),
        });
        self.ask_host_done(session, peer, identity, request).await
    }

    async fn peers(&self, session: &str) -> Result<Vec<PeerInfo>, NetworkError> {
        let request = self.registry_request(
            pb::ListPeersRequest {
                session: session.to_owned(),
            },
            &Context::new(),
        );
        let mut client = self.registry.clone();
        let listed = self
            .registry_call(client.list_peers(request))
            .await
            .map_err(registry_error)?;
        Ok(listed
            .peers
            .iter()
            .filter_map(|record| {
                let info = peer_info(record);
                if info.is_none() {
                    tracing::warn!(session, "skipping a malformed peer record");
                }
                info
            })
            .collect())
    }

    fn readiness(&self) -> Result<(), String> {
        match self.nats.connection_state() {
            State::Connected => Ok(()),
            State::Pending | State::Disconnected => Err("NATS is unreachable".into()),
        }
    }
}

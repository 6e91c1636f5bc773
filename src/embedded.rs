//! The in-process [`Network`]: signal asks the registry's placement rule for
//! a relay and calls that relay's handle directly.

use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_registry::{PlacementError, RelayLoad, place};
use deltamesh_relay::{MemberState, PeerAccess, RelayError, RelayHandle};
use deltamesh_signal::{ConnectRequest, Connected, Network, NetworkError, PeerInfo, PeerState};

/// How long a relay may take to answer an offer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(5);
/// What a full relay asks clients to wait.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(2);
/// What a relay busy setting up connections asks clients to wait.
const PENDING_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Signal's view of relays running in this process.
pub struct EmbeddedNetwork {
    relays: Vec<RelayHandle>,
}

impl EmbeddedNetwork {
    /// A network of these relays.
    pub fn new(relays: Vec<RelayHandle>) -> Self {
        EmbeddedNetwork { relays }
    }

    fn relay(&self, id: Id) -> Option<&RelayHandle> {
        self.relays.iter().find(|r| r.id() == id)
    }

    /// The relay hosting `peer`, once it is known to belong to `identity`.
    fn hosting(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
    ) -> Result<&RelayHandle, NetworkError> {
        let relay = self
            .relays
            .iter()
            .find(|r| r.members(session).iter().any(|m| m.peer_id == peer))
            .ok_or(NetworkError::UnknownPeer)?;
        relay
            .check_owner(session, peer, identity)
            .map_err(network_error)?;
        Ok(relay)
    }
}

fn network_error(error: RelayError) -> NetworkError {
    match error {
        RelayError::BadOffer(detail) | RelayError::BadCandidate(detail) => {
            NetworkError::BadOffer(detail)
        }
        RelayError::Full => NetworkError::NoCapacity {
            reason: "the relay is full".into(),
            retry_after: FULL_RETRY_AFTER,
        },
        RelayError::TooManyPending => NetworkError::NoCapacity {
            reason: "too many connections are being set up".into(),
            retry_after: PENDING_RETRY_AFTER,
        },
        RelayError::SessionFull { limit } => NetworkError::SessionFull {
            limit,
            retry_after: FULL_RETRY_AFTER,
        },
        RelayError::UnknownPeer => NetworkError::UnknownPeer,
        RelayError::NotOwner => NetworkError::NotOwner,
        RelayError::EtagMismatch => NetworkError::EtagMismatch,
        RelayError::ShuttingDown => NetworkError::Unavailable("relay is shutting down".into()),
        other => NetworkError::Unavailable(other.to_string()),
    }
}

impl Network for EmbeddedNetwork {
    async fn connect(&self, request: ConnectRequest) -> Result<Connected, NetworkError> {
        let loads: Vec<RelayLoad> = self
            .relays
            .iter()
            .map(|relay| RelayLoad {
                id: relay.id(),
                peers: relay.peer_count(),
                capacity: relay.capacity(),
                draining: false,
                hosts_session: !relay.members(&request.session).is_empty(),
            })
            .collect();
        let relay_id =
            place(&loads, |n| fastrand::usize(..n)).map_err(|PlacementError::NoCapacity| {
                NetworkError::NoCapacity {
                    reason: "every relay is full or draining".into(),
                    retry_after: FULL_RETRY_AFTER,
                }
            })?;
        let relay = self
            .relay(relay_id)
            .ok_or_else(|| NetworkError::Unavailable("placed on an unknown relay".into()))?;
        let answer = tokio::time::timeout(
            OFFER_TIMEOUT,
            relay.offer(
                &request.session,
                &request.offer_sdp,
                PeerAccess {
                    identity: request.identity.into(),
                    grants: request.grants,
                },
                &request.trace,
            ),
        )
        .await
        .map_err(|_| NetworkError::Timeout("the relay's answer"))?
        .map_err(network_error)?;
        Ok(Connected {
            peer_id: answer.peer_id,
            relay_id,
            answer_sdp: answer.answer_sdp,
            ice_ufrag: answer.ice_ufrag,
        })
    }

    async fn trickle(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        if_match: Option<&str>,
        candidates: Vec<String>,
    ) -> Result<(), NetworkError> {
        if if_match == Some("*") {
            return Err(NetworkError::Unsupported(
                "ICE restart; reconnect with a new offer",
            ));
        }
        self.hosting(session, peer, identity)?
            .trickle(session, peer, if_match, &candidates)
            .await
            .map_err(network_error)
    }

    async fn disconnect(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
    ) -> Result<(), NetworkError> {
        self.hosting(session, peer, identity)?
            .disconnect(session, peer, "deleted by client")
            .await
            .map_err(network_error)
    }

    async fn peers(&self, session: &str) -> Result<Vec<PeerInfo>, NetworkError> {
        Ok(self
            .relays
            .iter()
            .flat_map(|relay| {
                relay.members(session).into_iter().map(|m| PeerInfo {
                    peer_id: m.peer_id,
                    relay_id: relay.id(),
                    state: match m.state {
                        MemberState::Connecting => PeerState::Connecting,
                        MemberState::Connected => PeerState::Connected,
                    },
                    joined_at: m.joined_at,
                })
            })
            .collect())
    }

    fn readiness(&self) -> Result<(), String> {
        if self.relays.iter().any(|r| r.peer_count() < r.capacity()) {
            Ok(())
        } else {
            Err("no relay has capacity".into())
        }
    }
}

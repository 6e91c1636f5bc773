//! The in-process [`Network`]: signal asks the registry's placement rule for
//! a relay and calls that relay's handle directly.

use std::time::Duration;

use deltamesh_proto::Id;
use deltamesh_registry::{PlacementError, RelayLoad, place};
use deltamesh_relay::fleet::control;
use deltamesh_relay::{MemberState, PeerAccess, RelayError, RelayHandle};
use deltamesh_signal::{
    ConnectRequest, Connected, IceRestartAnswer, IceRestartRequest, Network, NetworkError,
    PeerInfo, PeerState, SocketPlaced, SocketRequest,
};

/// How long a relay may take to answer an offer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(5);

/// Signal's view of relays running in this process.
pub struct EmbeddedNetwork {
    relays: Vec<RelayHandle>,
}

impl EmbeddedNetwork {
    /// A network of these relays.
    pub fn new(relays: Vec<RelayHandle>) -> Self {
        EmbeddedNetwork { relays }
    }

    /// The relay placement picks for a new peer of `session`.
    fn place(&self, session: &str) -> Result<(Id, &RelayHandle), NetworkError> {
        let loads: Vec<RelayLoad> = self
            .relays
            .iter()
            .map(|relay| RelayLoad {
                id: relay.id(),
                peers: relay.peer_count(),
                capacity: relay.capacity(),
                draining: false,
                hosts_session: !relay.members(session).is_empty(),
            })
            .collect();
        let relay_id = place(&loads, |n| fastrand::usize(..n))
            .map_err(|PlacementError::NoCapacity| NetworkError::no_relay_room(None))?;
        let relay = self
            .relay(relay_id)
            .ok_or_else(|| NetworkError::Unavailable("placed on an unknown relay".into()))?;
        Ok((relay_id, relay))
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

/// A relay's refusal as signal tells it: through the failure code it
/// travels as in a fleet, so both stacks answer the same.
fn network_error(error: RelayError) -> NetworkError {
    NetworkError::from(control::failure(error))
}

impl Network for EmbeddedNetwork {
    async fn connect(&self, request: ConnectRequest) -> Result<Connected, NetworkError> {
        let (relay_id, relay) = self.place(&request.session)?;
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

    async fn open_socket(&self, request: SocketRequest) -> Result<SocketPlaced, NetworkError> {
        let (relay_id, relay) = self.place(&request.session)?;
        let access = PeerAccess {
            identity: request.identity.into(),
            grants: request.grants,
        };
        let ticket = tokio::time::timeout(
            OFFER_TIMEOUT,
            relay.open_socket(&request.session, access, &request.trace),
        )
        .await
        .map_err(|_| NetworkError::Timeout("the relay's ticket"))?
        .map_err(network_error)?;
        Ok(SocketPlaced {
            peer_id: ticket.peer_id,
            relay_id,
            url: ticket.url,
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
        NetworkError::refuse_ice_restart(if_match)?;
        self.hosting(session, peer, identity)?
            .trickle(session, peer, if_match, &candidates)
            .await
            .map_err(network_error)
    }

    async fn restart_ice(
        &self,
        session: &str,
        peer: Id,
        identity: &str,
        restart: IceRestartRequest,
    ) -> Result<IceRestartAnswer, NetworkError> {
        let restarted = self
            .hosting(session, peer, identity)?
            .restart_ice(
                session,
                peer,
                &restart.ufrag,
                &restart.pwd,
                &restart.candidates,
            )
            .await
            .map_err(network_error)?;
        Ok(IceRestartAnswer {
            ufrag: restarted.ice_ufrag,
            pwd: restarted.ice_pwd,
            candidates: restarted.candidates,
        })
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

//! A relay's control subject: signal's offers, lane sockets, trickles, ICE
//! restarts and disconnects arrive over NATS request/reply as
//! `RelayRequest`s and are answered with `RelayReply`s. Every request is
//! checked before it reaches the relay; a malformed one gets `BAD_REQUEST`,
//! never silence. An offer's trace arrives in the message's `traceparent`
//! and `tracestate` headers.

use deltamesh_proto::fleet::pb;
use deltamesh_proto::session::is_valid_session;
use deltamesh_proto::trace;
use deltamesh_proto::{Grants, Id};
use futures_util::StreamExt;
use opentelemetry::Context;
use prost::Message;

use crate::{PeerAccess, RelayError, RelayHandle};

/// Longest identity accepted in a request (token subjects are short).
const MAX_IDENTITY: usize = 1024;
/// Most trickled candidates in one request.
const MAX_CANDIDATES: usize = 64;
/// Shortest `ice-ufrag` of an ICE restart (RFC 8839 §5.4).
const MIN_UFRAG: usize = 4;
/// Shortest `ice-pwd` of an ICE restart (RFC 8839 §5.4).
const MIN_PWD: usize = 22;
/// Longest `ice-ufrag` or `ice-pwd`.
const MAX_ICE_CREDENTIAL: usize = 256;

/// Answers the control requests arriving on `requests` (the relay's
/// control subject) until the subscription ends.
pub async fn answer(
    nats: async_nats::Client,
    relay: RelayHandle,
    mut requests: async_nats::Subscriber,
) {
    while let Some(request) = requests.next().await {
        let Some(reply_to) = request.reply.clone() else {
            continue;
        };
        let (nats, relay) = (nats.clone(), relay.clone());
        let headers = request.headers.as_ref();
        let trace = trace::extract(|name| Some(headers?.get(name)?.as_str()));
        tokio::spawn(async move {
            let reply = handle(&relay, &request.payload, &trace).await;
            if let Err(error) = nats.publish(reply_to, reply.encode_to_vec().into()).await {
                tracing::warn!(%error, "cannot answer a control request");
            }
        });
    }
}

/// The answer to one encoded `RelayRequest`, part of `trace`.
pub async fn handle(relay: &RelayHandle, bytes: &[u8], trace: &Context) -> pb::RelayReply {
    let outcome = match pb::RelayRequest::decode(bytes) {
        Ok(pb::RelayRequest {
            request: Some(request),
        }) => run(relay, request, trace).await,
        Ok(_) => Err(bad_request("empty request")),
        Err(error) => Err(bad_request(&format!("undecodable request: {error}"))),
    };
    pb::RelayReply {
        reply: Some(outcome.unwrap_or_else(pb::relay_reply::Reply::Failure)),
    }
}

async fn run(
    relay: &RelayHandle,
    request: pb::relay_request::Request,
    trace: &Context,
) -> Result<pb::relay_reply::Reply, pb::RelayFailure> {
    use pb::relay_request::Request;
    match request {
        Request::Offer(offer) => {
            check_session(&offer.session)?;
            check_identity(&offer.identity)?;
            let access = PeerAccess {
                identity: offer.identity.into(),
                grants: offer.grants.map(Grants::from).unwrap_or_default(),
            };
            let answer = relay
                .offer(&offer.session, &offer.offer_sdp, access, trace)
                .await
                .map_err(failure)?;
            Ok(pb::relay_reply::Reply::Answer(pb::OfferAnswer {
                peer_id: answer.peer_id.0.to_vec(),
                answer_sdp: answer.answer_sdp,
                ice_ufrag: answer.ice_ufrag,
            }))
        }
        Request::Socket(socket) => {
            check_session(&socket.session)?;
            check_identity(&socket.identity)?;
            let access = PeerAccess {
                identity: socket.identity.into(),
                grants: socket.grants.map(Grants::from).unwrap_or_default(),
            };
            let ticket = relay
                .open_socket(&socket.session, access, trace)
                .await
                .map_err(failure)?;
            Ok(pb::relay_reply::Reply::Ticket(pb::SocketTicket {
                peer_id: ticket.peer_id.0.to_vec(),
                url: ticket.url,
            }))
        }
        Request::Trickle(trickle) => {
            let peer = check_peer(&trickle.session, &trickle.peer_id, &trickle.identity)?;
            if trickle.candidates.len() > MAX_CANDIDATES {
                return Err(bad_request("too many candidates"));
            }
            relay
                .check_owner(&trickle.session, peer, &trickle.identity)
                .map_err(failure)?;
            relay
                .trickle(
                    &trickle.session,
                    peer,
                    trickle.if_match.as_deref(),
                    &trickle.candidates,
                )
                .await
                .map_err(failure)?;
            Ok(pb::relay_reply::Reply::Done(pb::Done {}))
        }
        Request::IceRestart(restart) => {
            let peer = check_peer(&restart.session, &restart.peer_id, &restart.identity)?;
            check_ice_credential(&restart.ufrag, MIN_UFRAG, "ufrag")?;
            check_ice_credential(&restart.pwd, MIN_PWD, "pwd")?;
            if restart.candidates.len() > MAX_CANDIDATES {
                return Err(bad_request("too many candidates"));
            }
            relay
                .check_owner(&restart.session, peer, &restart.identity)
                .map_err(failure)?;
            let restarted = relay
                .restart_ice(
                    &restart.session,
                    peer,
                    &restart.ufrag,
                    &restart.pwd,
                    &restart.candidates,
                )
                .await
                .map_err(failure)?;
            Ok(pb::relay_reply::Reply::Restarted(pb::IceRestarted {
                ice_ufrag: restarted.ice_ufrag,
                ice_pwd: restarted.ice_pwd,
                candidates: restarted.candidates,
            }))
        }
        Request::Disconnect(disconnect) => {
            let peer = check_peer(
                &disconnect.session,
                &disconnect.peer_id,
                &disconnect.identity,
            )?;
            relay
                .check_owner(&disconnect.session, peer, &disconnect.identity)
                .map_err(failure)?;
            relay
                .disconnect(&disconnect.session, peer, "deleted by client")
                .await
                .map_err(failure)?;
            Ok(pb::relay_reply::Reply::Done(pb::Done {}))
        }
    }
}

fn check_session(session: &str) -> Result<(), pb::RelayFailure> {
    if is_valid_session(session) {
        Ok(())
    } else {
        Err(bad_request("invalid session name"))
    }
}

fn check_identity(identity: &str) -> Result<(), pb::RelayFailure> {
    if identity.is_empty() || identity.len() > MAX_IDENTITY {
        Err(bad_request("identity must be 1 to 1024 bytes"))
    } else {
        Ok(())
    }
}

fn check_peer(session: &str, peer: &[u8], identity: &str) -> Result<Id, pb::RelayFailure> {
    check_session(session)?;
    check_identity(identity)?;
    Id::from_slice(peer).map_err(|error| bad_request(&error.to_string()))
}

/// An `ice-ufrag` or `ice-pwd` of `min` to 256 ice-chars (ALPHA, DIGIT,
/// `+`, `/`), as signal checks it before it asks.
fn check_ice_credential(value: &str, min: usize, name: &str) -> Result<(), pb::RelayFailure> {
    let ice_char = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    if (min..=MAX_ICE_CREDENTIAL).contains(&value.len()) && value.bytes().all(ice_char) {
        Ok(())
    } else {
        Err(bad_request(&format!(
            "ice-{name} must be {min} to {MAX_ICE_CREDENTIAL} ice-chars"
        )))
    }
}

fn bad_request(detail: &str) -> pb::RelayFailure {
    pb::RelayFailure {
        code: pb::RelayFailureCode::BadRequest.into(),
        detail: detail.to_owned(),
        limit: 0,
    }
}

/// A relay's refusal as it travels back to signal: the one mapping of a
/// [`RelayError`] to a failure code, which the one-process stack converts
/// through too (signal turns the code into its answer).
pub fn failure(error: RelayError) -> pb::RelayFailure {
    use pb::RelayFailureCode as Code;
    let detail = error.to_string();
    let (code, limit) = match error {
        RelayError::BadOffer(_) | RelayError::BadCandidate(_) => (Code::BadOffer, 0),
        RelayError::Full => (Code::Full, 0),
        RelayError::SessionFull { limit } => {
            (Code::SessionFull, u32::try_from(limit).unwrap_or(u32::MAX))
        }
        RelayError::TooManyPending => (Code::TooManyPending, 0),
        RelayError::UnknownPeer => (Code::UnknownPeer, 0),
        RelayError::NotOwner => (Code::NotOwner, 0),
        RelayError::EtagMismatch => (Code::EtagMismatch, 0),
        RelayError::ShuttingDown => (Code::ShuttingDown, 0),
    };
    pb::RelayFailure {
        code: code.into(),
        detail,
        limit,
    }
}

//! Presence across relays (PROTOCOL §8) over core NATS, not JetStream:
//! nothing of it is stored. Each session has one subject,
//! [`session_subject`]; the relay that holds a peer publishes that peer's
//! states there (the latest only: local changes are coalesced per peer, as
//! on the board), and a `gone` when it leaves, in order. Every relay that
//! hosts peers of the session subscribes to it while it does.
//!
//! A relay that starts hosting a session learns the current states of the
//! session's peers elsewhere by asking once: it subscribes first, then
//! publishes a `sync` on the session subject with its own inbox
//! ([`sync_inbox`]) as the reply subject, and every other relay hosting the
//! session answers there with its local peers' states. Versions sort out
//! the overlap of answers and live states; a removed peer stays removed.
//!
//! Every message is `kind (1) | relay id (16) | body`: `state` carries a
//! relayed [`PresenceState`] (`peer_id | version | state`), `gone` a peer
//! id, `sync` nothing. A relay ignores its own messages.

use std::sync::Arc;

use deltamesh_proto::Id;
use deltamesh_proto::fleet::session_token;
use deltamesh_proto::presence::PresenceState;
use futures_util::StreamExt;

use crate::RelayHandle;
use crate::presence::{PresenceChanges, Stored};
use crate::wake::News;

const STATE: u8 = 1;
const GONE: u8 = 2;
const SYNC: u8 = 3;
/// Kind and relay id.
const PREFIX_LEN: usize = 17;

/// The subject a session's presence travels on between relays.
pub(crate) fn session_subject(session: &str) -> String {
    format!("dm.presence.{}", session_token(session))
}

/// Where `relay` takes the answers to its `sync` for `session`.
pub(crate) fn sync_inbox(relay: Id, session: &str) -> String {
    format!("dm.relay.{relay}.presence.{}", session_token(session))
}

fn message(kind: u8, relay: Id, body: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
    out.push(kind);
    out.extend_from_slice(&relay.0);
    out.extend_from_slice(body);
    out.into()
}

fn state_message(relay: Id, peer: Id, stored: &Stored) -> bytes::Bytes {
    let state = PresenceState {
        peer_id: peer,
        version: stored.version,
        state: &stored.state,
    };
    message(STATE, relay, &state.encode())
}

/// Publishes the relay's local presence changes, latest first-come, for as
/// long as it runs.
pub(crate) async fn publish(
    relay: RelayHandle,
    nats: async_nats::Client,
    changes: Arc<PresenceChanges>,
) {
    let shared = Arc::clone(relay.shared());
    loop {
        changes.notified().await;
        for (session, peer) in changes.take() {
            let payload = match shared.presence.get(&session, peer) {
                Some(stored) if stored.local => state_message(relay.id(), peer, &stored),
                Some(_) => continue,
                None => message(GONE, relay.id(), &peer.0),
            };
            if let Err(error) = nats.publish(session_subject(&session), payload).await {
                tracing::warn!(%session, %error, "cannot publish a presence change");
            }
        }
    }
}

/// The subscriptions of one hosted session's presence, made before the
/// relay's peers of it are announced, so no state published after that is
/// missed.
pub(crate) struct Subscriptions {
    states: async_nats::Subscriber,
    answers: async_nats::Subscriber,
}

/// Subscribes to `session`'s presence and to the answers to this relay's `sync`.
pub(crate) async fn subscribe(
    nats: &async_nats::Client,
    relay: Id,
    session: &str,
) -> Result<Subscriptions, async_nats::SubscribeError> {
    Ok(Subscriptions {
        states: nats.subscribe(session_subject(session)).await?,
        answers: nats.subscribe(sync_inbox(relay, session)).await?,
    })
}

/// Asks the other relays for `session`'s current states, then takes every
/// state, `gone` and `sync` of the session until aborted.
pub(crate) async fn follow(
    relay: RelayHandle,
    nats: async_nats::Client,
    session: Arc<str>,
    subscriptions: Subscriptions,
) {
    let ask = nats
        .publish_with_reply(
            session_subject(&session),
            sync_inbox(relay.id(), &session),
            message(SYNC, relay.id(), &[]),
        )
        .await;
    if let Err(error) = ask {
        tracing::warn!(%session, %error, "cannot ask for the session's presence");
    }
    let mut messages = futures_util::stream::select(subscriptions.states, subscriptions.answers);
    while let Some(incoming) = messages.next().await {
        on_message(&relay, &nats, &session, &incoming).await;
    }
}

async fn on_message(
    relay: &RelayHandle,
    nats: &async_nats::Client,
    session: &Arc<str>,
    incoming: &async_nats::Message,
) {
    let bytes = &incoming.payload;
    if bytes.len() < PREFIX_LEN {
        return;
    }
    let Ok(from) = Id::from_slice(&bytes[1..PREFIX_LEN]) else {
        return;
    };
    let shared = relay.shared();
    if from == relay.id() || !shared.directory.hosts(session) {
        return;
    }
    let body = &bytes[PREFIX_LEN..];
    match bytes[0] {
        STATE => {
            if let Some(state) = PresenceState::parse(body)
                && shared
                    .presence
                    .put(session, state.peer_id, state.version, state.state, false)
            {
                shared.directory.wake(session, News::PRESENCE);
            }
        }
        GONE => {
            if let Ok(peer) = Id::from_slice(body) {
                shared.presence.remove(session, peer);
            }
        }
        SYNC => {
            let Some(reply) = incoming.reply.clone() else {
                return;
            };
            let mut states = Vec::new();
            shared.presence.states(session, true, &mut states);
            for (peer, stored) in &states {
                let payload = state_message(relay.id(), *peer, stored);
                if let Err(error) = nats.publish(reply.clone(), payload).await {
                    tracing::warn!(%session, %error, "cannot answer a presence sync");
                    return;
                }
            }
        }
        _ => {}
    }
}

//! Direct messages across relays (PROTOCOL §9) over core NATS: a message
//! for a peer on another relay is published on [`recipient_subject`]
//! (session and recipient in the subject, so the recipient's relay, which
//! subscribes to its hosted sessions' [`session_subjects`], can tell a
//! message for a peer of another session and drop it). The body is the
//! sender's id (16 bytes) then the payload. One relay publishes in the
//! order its peers sent and NATS keeps a publisher's order on a
//! subscription, so one sender's messages to one recipient arrive in order.
//! Nothing is stored.

use std::sync::Arc;

use deltamesh_proto::Id;
use deltamesh_proto::fleet::session_token;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::RelayHandle;
use crate::wake::DirectMessage;

/// The subject a direct message for `peer` of `session` travels on.
pub(crate) fn recipient_subject(session: &str, peer: Id) -> String {
    format!("dm.signal.{}.{peer}", session_token(session))
}

/// The subjects of every recipient of `session`.
pub(crate) fn session_subjects(session: &str) -> String {
    format!("dm.signal.{}.*", session_token(session))
}

/// Publishes the direct messages for peers on other relays, in order.
pub(crate) async fn publish(nats: async_nats::Client, mut messages: mpsc::Receiver<DirectMessage>) {
    while let Some(message) = messages.recv().await {
        let mut body = Vec::with_capacity(16 + message.payload.len());
        body.extend_from_slice(&message.from.0);
        body.extend_from_slice(&message.payload);
        let subject = recipient_subject(&message.session, message.to);
        if let Err(error) = nats.publish(subject, body.into()).await {
            tracing::warn!(session = %message.session, %error, "cannot publish a direct message");
        }
    }
}

/// Hands the direct messages arriving for `session`'s peers to them.
pub(crate) async fn follow(
    relay: RelayHandle,
    session: Arc<str>,
    mut incoming: async_nats::Subscriber,
) {
    while let Some(message) = incoming.next().await {
        let recipient = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|token| token.parse::<Id>().ok());
        let (Some(to), Some(from)) = (
            recipient,
            message
                .payload
                .get(..16)
                .and_then(|b| Id::from_slice(b).ok()),
        ) else {
            continue;
        };
        let delivered = relay.shared().deliver_signal_here(DirectMessage {
            session: Arc::clone(&session),
            from,
            to,
            payload: message.payload[16..].to_vec(),
        });
        if !delivered {
            tracing::debug!(%session, peer = %to, "direct message for a peer not here; dropped");
        }
    }
}

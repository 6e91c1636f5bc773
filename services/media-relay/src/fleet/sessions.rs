//! What a relay follows of each session it hosts besides membership: the
//! session's presence ([`presence`](super::presence)) and the direct
//! messages for its peers ([`direct`](super::direct)). The subscriptions are
//! made before the relay's first peer of the session is announced as
//! connected (same NATS connection, so the server has them first), and end
//! when the relay hosts no peer of the session any more.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{direct, presence};
use crate::RelayHandle;

/// The hosted sessions' subscriptions, one task each.
pub(crate) struct SessionLinks {
    relay: RelayHandle,
    nats: async_nats::Client,
    followed: HashMap<Arc<str>, [JoinHandle<()>; 2]>,
}

impl SessionLinks {
    /// None followed yet.
    pub(crate) fn new(relay: RelayHandle, nats: async_nats::Client) -> Self {
        SessionLinks {
            relay,
            nats,
            followed: HashMap::new(),
        }
    }

    /// Follows `session` while `hosted`, and stops following it when not.
    pub(crate) async fn update(&mut self, session: &Arc<str>, hosted: bool) {
        if !hosted {
            if let Some(tasks) = self.followed.remove(session) {
                tasks.iter().for_each(JoinHandle::abort);
                if !self.relay.shared().directory.hosts(session) {
                    self.relay.shared().presence.forget(session);
                }
            }
            return;
        }
        if self.followed.contains_key(session) {
            return;
        }
        let subscribed = async {
            let states = presence::subscribe(&self.nats, self.relay.id(), session).await?;
            let signals = self
                .nats
                .subscribe(direct::session_subjects(session))
                .await?;
            Ok::<_, async_nats::SubscribeError>((states, signals))
        };
        match subscribed.await {
            Ok((states, signals)) => {
                let presence = tokio::spawn(presence::follow(
                    self.relay.clone(),
                    self.nats.clone(),
                    Arc::clone(session),
                    states,
                ));
                let direct = tokio::spawn(direct::follow(
                    self.relay.clone(),
                    Arc::clone(session),
                    signals,
                ));
                self.followed
                    .insert(Arc::clone(session), [presence, direct]);
            }
            Err(error) => {
                tracing::warn!(%session, %error, "cannot follow the session's presence and direct messages");
            }
        }
    }
}

impl Drop for SessionLinks {
    fn drop(&mut self) {
        for tasks in self.followed.values() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

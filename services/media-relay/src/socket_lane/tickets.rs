//! Tickets for the WebSocket lane: each names one admitted peer on one
//! shard, is redeemed at most once, and expires after
//! [`TICKET_LIFETIME`](super::TICKET_LIFETIME). The table holds one entry
//! per admitted peer still waiting for its socket, so it is bounded by the
//! relay's `max_pending`, and expired entries go on the next issue.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use deltamesh_proto::Id;

use super::TICKET_LIFETIME;

/// Who a redeemed ticket admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The shard holding the peer.
    pub(crate) shard: usize,
    /// The peer.
    pub(crate) peer: Id,
}

/// The relay's outstanding tickets.
#[derive(Default)]
pub(crate) struct Tickets {
    table: Mutex<HashMap<String, (Admitted, Instant)>>,
}

impl Tickets {
    /// A new ticket for `admitted`, issued at `now`: 256 random bits as hex.
    pub(crate) fn issue(&self, admitted: Admitted, now: Instant) -> String {
        let ticket = format!("{}{}", hex(Id::random()), hex(Id::random()));
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, (_, expires)| *expires > now);
        table.insert(ticket.clone(), (admitted, now + TICKET_LIFETIME));
        ticket
    }

    /// Who `ticket` admits, if it was issued, is unused and has not expired
    /// at `now`; it cannot be redeemed again.
    pub(crate) fn redeem(&self, ticket: &str, now: Instant) -> Option<Admitted> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (admitted, expires) = table.remove(ticket)?;
        (expires > now).then_some(admitted)
    }
}

fn hex(id: Id) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_redeemed_once_and_only_before_it_expires() {
        let tickets = Tickets::default();
        let now = Instant::now();
        let admitted = Admitted {
            shard: 1,
            peer: Id::random(),
        };
        let ticket = tickets.issue(admitted, now);
        assert_eq!(ticket.len(), 64);
        assert_eq!(tickets.redeem("nope", now), None);
        assert_eq!(tickets.redeem(&ticket, now), Some(admitted));
        assert_eq!(tickets.redeem(&ticket, now), None);
        let late = tickets.issue(admitted, now);
        assert_eq!(tickets.redeem(&late, now + TICKET_LIFETIME), None);
    }
}

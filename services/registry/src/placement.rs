//! Placement: pick a relay for a new peer of a session.
//!
//! Keep a session's peers together on a relay that already hosts it while it
//! has room (fewer cross-relay hops); otherwise power-of-two-choices on load
//! among relays that are live and not draining, which spreads load nearly as
//! well as picking the least loaded without herding every new peer onto it.

use deltamesh_proto::Id;

/// What placement knows of one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLoad {
    /// The relay's id.
    pub id: Id,
    /// Peers it hosts now.
    pub peers: usize,
    /// Peers it takes at most.
    pub capacity: usize,
    /// Whether it is shutting down (takes no new peers).
    pub draining: bool,
    /// Whether it already hosts peers of the session being placed.
    pub hosts_session: bool,
}

impl RelayLoad {
    fn has_room(&self) -> bool {
        !self.draining && self.peers < self.capacity
    }

    /// Fill ratio, for comparing relays of different capacity.
    fn load(&self) -> f64 {
        self.peers as f64 / self.capacity.max(1) as f64
    }
}

/// Why no relay was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Every relay is full, draining or gone.
    #[error("no relay has capacity")]
    NoCapacity,
}

/// Chooses a relay. `pick` returns a uniformly random index below its
/// argument (injected so placement stays deterministic under test).
pub fn place(
    relays: &[RelayLoad],
    mut pick: impl FnMut(usize) -> usize,
) -> Result<Id, PlacementError> {
    let open: Vec<&RelayLoad> = relays.iter().filter(|r| r.has_room()).collect();
    if let Some(home) = open
        .iter()
        .filter(|r| r.hosts_session)
        .min_by(|a, b| a.load().total_cmp(&b.load()))
    {
        return Ok(home.id);
    }
    match open.len() {
        0 => Err(PlacementError::NoCapacity),
        1 => Ok(open[0].id),
        n => {
            let a = open[pick(n)];
            let b = open[pick(n)];
            Ok(if b.load() < a.load() { b.id } else { a.id })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(n: u8, peers: usize, hosts_session: bool) -> RelayLoad {
        RelayLoad {
            id: Id([n; 16]),
            peers,
            capacity: 10,
            draining: false,
            hosts_session,
        }
    }

    #[test]
    fn a_session_stays_on_its_relay_while_it_has_room() {
        let relays = [relay(1, 0, false), relay(2, 9, true)];
        assert_eq!(place(&relays, |_| 0), Ok(Id([2; 16])));
        let relays = [relay(1, 0, false), relay(2, 10, true)];
        assert_eq!(place(&relays, |_| 1), Ok(Id([1; 16])));
    }

    #[test]
    fn of_two_random_choices_the_less_loaded_wins() {
        let relays = [relay(1, 8, false), relay(2, 1, false), relay(3, 5, false)];
        let mut picks = [0, 1].into_iter();
        assert_eq!(place(&relays, |_| picks.next().unwrap()), Ok(Id([2; 16])));
    }

    #[test]
    fn draining_and_full_relays_take_no_one() {
        let mut draining = relay(1, 0, true);
        draining.draining = true;
        let relays = [draining, relay(2, 10, false)];
        assert_eq!(place(&relays, |_| 0), Err(PlacementError::NoCapacity));
    }
}

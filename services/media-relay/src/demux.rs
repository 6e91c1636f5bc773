//! O(1) datagram demultiplexing for one shard's sockets: a map from remote
//! (transport and address) to peer for established paths, and for a remote
//! seen for the first time, the local ICE ufrag in its STUN USERNAME.
//! Nothing here scans the shard's peers. A UDP and a TCP path from the same
//! address are different remotes: each is learned on its own STUN check.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

use str0m::ice::StunMessage;
use str0m::net::Protocol;

/// Remote addresses one peer may be reached from (ICE candidate pairs); more
/// are refused so a peer cannot grow the map.
const MAX_ADDRS_PER_PEER: usize = 8;

/// Where a datagram came from: its transport and the remote's address
/// (for TCP, the connection's remote end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Remote {
    /// UDP, or TCP (RFC 4571 framed).
    pub(crate) proto: Protocol,
    /// The remote transport address.
    pub(crate) addr: SocketAddr,
}

impl Remote {
    /// A remote reached over UDP.
    pub(crate) fn udp(addr: SocketAddr) -> Self {
        Remote {
            proto: Protocol::Udp,
            addr,
        }
    }
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<K> {
    /// From a known remote address of this peer.
    Known(K),
    /// A STUN message naming this peer's ufrag from a new address; the peer
    /// must verify its integrity before the address is learned.
    Candidate(K),
    /// Nobody's.
    Unknown,
}

/// The shard's routing tables.
pub(crate) struct Demux<K> {
    by_addr: HashMap<Remote, K>,
    by_ufrag: HashMap<String, K>,
    addrs: HashMap<K, Vec<Remote>>,
}

impl<K: Copy + Eq + Hash> Default for Demux<K> {
    fn default() -> Self {
        Demux {
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            addrs: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    /// Registers a peer by its local ICE ufrag.
    pub(crate) fn add_peer(&mut self, key: K, local_ufrag: &str) {
        self.by_ufrag.insert(local_ufrag.to_owned(), key);
        self.addrs.insert(key, Vec::new());
    }

    /// Routes a peer's first checks by `new_ufrag` instead of `old_ufrag`
    /// (an ICE restart); its known addresses stay.
    pub(crate) fn rename_peer(&mut self, key: K, old_ufrag: &str, new_ufrag: &str) {
        if self.by_ufrag.get(old_ufrag) == Some(&key) {
            self.by_ufrag.remove(old_ufrag);
        }
        self.by_ufrag.insert(new_ufrag.to_owned(), key);
    }

    /// Forgets a peer and every address learned for it.
    pub(crate) fn remove_peer(&mut self, key: K, local_ufrag: &str) {
        self.by_ufrag.remove(local_ufrag);
        for addr in self.addrs.remove(&key).unwrap_or_default() {
            self.by_addr.remove(&addr);
        }
    }

    /// Routes a datagram from `source`.
    pub(crate) fn route(&self, source: Remote, datagram: &[u8]) -> Route<K> {
        if let Some(&key) = self.by_addr.get(&source) {
            return Route::Known(key);
        }
        // STUN messages start with two zero bits (RFC 7983).
        if datagram.first().is_some_and(|&b| b < 2)
            && let Ok(message) = StunMessage::parse(datagram)
            && let Some((local, _remote)) = message.split_username()
            && let Some(&key) = self.by_ufrag.get(local)
        {
            return Route::Candidate(key);
        }
        Route::Unknown
    }

    /// Whether `remote` is a learned path of some peer.
    pub(crate) fn knows(&self, remote: Remote) -> bool {
        self.by_addr.contains_key(&remote)
    }

    /// Remembers that `key` is reached from `source`. Returns false when the
    /// peer already has its maximum number of addresses.
    pub(crate) fn learn(&mut self, key: K, source: Remote) -> bool {
        let Some(addrs) = self.addrs.get_mut(&key) else {
            return false;
        };
        if addrs.contains(&source) {
            return true;
        }
        if addrs.len() >= MAX_ADDRS_PER_PEER || self.by_addr.contains_key(&source) {
            return false;
        }
        addrs.push(source);
        self.by_addr.insert(source, key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_non_stun_datagrams_go_nowhere() {
        let mut demux = Demux::default();
        demux.add_peer(1u32, "abcd");
        let from = Remote::udp("127.0.0.1:5000".parse().unwrap());
        assert_eq!(demux.route(from, &[0x16, 0xfe, 0xfd]), Route::Unknown);
        assert_eq!(demux.route(from, &[]), Route::Unknown);
        assert!(demux.learn(1, from));
        assert_eq!(demux.route(from, &[0x16]), Route::Known(1));
        demux.remove_peer(1, "abcd");
        assert_eq!(demux.route(from, &[0x16]), Route::Unknown);
    }

    #[test]
    fn a_peer_cannot_claim_unbounded_addresses() {
        let mut demux = Demux::default();
        demux.add_peer(1u32, "abcd");
        for port in 0..MAX_ADDRS_PER_PEER as u16 {
            let addr = SocketAddr::from(([127, 0, 0, 1], 6000 + port));
            assert!(demux.learn(1, Remote::udp(addr)));
        }
        assert!(!demux.learn(1, Remote::udp("127.0.0.1:7000".parse().unwrap())));
    }

    #[test]
    fn udp_and_tcp_from_one_address_are_different_paths() {
        let mut demux = Demux::default();
        demux.add_peer(1u32, "abcd");
        demux.add_peer(2u32, "efgh");
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let tcp = Remote {
            proto: Protocol::Tcp,
            addr,
        };
        assert!(demux.learn(1, Remote::udp(addr)));
        assert_eq!(demux.route(tcp, &[0x16]), Route::Unknown);
        assert!(!demux.knows(tcp));
        assert!(demux.learn(2, tcp));
        assert_eq!(demux.route(tcp, &[0x16]), Route::Known(2));
        assert_eq!(demux.route(Remote::udp(addr), &[0x16]), Route::Known(1));
        demux.remove_peer(2, "efgh");
        assert!(!demux.knows(tcp));
        assert!(demux.knows(Remote::udp(addr)));
    }
}

//! Relays sharing a host and one UDP port range (replicas on a host
//! network behind one firewall rule) each bind the first free ports of it.

use std::collections::HashSet;
use std::sync::Arc;

use deltamesh_relay::{ChunkStore, MemoryLog, RelayConfig, RelayHandle, RelayMetrics};

async fn relay(first: u16, last: u16, shards: usize) -> std::io::Result<RelayHandle> {
    let log = Arc::new(MemoryLog::new(Arc::new(ChunkStore::new(1 << 16, 4))));
    let config = RelayConfig {
        udp_port: first,
        udp_port_last: Some(last),
        shards,
        ..RelayConfig::default()
    };
    deltamesh_relay::start(config, log, RelayMetrics::default()).await
}

/// A port that was free a moment ago, with the 15 after it.
fn free_base() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = socket.local_addr().expect("address").port();
    // Ephemeral ports stay well below 65520 on Linux (60999 by default).
    port.min(65_520)
}

#[tokio::test]
async fn relays_sharing_a_port_range_each_take_the_first_free_ports() {
    let first = free_base();
    let last = first + 15;
    let a = relay(first, last, 2).await.expect("first relay starts");
    let b = relay(first, last, 2).await.expect("second relay starts");
    let ports: Vec<u16> = a
        .udp_addrs()
        .iter()
        .chain(b.udp_addrs().iter())
        .map(|addr| addr.port())
        .collect();
    assert_eq!(ports.len(), 4);
    assert_eq!(
        ports.iter().collect::<HashSet<_>>().len(),
        4,
        "every shard has its own port: {ports:?}"
    );
    assert!(
        ports.iter().all(|p| (first..=last).contains(p)),
        "{ports:?} within {first}-{last}"
    );
    // A range with no free port left is a clear error, not a random port.
    let taken = a.udp_addrs()[0].port();
    let error = relay(taken, taken, 1)
        .await
        .err()
        .expect("no free port in a one-port range that is taken");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    assert!(error.to_string().contains("no free UDP port"), "{error}");
}

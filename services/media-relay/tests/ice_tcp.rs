//! The relay's ICE-TCP listeners under abuse, over real TCP on loopback: a
//! bad RFC 4571 length closes that connection only; a connection that
//! never carries a verified STUN check is reaped; unverified connections
//! are capped per relay, so a connect flood stays bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use deltamesh_relay::{ChunkStore, MemoryLog, RelayConfig, RelayHandle, RelayMetrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn relay(tweak: impl FnOnce(&mut RelayConfig)) -> (RelayHandle, RelayMetrics) {
    let log = Arc::new(MemoryLog::new(Arc::new(ChunkStore::new(1 << 16, 4))));
    let mut config = RelayConfig::default();
    tweak(&mut config);
    let metrics = RelayMetrics::default();
    let relay = deltamesh_relay::start(config, log, metrics.clone())
        .await
        .expect("relay starts");
    (relay, metrics)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("TCP connects")
}

/// Whether the relay closed `stream` within `wait` (end of stream or reset).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0u8; 64];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut byte)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Polls `condition` until it holds or `wait` passes.
async fn eventually(wait: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

#[tokio::test]
async fn a_bad_rfc4571_length_closes_that_connection_and_no_other() {
    let (relay, metrics) = relay(|_| {}).await;
    let addr = relay.tcp_addrs()[0];
    let mut bystander = connect(addr).await;
    // A well-framed datagram that is nobody's: ignored, not fatal.
    bystander.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
    for bad in [&[0u8, 0][..], &[0xff, 0xff], &[0x08, 0x01]] {
        let mut stream = connect(addr).await;
        stream.write_all(bad).await.unwrap();
        assert!(
            closed_within(&mut stream, Duration::from_secs(2)).await,
            "length {bad:?} closes the connection"
        );
    }
    assert_eq!(metrics.tcp.closes("bad_frame"), 3);
    assert!(
        !closed_within(&mut bystander, Duration::from_millis(300)).await,
        "the other connection stays open"
    );
    // The largest datagram is a valid frame.
    let mut largest = vec![0x08, 0x00];
    largest.extend_from_slice(&[0x16; 2048]);
    bystander.write_all(&largest).await.unwrap();
    assert!(!closed_within(&mut bystander, Duration::from_millis(300)).await);
    assert_eq!(metrics.tcp.closes("bad_frame"), 3);
}

#[tokio::test]
async fn a_connection_without_a_verified_stun_check_is_reaped() {
    let (relay, metrics) = relay(|c| c.tcp_verify_timeout = Duration::from_millis(400)).await;
    let addr = relay.tcp_addrs()[0];
    let mut silent = connect(addr).await;
    let mut chatty = connect(addr).await;
    // A STUN binding request naming no peer's ufrag, well framed.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    let mut framed = vec![0, stun.len() as u8];
    framed.extend_from_slice(&stun);
    assert!(eventually(Duration::from_secs(1), || metrics.tcp.unverified.get() == 2).await);
    for _ in 0..5 {
        chatty.write_all(&framed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed_within(&mut silent, Duration::from_secs(2)).await);
    assert!(closed_within(&mut chatty, Duration::from_secs(2)).await);
    assert_eq!(metrics.tcp.closes("unverified"), 2);
    assert!(eventually(Duration::from_secs(1), || metrics.tcp.unverified.get() == 0).await);
    assert_eq!(metrics.tcp.connections.get(), 0);
}

#[tokio::test]
async fn a_connect_flood_is_capped_per_relay_and_reaped() {
    let (relay, metrics) = relay(|c| {
        c.shards = 2;
        c.max_unverified_tcp = 8;
        c.tcp_verify_timeout = Duration::from_millis(500);
    })
    .await;
    let addrs = relay.tcp_addrs();
    assert_eq!(addrs.len(), 2, "one listener per shard");
    let mut flood = Vec::new();
    for i in 0..100 {
        flood.push(connect(addrs[i % 2]).await);
    }
    assert!(
        eventually(Duration::from_secs(2), || metrics.tcp.closes("refused")
            == 92)
        .await,
        "all but the cap are refused across both shards: {}",
        metrics.tcp.closes("refused")
    );
    assert_eq!(metrics.tcp.unverified.get(), 8);
    assert_eq!(metrics.tcp.connections.get(), 8);
    let mut open = 0;
    for stream in &mut flood {
        if !closed_within(stream, Duration::from_millis(10)).await {
            open += 1;
        }
    }
    assert!(open <= 8, "{open} connections stayed open");
    // The survivors are reaped, and the relay takes new connections again.
    assert!(eventually(Duration::from_secs(3), || metrics.tcp.unverified.get() == 0).await);
    assert_eq!(metrics.tcp.closes("unverified"), 8);
    let mut fresh = connect(addrs[0]).await;
    assert!(eventually(Duration::from_secs(1), || metrics.tcp.unverified.get() == 1).await);
    assert!(!closed_within(&mut fresh, Duration::from_millis(100)).await);
}

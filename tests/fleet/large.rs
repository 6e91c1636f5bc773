//! A 16 MiB delta across relays: JetStream carries it as parts (its
//! messages are at most 1 MiB), the other relay fetches and delivers it.

use std::time::{Duration, Instant};

use deltamesh_proto::fragment::DEFAULT_MAX_DELTA_SIZE;
use deltamesh_proto::frame::FRAME_HEADER_LEN;

use crate::common::{Fleet, TestPeer};

/// The largest payload a 16 MiB delta frame (header included) carries.
const LARGE: usize = DEFAULT_MAX_DELTA_SIZE - FRAME_HEADER_LEN;
/// Small deltas the receiving peer sends while the large one is on its way.
const SMALL: usize = 50;

/// `len` pseudo-random bytes (xorshift64*, seeded), not compressible.
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_delta_crosses_relays_once_under_one_seq_while_small_ones_flow() {
    // One peer per relay: the two peers are on different relays.
    let fleet = Fleet::start(1, 2, 1, 1).await;
    let signal = &fleet.signals[0].1;
    let mut sender = TestPeer::join(signal, "large-across").await;
    let mut receiver = TestPeer::join(signal, "large-across").await;
    assert_ne!(sender.relay, receiver.relay, "the peers are on two relays");

    let payload = random_bytes(LARGE, 0x1234_5678_9abc_def1);
    let crc = crc32c::crc32c(&payload);
    let started = Instant::now();
    let client_seq = sender
        .peer
        .send(16, Default::default(), payload)
        .await
        .expect("the large delta is queued");
    for n in 0..SMALL {
        receiver
            .peer
            .send(1, Default::default(), format!("small {n}").into_bytes())
            .await
            .expect("a small delta is queued");
    }
    let total = SMALL + 1;
    let (sent, received) = tokio::join!(
        sender.pump_until(Duration::from_secs(60), |p| {
            p.acked.contains(&client_seq) && p.received.len() >= total
        }),
        receiver.pump_until(Duration::from_secs(60), |p| {
            p.acked.len() >= SMALL && p.received.len() >= total
        }),
    );
    assert!(sent && received, "everything arrived on both relays");
    println!(
        "16 MiB delta across two relays: sent to delivered everywhere in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );

    assert_eq!(
        sender.received, receiver.received,
        "one order on both relays"
    );
    let large: Vec<_> = receiver
        .received
        .iter()
        .filter(|(_, p)| p.len() == LARGE)
        .collect();
    assert_eq!(large.len(), 1, "the large delta is there once");
    assert_eq!(crc32c::crc32c(large[0].1), crc, "intact");
    let mut seqs: Vec<u64> = receiver.received.keys().copied().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "gap-free");
    let mut smalls: Vec<(u64, &Vec<u8>)> = receiver
        .received
        .iter()
        .filter(|(_, p)| p.len() != LARGE)
        .map(|(s, p)| (*s, p))
        .collect();
    smalls.sort_unstable();
    let texts: Vec<Vec<u8>> = smalls.into_iter().map(|(_, p)| p.clone()).collect();
    let expected: Vec<Vec<u8>> = (0..SMALL)
        .map(|n| format!("small {n}").into_bytes())
        .collect();
    assert_eq!(texts, expected, "the small ones in the order sent");

    // Nothing more comes: no duplicate (a second delivery would panic).
    sender
        .pump_until(Duration::from_millis(500), |_| false)
        .await;
    receiver
        .pump_until(Duration::from_millis(500), |_| false)
        .await;
    sender.peer.close().await;
    receiver.peer.close().await;
}

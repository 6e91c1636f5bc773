//! The proto fuzzers' seed corpus (`proto/fuzz/corpus/<target>/seed-*`,
//! which `scripts/fuzz` starts from): a few valid inputs per target,
//! generated here from the crate's own builders.
//!
//! Regenerate after a wire change with
//! `UPDATE_SEEDS=1 cargo test -p deltamesh-proto --test seed_corpus`.

use std::fs;
use std::path::PathBuf;

use deltamesh_proto::pb::{self, command::Body};
use deltamesh_proto::{
    DeltaFrame, FrameHeader, Id, RelayedFrame, SecurityFields, SecurityFlags, command,
};

/// One fuzz target's seeds, as (file name, bytes).
struct Seeds {
    target: &'static str,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn frame(header: FrameHeader, payload: &[u8]) -> Vec<u8> {
    header.encode(payload).expect("seed header is valid")
}

fn small_frame() -> Vec<u8> {
    frame(
        FrameHeader {
            kind: 7,
            flags: 0x0abc,
            doc_id: Id([9; 16]),
            client_seq: 1,
            timestamp_us: 1_700_000_000_000_000,
        },
        b"hello delta",
    )
}

fn delta_frame_seeds() -> Seeds {
    let pattern: Vec<u8> = (0..=255u8).cycle().take(300).collect();
    Seeds {
        target: "delta_frame",
        files: vec![
            ("seed-empty-payload", frame(FrameHeader::default(), b"")),
            ("seed-small", small_frame()),
            (
                "seed-all-fields-max",
                frame(
                    FrameHeader {
                        kind: u16::MAX,
                        flags: 0x0fff,
                        doc_id: Id([0xff; 16]),
                        client_seq: u64::MAX,
                        timestamp_us: u64::MAX,
                    },
                    &pattern,
                ),
            ),
            (
                "seed-text-op",
                frame(
                    FrameHeader {
                        kind: 1,
                        client_seq: 42,
                        ..FrameHeader::default()
                    },
                    br#"{"op":"insert","pos":3,"text":"abc"}"#,
                ),
            ),
        ],
    }
}

fn relayed_frame_seeds() -> Seeds {
    let stamp = SecurityFields {
        flags: SecurityFlags(
            SecurityFlags::VALID_DELTA | SecurityFlags::VALID_DATA | SecurityFlags::PROCESSED,
        ),
        seq: 1,
        origin: Id([1; 16]),
        validator: Id([2; 16]),
        validated_at_us: 1_700_000_000_000_001,
        signature: [0; 64],
    };
    let signed = SecurityFields {
        flags: SecurityFlags(stamp.flags.0 | SecurityFlags::SIGNED),
        seq: 2,
        signature: std::array::from_fn(|i| i as u8 + 1),
        ..stamp
    };
    let rejected = SecurityFields {
        flags: SecurityFlags(SecurityFlags::REJECTED),
        seq: 3,
        ..stamp
    };
    Seeds {
        target: "relayed_frame",
        files: vec![
            ("seed-unsigned", stamp.encode(&small_frame())),
            ("seed-signed", signed.encode(&small_frame())),
            (
                "seed-rejected-empty-payload",
                rejected.encode(&frame(FrameHeader::default(), b"")),
            ),
        ],
    }
}

fn command_seeds() -> Seeds {
    Seeds {
        target: "command",
        files: vec![
            (
                "seed-welcome",
                command::encode(Body::Welcome(pb::Welcome {
                    peer_id: vec![1; 16],
                    session: "doc-session".into(),
                    relay_id: vec![2; 16],
                    last_seq: 17,
                    max_frame_size: 65_536,
                    peers: vec![vec![3; 16], vec![4; 16]],
                    resume_token: vec![7; 16],
                    ..pb::Welcome::default()
                })),
            ),
            (
                "seed-ack",
                command::encode(Body::Ack(pb::Ack {
                    client_seq: 3,
                    seq: 9,
                })),
            ),
            (
                "seed-reject",
                command::encode(Body::Reject(pb::Reject {
                    client_seq: 4,
                    reason: pb::RejectReason::BadChecksum.into(),
                    detail: "checksum mismatch".into(),
                })),
            ),
            (
                "seed-resume",
                command::encode(Body::Resume(pb::Resume {
                    last_seq: 100,
                    previous_peer_id: vec![5; 16],
                    resume_token: vec![7; 16],
                })),
            ),
            (
                "seed-resumed",
                command::encode(Body::Resumed(pb::Resumed {
                    from_seq: 101,
                    continued: true,
                    next_client_seq: 12,
                })),
            ),
            (
                "seed-signal",
                command::encode(Body::Signal(pb::PeerSignal {
                    peer_id: vec![6; 16],
                    payload: b"offer".to_vec(),
                })),
            ),
            (
                "seed-ping",
                command::encode(Body::Ping(pb::Ping { nonce: 0xfeed })),
            ),
        ],
    }
}

fn all_seeds() -> [Seeds; 3] {
    [delta_frame_seeds(), relayed_frame_seeds(), command_seeds()]
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Whether `bytes` is a valid input of fuzz target `target`.
fn is_valid(target: &str, bytes: &[u8]) -> bool {
    match target {
        "delta_frame" => DeltaFrame::parse(bytes).is_ok(),
        "relayed_frame" => RelayedFrame::parse(bytes).is_ok(),
        "command" => command::decode(bytes).is_ok(),
        other => panic!("unknown fuzz target {other}"),
    }
}

#[test]
fn every_generated_seed_is_a_valid_input_of_its_target() {
    for seeds in all_seeds() {
        for (name, bytes) in &seeds.files {
            assert!(is_valid(seeds.target, bytes), "{}/{name}", seeds.target);
        }
    }
}

/// With `UPDATE_SEEDS=1` the corpus is rewritten first (after a wire
/// change); without it a stale corpus fails the test.
#[test]
fn committed_seed_corpus_is_what_the_generator_writes() {
    if std::env::var_os("UPDATE_SEEDS").is_some() {
        write_seed_corpus();
    }
    for seeds in all_seeds() {
        let dir = corpus_dir(seeds.target);
        let mut committed: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with("seed-"))
            .collect();
        committed.sort();
        let mut expected: Vec<String> = seeds.files.iter().map(|(n, _)| n.to_string()).collect();
        expected.sort();
        assert_eq!(committed, expected, "seed files in {}", dir.display());
        for (name, bytes) in &seeds.files {
            let on_disk = fs::read(dir.join(name)).unwrap();
            assert_eq!(&on_disk, bytes, "{}/{name} is stale", seeds.target);
        }
    }
}

/// Replaces the committed seeds with the generator's.
fn write_seed_corpus() {
    for seeds in all_seeds() {
        let dir = corpus_dir(seeds.target);
        fs::create_dir_all(&dir).unwrap();
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                fs::remove_file(path).unwrap();
            }
        }
        for (name, bytes) in &seeds.files {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

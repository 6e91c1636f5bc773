//! Property tests of the wire views against PROTOCOL §3 (delta frame) and §4
//! (relayed frame): what the builders write parses back field for field, every
//! single broken rule is rejected with its own error, and no input makes a
//! parser panic.

use deltamesh_proto::command;
use deltamesh_proto::frame::{FRAME_HEADER_LEN, FRAME_MAGIC};
use deltamesh_proto::pb;
use deltamesh_proto::security::{SECURITY_HEADER_LEN, SECURITY_MAGIC, SecurityError};
use deltamesh_proto::{
    DeltaFrame, FrameError, FrameHeader, Id, RelayedFrame, SecurityFields, SecurityFlags,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// Case count of the structured properties; each case encodes and parses a
/// frame of at most a few KiB, so the whole file stays a few seconds in debug.
const CASES: u32 = 256;
/// Case count of the never-panics properties, whose inputs are cheap.
const NO_PANIC_CASES: u32 = 2048;

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Any header the builder accepts: flag bits 12..15 clear, everything else free.
fn frame_header() -> impl Strategy<Value = FrameHeader> {
    (
        any::<u16>(),
        0u16..0x1000,
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(kind, flags, doc_id, client_seq, timestamp_us)| FrameHeader {
                kind,
                flags,
                doc_id: Id(doc_id),
                client_seq,
                timestamp_us,
            },
        )
}

/// Payloads of 0..4096 bytes, with the empty payload drawn often enough to be
/// covered in every run.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        9 => vec(any::<u8>(), 0..4096),
    ]
}

/// Payloads for the corruption properties: never empty (a payload byte can be
/// flipped and the payload cut short) and smaller, to keep cases cheap.
fn nonempty_payload() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 1..1024)
}

/// A valid encoded frame with a non-empty payload.
fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    (frame_header(), nonempty_payload())
        .prop_map(|(header, payload)| header.encode(&payload).expect("valid header encodes"))
}

/// The stamp of a relayed frame the relay could write: any flags, a signature
/// only when the signed bit is set (otherwise zero).
fn security_fields() -> impl Strategy<Value = SecurityFields> {
    (
        any::<u8>(),
        any::<u64>(),
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u64>(),
        any::<[u8; 64]>(),
    )
        .prop_map(
            |(flags, seq, origin, validator, validated_at_us, signature)| {
                let signed = SecurityFlags(flags).contains(SecurityFlags::SIGNED);
                SecurityFields {
                    flags: SecurityFlags(flags),
                    seq,
                    origin: Id(origin),
                    validator: Id(validator),
                    validated_at_us,
                    signature: if signed { signature } else { [0; 64] },
                }
            },
        )
}

/// A non-zero u16: any, or a single non-zero byte (which a check of only
/// part of the field would miss).
fn nonzero_u16() -> impl Strategy<Value = u16> {
    prop_oneof![
        1u16..,
        (0u32..2, 1u8..).prop_map(|(byte, value)| u16::from(value) << (8 * byte)),
    ]
}

/// A non-zero u32: any, or a single non-zero byte.
fn nonzero_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        1u32..,
        (0u32..4, 1u8..).prop_map(|(byte, value)| u32::from(value) << (8 * byte)),
    ]
}

/// `N` bytes not all zero: any, or zero but for a single non-zero byte.
fn nonzero_bytes<const N: usize>() -> impl Strategy<Value = [u8; N]> {
    prop_oneof![
        any::<[u8; N]>().prop_filter("not all zero", |b| b.iter().any(|&x| x != 0)),
        (0..N, 1u8..).prop_map(|(at, value)| {
            let mut bytes = [0; N];
            bytes[at] = value;
            bytes
        }),
    ]
}

/// Four bytes other than `magic`: either random or `magic` with one byte changed
/// (the near misses a careless comparison would let through).
fn other_magic(magic: [u8; 4]) -> impl Strategy<Value = [u8; 4]> {
    prop_oneof![
        any::<[u8; 4]>().prop_filter("differs from the magic", move |m| *m != magic),
        (0usize..4, 1u8..=u8::MAX).prop_map(move |(i, mask)| {
            let mut m = magic;
            m[i] ^= mask;
            m
        }),
    ]
}

/// One rule of PROTOCOL §3 broken on an otherwise valid frame.
#[derive(Debug, Clone)]
enum Corruption {
    /// Bytes 0..4 are not `DLT1`.
    Magic([u8; 4]),
    /// Version (offset 4) other than 1.
    Version(u16),
    /// Flags (offset 8) with at least one of bits 12..15 set.
    ReservedFlags(u16),
    /// Non-zero reserved u16 at offset 10.
    Reserved10(u16),
    /// Non-zero reserved u32 at offset 52.
    Reserved52(u32),
    /// `payload_len` XORed with a non-zero mask.
    PayloadLen(u32),
    /// Checksum (offset 48) XORed with a non-zero mask.
    Checksum(u32),
    /// One payload byte XORed with a non-zero mask.
    PayloadByte(Index, u8),
    /// The frame cut to fewer bytes than the header.
    TruncateHeader(Index),
    /// The frame cut inside the payload (header intact).
    TruncatePayload(Index),
    /// Bytes appended after the payload.
    Extend(Vec<u8>),
}

impl Corruption {
    /// Applies the corruption to a valid encoded frame with a non-empty payload
    /// and returns the error the parser must report for it.
    fn apply(&self, frame: &mut Vec<u8>) -> FrameError {
        let payload_len = frame.len() - FRAME_HEADER_LEN;
        let declared = payload_len as u32;
        match *self {
            Corruption::Magic(found) => {
                frame[0..4].copy_from_slice(&found);
                FrameError::BadMagic { found }
            }
            Corruption::Version(version) => {
                frame[4..6].copy_from_slice(&version.to_le_bytes());
                FrameError::BadVersion { version }
            }
            Corruption::ReservedFlags(flags) => {
                frame[8..10].copy_from_slice(&flags.to_le_bytes());
                FrameError::ReservedFlags { flags }
            }
            Corruption::Reserved10(value) => {
                frame[10..12].copy_from_slice(&value.to_le_bytes());
                FrameError::ReservedNonZero { offset: 10 }
            }
            Corruption::Reserved52(value) => {
                frame[52..56].copy_from_slice(&value.to_le_bytes());
                FrameError::ReservedNonZero { offset: 52 }
            }
            Corruption::PayloadLen(mask) => {
                let wrong = declared ^ mask;
                frame[12..16].copy_from_slice(&wrong.to_le_bytes());
                FrameError::LengthMismatch {
                    declared: wrong,
                    actual: payload_len,
                }
            }
            Corruption::Checksum(mask) => {
                let computed = read_u32(frame, 48);
                let declared = computed ^ mask;
                frame[48..52].copy_from_slice(&declared.to_le_bytes());
                FrameError::BadChecksum { declared, computed }
            }
            Corruption::PayloadByte(index, mask) => {
                frame[FRAME_HEADER_LEN + index.index(payload_len)] ^= mask;
                FrameError::BadChecksum {
                    declared: read_u32(frame, 48),
                    computed: crc32c::crc32c(&frame[FRAME_HEADER_LEN..]),
                }
            }
            Corruption::TruncateHeader(index) => {
                let len = index.index(FRAME_HEADER_LEN);
                frame.truncate(len);
                FrameError::Truncated { len }
            }
            Corruption::TruncatePayload(index) => {
                let actual = index.index(payload_len);
                frame.truncate(FRAME_HEADER_LEN + actual);
                FrameError::LengthMismatch { declared, actual }
            }
            Corruption::Extend(ref extra) => {
                frame.extend_from_slice(extra);
                FrameError::LengthMismatch {
                    declared,
                    actual: payload_len + extra.len(),
                }
            }
        }
    }
}

fn bad_magic() -> impl Strategy<Value = Corruption> {
    other_magic(FRAME_MAGIC).prop_map(Corruption::Magic)
}

fn bad_version() -> impl Strategy<Value = Corruption> {
    nonzero_u16().prop_map(|mask| Corruption::Version(1 ^ mask))
}

fn reserved_flag_bits() -> impl Strategy<Value = Corruption> {
    (0u16..0x1000, 1u16..16)
        .prop_map(|(low, reserved)| Corruption::ReservedFlags(reserved << 12 | low))
}

fn reserved_at_10() -> impl Strategy<Value = Corruption> {
    nonzero_u16().prop_map(Corruption::Reserved10)
}

fn reserved_at_52() -> impl Strategy<Value = Corruption> {
    nonzero_u32().prop_map(Corruption::Reserved52)
}

fn wrong_payload_len() -> impl Strategy<Value = Corruption> {
    nonzero_u32().prop_map(Corruption::PayloadLen)
}

fn changed_checksum() -> impl Strategy<Value = Corruption> {
    nonzero_u32().prop_map(Corruption::Checksum)
}

fn flipped_payload_byte() -> impl Strategy<Value = Corruption> {
    (any::<Index>(), 1u8..).prop_map(|(i, mask)| Corruption::PayloadByte(i, mask))
}

fn truncated_header() -> impl Strategy<Value = Corruption> {
    any::<Index>().prop_map(Corruption::TruncateHeader)
}

fn truncated_payload() -> impl Strategy<Value = Corruption> {
    any::<Index>().prop_map(Corruption::TruncatePayload)
}

fn extended_payload() -> impl Strategy<Value = Corruption> {
    vec(any::<u8>(), 1..64).prop_map(Corruption::Extend)
}

/// Any one broken rule of PROTOCOL §3.
fn any_corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        bad_magic(),
        bad_version(),
        reserved_flag_bits(),
        reserved_at_10(),
        reserved_at_52(),
        wrong_payload_len(),
        changed_checksum(),
        flipped_payload_byte(),
        truncated_header(),
        truncated_payload(),
        extended_payload(),
    ]
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

/// The header fields of a parsed frame, for comparison with what was encoded.
fn header_of(frame: &DeltaFrame<'_>) -> FrameHeader {
    FrameHeader {
        kind: frame.kind(),
        flags: frame.flags(),
        doc_id: frame.doc_id(),
        client_seq: frame.client_seq(),
        timestamp_us: frame.timestamp_us(),
    }
}

/// Asserts that `corruption` of `frame` is rejected with exactly its error,
/// and that the rejection still maps to a specific reject reason.
fn assert_rejected(mut frame: Vec<u8>, corruption: &Corruption) -> Result<(), TestCaseError> {
    let expected = corruption.apply(&mut frame);
    prop_assert_eq!(DeltaFrame::parse(&frame), Err(expected));
    prop_assert_ne!(
        pb::RejectReason::from(&expected),
        pb::RejectReason::Unspecified
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Delta frame (PROTOCOL §3)
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn encoded_frame_parses_back_to_every_field_and_the_payload(
        header in frame_header(),
        payload in payload(),
    ) {
        let bytes = header.encode(&payload).unwrap();
        prop_assert_eq!(bytes.len(), FRAME_HEADER_LEN + payload.len());
        let frame = DeltaFrame::parse(&bytes).unwrap();
        prop_assert_eq!(frame.kind(), header.kind);
        prop_assert_eq!(frame.flags(), header.flags);
        prop_assert_eq!(frame.doc_id(), header.doc_id);
        prop_assert_eq!(frame.client_seq(), header.client_seq);
        prop_assert_eq!(frame.timestamp_us(), header.timestamp_us);
        prop_assert_eq!(frame.payload_len() as usize, payload.len());
        prop_assert_eq!(frame.payload(), &payload[..]);
        prop_assert_eq!(frame.checksum(), crc32c::crc32c(&payload));
        prop_assert_eq!(frame.as_bytes(), &bytes[..]);
        prop_assert_eq!(DeltaFrame::peek_client_seq(&bytes), Some(header.client_seq));
    }

    #[test]
    fn encode_into_appends_the_same_bytes_as_encode(
        header in frame_header(),
        payload in payload(),
        prefix in vec(any::<u8>(), 0..16),
    ) {
        let mut out = prefix.clone();
        header.encode_into(&payload, &mut out).unwrap();
        prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
        prop_assert_eq!(&out[prefix.len()..], &header.encode(&payload).unwrap()[..]);
    }

    #[test]
    fn builder_refuses_any_reserved_flag_bit(
        header in frame_header(),
        reserved in 1u16..16,
    ) {
        let flags = header.flags | reserved << 12;
        let header = FrameHeader { flags, ..header };
        prop_assert_eq!(header.encode(b"x"), Err(FrameError::ReservedFlags { flags }));
    }

    #[test]
    fn wrong_magic_is_rejected_as_bad_magic(frame in valid_frame(), c in bad_magic()) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn version_other_than_1_is_rejected_as_bad_version(
        frame in valid_frame(),
        c in bad_version(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn any_reserved_flag_bit_is_rejected_as_reserved_flags(
        frame in valid_frame(),
        c in reserved_flag_bits(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn nonzero_reserved_u16_at_10_is_rejected_naming_offset_10(
        frame in valid_frame(),
        c in reserved_at_10(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn nonzero_reserved_u32_at_52_is_rejected_naming_offset_52(
        frame in valid_frame(),
        c in reserved_at_52(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn payload_len_other_than_actual_is_rejected_as_length_mismatch(
        frame in valid_frame(),
        c in wrong_payload_len(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn changed_checksum_is_rejected_as_bad_checksum(
        frame in valid_frame(),
        c in changed_checksum(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn any_flipped_payload_byte_is_rejected_as_bad_checksum(
        frame in valid_frame(),
        c in flipped_payload_byte(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn frame_shorter_than_the_header_is_rejected_as_truncated(
        frame in valid_frame(),
        c in truncated_header(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn payload_cut_short_is_rejected_as_length_mismatch(
        frame in valid_frame(),
        c in truncated_payload(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn bytes_after_the_payload_are_rejected_as_length_mismatch(
        frame in valid_frame(),
        c in extended_payload(),
    ) {
        assert_rejected(frame, &c)?;
    }

    #[test]
    fn any_bytes_shorter_than_the_header_are_truncated(bytes in vec(any::<u8>(), 0..FRAME_HEADER_LEN)) {
        prop_assert_eq!(
            DeltaFrame::parse(&bytes),
            Err(FrameError::Truncated { len: bytes.len() })
        );
    }

    #[test]
    fn accepted_frame_is_exactly_the_encoding_of_its_fields(
        frame in valid_frame(),
        writes in vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        // Random overwrites of a valid frame: whatever the parser still
        // accepts must be byte for byte what the builder makes of its fields.
        let mut bytes = frame;
        for (index, value) in writes {
            let at = index.index(bytes.len());
            bytes[at] = value;
        }
        if let Ok(parsed) = DeltaFrame::parse(&bytes) {
            prop_assert_eq!(header_of(&parsed).encode(parsed.payload()).unwrap(), bytes);
        }
    }
}

// ---------------------------------------------------------------------------
// Relayed frame (PROTOCOL §4)
// ---------------------------------------------------------------------------

/// A valid relayed message: stamp, header and payload of its delta frame.
fn relayed() -> impl Strategy<Value = (SecurityFields, FrameHeader, Vec<u8>)> {
    (security_fields(), frame_header(), nonempty_payload())
}

fn encode_relayed(fields: &SecurityFields, header: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    fields.encode(&header.encode(payload).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn stamped_frame_parses_back_to_every_security_field_and_the_frame(
        fields in security_fields(),
        header in frame_header(),
        payload in payload(),
    ) {
        let frame_bytes = header.encode(&payload).unwrap();
        let bytes = fields.encode(&frame_bytes);
        prop_assert_eq!(bytes.len(), SECURITY_HEADER_LEN + frame_bytes.len());
        let relayed = RelayedFrame::parse(&bytes).unwrap();
        prop_assert_eq!(relayed.flags(), fields.flags);
        prop_assert_eq!(relayed.seq(), fields.seq);
        prop_assert_eq!(relayed.origin(), fields.origin);
        prop_assert_eq!(relayed.validator(), fields.validator);
        prop_assert_eq!(relayed.validated_at_us(), fields.validated_at_us);
        prop_assert_eq!(relayed.signature(), fields.signature);
        prop_assert_eq!(relayed.as_bytes(), &bytes[..]);
        let frame = relayed.frame();
        prop_assert_eq!(frame.as_bytes(), &frame_bytes[..]);
        prop_assert_eq!(header_of(&frame), header);
        prop_assert_eq!(frame.payload(), &payload[..]);
        let [stamp, signed_frame] = relayed.signed_parts();
        prop_assert_eq!(stamp, &bytes[8..56]);
        prop_assert_eq!(signed_frame, &frame_bytes[..]);
    }

    #[test]
    fn write_to_and_encode_write_the_same_header(fields in security_fields()) {
        let mut header = [0xAAu8; SECURITY_HEADER_LEN];
        fields.write_to(&mut header);
        prop_assert_eq!(&header[..], &fields.encode(&[])[..]);
    }

    #[test]
    fn signed_parts_do_not_cover_the_flags(
        (fields, header, payload) in relayed(),
        new_flags in any::<u8>(),
    ) {
        // Flags are only ever set as a delta moves on (never cleared), and
        // the signature must survive that.
        let before = encode_relayed(&fields, &header, &payload);
        let mut after = before.clone();
        after[4] = new_flags | fields.flags.0;
        let before = RelayedFrame::parse(&before).unwrap();
        let after = RelayedFrame::parse(&after).unwrap();
        prop_assert_eq!(before.signed_parts(), after.signed_parts());
    }

    #[test]
    fn wrong_security_magic_is_rejected_as_bad_magic(
        (fields, header, payload) in relayed(),
        found in other_magic(SECURITY_MAGIC),
    ) {
        let mut bytes = encode_relayed(&fields, &header, &payload);
        bytes[0..4].copy_from_slice(&found);
        prop_assert_eq!(RelayedFrame::parse(&bytes), Err(SecurityError::BadMagic { found }));
    }

    #[test]
    fn nonzero_reserved_bytes_5_to_8_are_rejected(
        (fields, header, payload) in relayed(),
        reserved in nonzero_bytes::<3>(),
    ) {
        let mut bytes = encode_relayed(&fields, &header, &payload);
        bytes[5..8].copy_from_slice(&reserved);
        prop_assert_eq!(RelayedFrame::parse(&bytes), Err(SecurityError::ReservedNonZero));
    }

    #[test]
    fn signature_without_the_signed_bit_is_rejected_as_unexpected(
        (fields, header, payload) in relayed(),
        signature in nonzero_bytes::<64>(),
    ) {
        let fields = SecurityFields {
            flags: SecurityFlags(fields.flags.0 & !SecurityFlags::SIGNED),
            signature,
            ..fields
        };
        let bytes = encode_relayed(&fields, &header, &payload);
        prop_assert_eq!(RelayedFrame::parse(&bytes), Err(SecurityError::UnexpectedSignature));
    }

    #[test]
    fn any_signature_is_accepted_with_the_signed_bit(
        (fields, header, payload) in relayed(),
        signature in any::<[u8; 64]>(),
    ) {
        let fields = SecurityFields {
            flags: SecurityFlags(fields.flags.0 | SecurityFlags::SIGNED),
            signature,
            ..fields
        };
        let bytes = encode_relayed(&fields, &header, &payload);
        prop_assert_eq!(RelayedFrame::parse(&bytes).unwrap().signature(), signature);
    }

    #[test]
    fn relayed_frame_shorter_than_the_security_header_is_truncated(
        (fields, header, payload) in relayed(),
        cut in any::<Index>(),
    ) {
        let mut bytes = encode_relayed(&fields, &header, &payload);
        let len = cut.index(SECURITY_HEADER_LEN);
        bytes.truncate(len);
        prop_assert_eq!(RelayedFrame::parse(&bytes), Err(SecurityError::Truncated { len }));
    }

    #[test]
    fn broken_inner_frame_is_rejected_with_its_frame_error(
        (fields, header, payload) in relayed(),
        corruption in any_corruption(),
    ) {
        let mut frame = header.encode(&payload).unwrap();
        let expected = corruption.apply(&mut frame);
        let bytes = fields.encode(&frame);
        prop_assert_eq!(RelayedFrame::parse(&bytes), Err(SecurityError::Frame(expected)));
    }
}

// ---------------------------------------------------------------------------
// Arbitrary input never panics
// ---------------------------------------------------------------------------

/// Bytes that start like a frame or a relayed frame more often than chance
/// would, so the parsers get past their first checks.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..512),
        vec(any::<u8>(), 0..256).prop_map(|mut tail| {
            let mut bytes = FRAME_MAGIC.to_vec();
            bytes.extend_from_slice(&[1, 0]);
            bytes.append(&mut tail);
            bytes
        }),
        vec(any::<u8>(), 0..384).prop_map(|mut tail| {
            let mut bytes = SECURITY_MAGIC.to_vec();
            bytes.append(&mut tail);
            bytes
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(NO_PANIC_CASES))]

    #[test]
    fn frame_parser_never_panics_on_arbitrary_bytes(bytes in hostile_bytes()) {
        let _ = DeltaFrame::parse(&bytes);
    }

    #[test]
    fn relayed_parser_never_panics_on_arbitrary_bytes(bytes in hostile_bytes()) {
        if let Ok(relayed) = RelayedFrame::parse(&bytes) {
            prop_assert_eq!(relayed.frame().as_bytes(), &bytes[SECURITY_HEADER_LEN..]);
        }
    }

    #[test]
    fn command_decoder_never_panics_on_arbitrary_bytes(bytes in hostile_bytes()) {
        if let Ok(body) = command::decode(&bytes) {
            // Whatever decodes re-encodes to the same command.
            prop_assert_eq!(command::decode(&command::encode(body.clone())), Ok(body));
        }
    }

    #[test]
    fn peek_client_seq_never_panics_and_reads_bytes_32_to_40(bytes in vec(any::<u8>(), 0..128)) {
        let expected = bytes
            .get(32..40)
            .map(|field| u64::from_le_bytes(field.try_into().unwrap()));
        prop_assert_eq!(DeltaFrame::peek_client_seq(&bytes), expected);
    }
}

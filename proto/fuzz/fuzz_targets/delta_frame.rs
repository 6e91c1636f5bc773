//! `DeltaFrame::parse` on arbitrary bytes: never panics, and whatever it
//! accepts is byte for byte the builder's encoding of the fields it reads.

#![no_main]

use deltamesh_proto::{DeltaFrame, FrameHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peeked = DeltaFrame::peek_client_seq(data);
    let Ok(frame) = DeltaFrame::parse(data) else {
        return;
    };
    assert_eq!(peeked, Some(frame.client_seq()));
    assert_eq!(frame.as_bytes(), data);
    assert_eq!(frame.payload_len() as usize, frame.payload().len());
    let header = FrameHeader {
        kind: frame.kind(),
        flags: frame.flags(),
        doc_id: frame.doc_id(),
        client_seq: frame.client_seq(),
        timestamp_us: frame.timestamp_us(),
    };
    let encoded = header
        .encode(frame.payload())
        .expect("the fields of an accepted frame encode");
    assert_eq!(encoded, data, "re-encoding an accepted frame changed it");
});

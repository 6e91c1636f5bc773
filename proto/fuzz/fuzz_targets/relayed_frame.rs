//! `RelayedFrame::parse` on arbitrary bytes: never panics, and whatever it
//! accepts is byte for byte the stamp of its fields in front of its frame.

#![no_main]

use deltamesh_proto::security::SECURITY_HEADER_LEN;
use deltamesh_proto::{DeltaFrame, RelayedFrame, SecurityFields, SecurityFlags};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(relayed) = RelayedFrame::parse(data) else {
        return;
    };
    assert_eq!(relayed.as_bytes(), data);
    let frame = relayed.frame();
    assert_eq!(frame.as_bytes(), &data[SECURITY_HEADER_LEN..]);
    assert_eq!(DeltaFrame::parse(frame.as_bytes()), Ok(frame));
    if !relayed.flags().contains(SecurityFlags::SIGNED) {
        assert_eq!(
            relayed.signature(),
            [0; 64],
            "unsigned frame with a signature"
        );
    }
    let [stamp, signed_frame] = relayed.signed_parts();
    assert_eq!(stamp, &data[8..56]);
    assert_eq!(signed_frame, frame.as_bytes());
    let fields = SecurityFields {
        flags: relayed.flags(),
        seq: relayed.seq(),
        origin: relayed.origin(),
        validator: relayed.validator(),
        validated_at_us: relayed.validated_at_us(),
        signature: relayed.signature(),
    };
    assert_eq!(
        fields.encode(frame.as_bytes()),
        data,
        "re-stamping an accepted relayed frame changed it"
    );
});

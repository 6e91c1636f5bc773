//! `command::decode` on arbitrary bytes: never panics, and whatever decodes
//! survives an encode/decode round trip unchanged. (Protobuf re-encoding is
//! not byte-exact: unknown fields are dropped and varints canonicalised.)

#![no_main]

use deltamesh_proto::command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = command::decode(data) else {
        return;
    };
    let encoded = command::encode(body.clone());
    assert_eq!(command::decode(&encoded), Ok(body));
});

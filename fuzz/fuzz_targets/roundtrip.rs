//! Property: every frame that decodes re-encodes to bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tidegate::protocol::fuzzing::check_roundtrip(data);
});

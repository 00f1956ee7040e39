//! Property: decoding arbitrary bytes never panics, and never buffers more than the limit
//! allows (the codec rejects a longer length from the header alone).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tidegate::protocol::fuzzing::check_decode(data);
});

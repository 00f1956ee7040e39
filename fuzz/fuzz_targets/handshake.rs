//! Property: no handshake completes without the key, whatever frames arrive, and two honest
//! peers complete it exactly when their keys are equal (`check_handshake`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tidegate::protocol::fuzzing::check_handshake(data);
});

//! Property: arbitrary frame sequences into a receiver's session never panic, never create or
//! change anything outside the served directory (symlinks inside point out, as bait), and
//! leave no partial file once the session is abandoned (`check_session`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tidegate::server::fuzzing::{check_session, Arena};

fn arena() -> &'static Arena {
    static ARENA: OnceLock<Arena> = OnceLock::new();
    ARENA.get_or_init(|| {
        let base = format!("/dev/shm/tidegate-fuzz-session-{}", std::process::id());
        Arena::new(std::path::Path::new(&base)).expect("arena in /dev/shm")
    })
}

fuzz_target!(|data: &[u8]| {
    check_session(arena(), data);
});

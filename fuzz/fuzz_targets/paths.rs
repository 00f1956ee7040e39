//! Property: a path accepted from the wire is a plain descendant of the served directory, one
//! component per `/`-separated part, through no symlink (`check_paths`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tidegate::server::fuzzing::{check_paths, Arena};

fn arena() -> &'static Arena {
    static ARENA: OnceLock<Arena> = OnceLock::new();
    ARENA.get_or_init(|| {
        let base = format!("/dev/shm/tidegate-fuzz-paths-{}", std::process::id());
        Arena::new(std::path::Path::new(&base)).expect("arena in /dev/shm")
    })
}

fuzz_target!(|data: &[u8]| {
    check_paths(arena(), data);
});

//! The test binaries' shared helpers: everything from `tidegate-testkit` (shared with the
//! benches and the profiling runner), plus running the `tidegate` binary (`process`).
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub mod process;

pub use tidegate_testkit::frames as wire;
pub use tidegate_testkit::*;

//! Helpers for the dhat heap tests (`tests/heap_*.rs`, one scenario per file because the
//! profiler is global to the process).
//!
//! Each scenario warms up first (a runtime with its worker threads, the rayon pool, a server
//! and one transfer) so that one-time allocations are not counted, then measures a region
//! with a profiler in testing mode.

use std::io::Write;
use std::path::Path;

/// A multi-threaded runtime like the CLI's, on this machine's 2 cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `len` deterministic bytes to `path`, 1 MiB at a time.
pub fn write_file(path: &Path, len: u64, seed: u64) {
    let block = super::data(1 << 20, seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Heap statistics of one measured region.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    pub max_bytes: usize,
    pub max_blocks: usize,
    pub curr_bytes: usize,
    pub curr_blocks: usize,
    pub total_blocks: u64,
}

/// Runs `work` under a testing-mode profiler and returns what it allocated.
pub async fn measure<F: std::future::Future>(work: F) -> (F::Output, Region) {
    let profiler = dhat::Profiler::builder().testing().build();
    let out = work.await;
    let s = dhat::HeapStats::get();
    drop(profiler);
    let region = Region {
        max_bytes: s.max_bytes,
        max_blocks: s.max_blocks,
        curr_bytes: s.curr_bytes,
        curr_blocks: s.curr_blocks,
        total_blocks: s.total_blocks,
    };
    eprintln!("{region:?}");
    (out, region)
}

pub const MIB: usize = 1 << 20;

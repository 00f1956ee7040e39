//! Heap scenario: sending many small files (sender and receiver in this process). The peak
//! heap is bounded like a large file's, and what grows with the number of files (the walk,
//! the per-file report the API returns, the receiver's record of finished files) stays under
//! a documented figure per entry.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod common;

use std::path::Path;

use common::heap::{measure, runtime, MIB};
use common::{fast_options, send, TestServer};

/// Heap per file that may stay live until the transfer ends: the report's entry for it
/// (path, size, root, time: about 150 bytes with a short path) and the receiver's record that
/// it is done (a `u64` in a hash set). Everything else is per chunk in flight, bounded by the
/// budget.
const PER_ENTRY: usize = 400;

/// Fixed overhead over the budget (as for a large file, plus the walker's queue of 1,024
/// entries and one flush batch of up to 512 files on the receiver).
const FIXED_OVERHEAD: usize = 16 * MIB;

fn tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i % 100));
        if i < 100 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let body = common::data(256 + (i * 37) % 1024, i as u64);
        std::fs::write(dir.join(format!("f{i:05}")), body).unwrap();
    }
}

#[test]
fn peak_heap_per_file_is_bounded() {
    let src = tempfile::tempdir().unwrap();
    let (few, many) = (src.path().join("few"), src.path().join("many"));
    tree(&few, 2_000);
    tree(&many, 20_000);
    let warm = src.path().join("warm");
    tree(&warm, 600);
    let options = fast_options();
    let budget = options.pipeline.memory_bytes as usize;
    runtime().block_on(async {
        let server = TestServer::start().await;
        let to = server.addr.to_string();
        send(vec![warm], to.clone(), options.clone()).await;

        let (r, s_few) = measure(send(vec![few], to.clone(), options.clone())).await;
        assert!(r.success(), "{r:?}");
        let (r, s_many) = measure(send(vec![many], to.clone(), options.clone())).await;
        assert!(r.success(), "{r:?}");
        assert_eq!(r.files.len(), 20_000 + 101);
        drop(r);
        server.stop().await;

        let per_entry = s_many.max_bytes.saturating_sub(s_few.max_bytes) / 18_000;
        eprintln!(
            "peak heap: 2,000 files {} B, 20,000 files {} B: {per_entry} B per extra file",
            s_few.max_bytes, s_many.max_bytes
        );
        assert!(
            per_entry <= PER_ENTRY,
            "peak heap grows by {per_entry} B per file (limit {PER_ENTRY})"
        );
        assert!(
            s_many.max_bytes <= budget + FIXED_OVERHEAD + 20_000 * PER_ENTRY,
            "peak heap {} B beyond the bound",
            s_many.max_bytes
        );
    });
}

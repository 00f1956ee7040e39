//! Heap scenario: sending many small files (sender and receiver in this process). The peak
//! heap does not grow with the number of files: nothing is kept per file once it is delivered
//! (the report's per-file entries only when asked, the receiver's record of finished files as
//! ranges of their numbers), so what is left is per file in flight and per directory walked.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod common;

use std::path::Path;

use common::heap::{measure, runtime, MIB};
use common::{fast_options, send, TestServer};

/// Heap per file that may stay live until the transfer ends. Nothing is, by design: what
/// remains is the walk's listing of the directory it is in (which grows here, as the same 100
/// directories hold more files) and noise. Keeping each file's report, or a number per
/// finished file at the receiver, would be hundreds of bytes per file.
const PER_ENTRY: usize = 32;

/// How far the peaks of two runs differ with timing alone (how many files and replies are in
/// flight at the worst moment): up to about 0.7 MB here, whatever the number of files. A cost
/// of 100 B per file is 3 MB over the extra files, well past it.
const PEAK_NOISE: usize = MIB;

/// Fixed overhead over the budget (as for a large file, plus the walker's queue of 1,024
/// entries, the small files in flight until their batch is flushed, and a batch of up to
/// 2,048 files on the receiver).
const FIXED_OVERHEAD: usize = 16 * MIB;

/// Files in the smaller tree: more than the receiver's batches can hold in flight (a few
/// batches of 2,048), so that both trees reach the same peak of files in flight.
const FEW: usize = 15_000;
/// Files in the larger tree.
const MANY: usize = 45_000;

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
fn peak_heap_does_not_grow_with_the_number_of_files() {
    let src = tempfile::tempdir().unwrap();
    let (few, many) = (src.path().join("few"), src.path().join("many"));
    tree(&few, FEW);
    tree(&many, MANY);
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
        assert_eq!(r.destinations[0].files_done, MANY as u64 + 101);
        assert!(r.files.is_empty(), "reports are kept only when asked");
        drop(r);
        server.stop().await;

        let extra = MANY - FEW;
        let per_entry = s_many.max_bytes.saturating_sub(s_few.max_bytes) / extra;
        eprintln!(
            "peak heap: {FEW} files {} B, {MANY} files {} B: {per_entry} B per extra file",
            s_few.max_bytes, s_many.max_bytes
        );
        assert!(
            s_many.max_bytes <= s_few.max_bytes + extra * PER_ENTRY + PEAK_NOISE,
            "peak heap grows by {per_entry} B per file (limit {PER_ENTRY}, and {PEAK_NOISE} B \
             of noise over {extra} files)"
        );
        assert!(
            s_many.max_bytes <= budget + FIXED_OVERHEAD,
            "peak heap {} B beyond the bound",
            s_many.max_bytes
        );
    });
}

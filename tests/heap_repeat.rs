//! Heap scenario: after warm-up transfers, 20 more transfers (sender and receiver in this
//! process) leave the live heap exactly where it was. Anything a transfer leaves behind, on
//! either side, shows up as extra live bytes or blocks.
//!
//! One transfer runs before the profiler starts (the rayon pool and the server's first session
//! allocate once). The profiler then sees three more warm-up transfers, so that blocks the
//! runtime and the rayon pool recycle (a worker's deferred-task list, the rayon injector's
//! ring of blocks) are seen both when they are allocated and when they are freed. Snapshots
//! are taken once the heap has settled (see `common::heap::settled`).

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod common;

use common::heap::{cycle_rayon_injector, runtime, settle_to, settled, MIB};
use common::write_file;
use common::{assert_same_tree, fast_options, send, TestServer};

const WARM_UP: usize = 3;
const TRANSFERS: usize = 20;

#[test]
fn twenty_transfers_leave_no_live_heap() {
    // A tree that exercises both paths: a file large enough for several chunks per stream,
    // and small files that travel in batches.
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/empty")).unwrap();
    write_file(&tree.join("large.bin"), 6 * MIB as u64, 1);
    for i in 0..40u64 {
        write_file(&tree.join(format!("sub/small-{i}")), 1000 + i * 97, i);
    }
    std::fs::write(tree.join("sub/zero"), b"").unwrap();
    let options = fast_options();

    runtime().block_on(async {
        let server = TestServer::start().await;
        let to = server.addr.to_string();
        let report = send(vec![tree.clone()], to.clone(), options.clone()).await;
        assert!(report.success(), "{report:?}");
        server.idle().await;

        let profiler = dhat::Profiler::builder().testing().build();
        for _ in 0..WARM_UP {
            let report = send(vec![tree.clone()], to.clone(), options.clone()).await;
            assert!(report.success(), "{report:?}");
            server.idle().await;
        }
        cycle_rayon_injector();
        let before = settled().await;
        for _ in 0..TRANSFERS {
            let report = send(vec![tree.clone()], to.clone(), options.clone()).await;
            assert!(report.success(), "{report:?}");
            server.idle().await;
        }
        let after = settle_to(&before).await;
        drop(profiler);
        eprintln!("after warm-up: {before:?}\nafter {TRANSFERS} transfers: {after:?}");
        assert_same_tree(&tree, &server.root().join("tree"));
        server.stop().await;

        assert_eq!(
            (after.curr_bytes, after.curr_blocks),
            (before.curr_bytes, before.curr_blocks),
            "live heap (bytes, blocks) changed over {TRANSFERS} transfers"
        );
    });
}

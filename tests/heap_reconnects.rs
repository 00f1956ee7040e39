//! Heap scenario: one transfer through a proxy that cuts every connection 50 times leaks
//! nothing and holds its peak: the live heap comes back to where it was, and the peak stays
//! within that of the same transfer through the same proxy without cuts plus one connection's
//! buffers per stream ([`OVERLAP`]). Peaks vary by a few hundred KiB from run to run with the
//! timing of frames in flight, in both runs.
//!
//! A small budget and chunk size put many chunks in flight at each cut; each cut makes the
//! sender dial again and resend what was not acknowledged, and leaves the receiver with
//! dead connections to clean up and a session to resume.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod common;

use std::time::Duration;

use common::heap::{cycle_rayon_injector, runtime, settle_to, settled, MIB};
use common::write_file;
use common::{fast_options, send, Proxy, TestServer};
use tidegate::TransferOptions;

const CUTS: u64 = 50;
const CHUNK: usize = 256 << 10;
const STREAMS: usize = 4;

/// A cut connection's buffers can live on, until its task notices the cut, alongside those of
/// the connection that replaces it: on the receiver one chunk-sized frame plus 64 KiB of read
/// headroom, in the proxy two 64 KiB copy buffers. Per stream.
const OVERLAP: usize = STREAMS * (CHUNK + 64 * 1024 + 2 * 64 * 1024);

fn options() -> TransferOptions {
    let mut o = fast_options();
    o.pipeline.memory_bytes = 8 * MIB as u64;
    o.pipeline.chunk_size = tidegate::ChunkSize::new(CHUNK as u64).unwrap();
    o.streams = STREAMS;
    o.retry_for = Duration::from_secs(30);
    o
}

#[test]
fn fifty_reconnects_leak_nothing_and_hold_the_peak() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big");
    write_file(&file, 64 * MIB as u64, 3);

    runtime().block_on(async {
        let server = TestServer::start().await;
        // Warm-up, reconnect paths included.
        {
            let proxy = Proxy::cutting(server.addr, 4 * MIB as u64, 3).await;
            let report = send(vec![file.clone()], proxy.addr.to_string(), options()).await;
            assert!(report.success(), "{report:?}");
        }
        server.idle().await;

        // The same transfer without cuts, through the same kind of proxy.
        let calm_peak = {
            let profiler = dhat::Profiler::builder().testing().build();
            let proxy = Proxy::start(server.addr).await;
            let report = send(vec![file.clone()], proxy.addr.to_string(), options()).await;
            assert!(report.success(), "{report:?}");
            drop(proxy);
            server.idle().await;
            let peak = dhat::HeapStats::get().max_bytes;
            drop(profiler);
            peak
        };

        let profiler = dhat::Profiler::builder().testing().build();
        cycle_rayon_injector();
        let before = settled().await;
        let reconnects = {
            let proxy = Proxy::cutting(server.addr, MIB as u64, CUTS).await;
            let report = send(vec![file.clone()], proxy.addr.to_string(), options()).await;
            assert!(report.success(), "{report:?}");
            assert_eq!(proxy.cuts(), CUTS, "the proxy did not cut {CUTS} times");
            assert!(proxy.accepted() > CUTS, "fewer connections than cuts");
            report.destinations[0].reconnects
        };
        server.idle().await;
        let after = settle_to(&before).await;
        drop(profiler);
        eprintln!(
            "{CUTS} cuts, {reconnects} reconnects\nbefore: {before:?}\nafter: {after:?}\n\
             peak without cuts {calm_peak} B, with cuts {} B",
            after.max_bytes
        );
        let root = server.stop().await;
        assert_eq!(
            std::fs::read(root.path().join("big")).unwrap(),
            std::fs::read(&file).unwrap()
        );
        assert_eq!(
            (after.curr_bytes, after.curr_blocks),
            (before.curr_bytes, before.curr_blocks),
            "live heap (bytes, blocks) changed over {CUTS} reconnects"
        );
        assert!(
            after.max_bytes <= calm_peak + OVERLAP,
            "peak heap with {CUTS} cuts {} B is over the peak without cuts {calm_peak} B \
             + {OVERLAP} B",
            after.max_bytes
        );
    });
}

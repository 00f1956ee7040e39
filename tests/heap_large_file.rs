//! Heap scenario: the peak heap while sending one file over loopback (sender and receiver in
//! this process) does not depend on the file's size, and stays within the sender's budget
//! plus a fixed overhead.
//!
//! The sender's chunks are mapped file pages, not heap; the heap peak is mostly the
//! receiver's frame buffers (one chunk-sized frame per connection, plus the one being
//! verified and written) and the sender's per-chunk bookkeeping.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod common;

use common::heap::{measure, runtime, MIB};
use common::write_file;
use common::{fast_options, send, TestServer};

/// Heap beyond the sender's budget that a transfer may use, whatever the file's size:
/// the receiver's buffers for `streams` connections of one 1 MiB chunk each (×2: one being
/// read while the previous one is written), socket and runtime bookkeeping.
const FIXED_OVERHEAD: usize = 16 * MIB;

/// What one connection's TLS buffers may add at a peak that a short transfer may not reach:
/// rustls queues up to 64 KiB of records to send. Measured flat from 256 MiB to 1 GiB.
const TLS_SLACK: usize = 64 * 1024;

#[test]
fn peak_heap_is_the_same_for_16_mib_and_256_mib() {
    let src = tempfile::tempdir().unwrap();
    let small = src.path().join("small");
    let big = src.path().join("big");
    write_file(&small, 16 << 20, 1);
    write_file(&big, 256 << 20, 2);
    let options = fast_options();
    let budget = options.pipeline.memory_bytes;
    runtime().block_on(async {
        let server = TestServer::start().await;
        let to = server.addr.to_string();
        send(vec![small.clone()], to.clone(), options.clone()).await;

        // A 16 MiB transfer does not always fill every connection's buffer at once (under CPU
        // load its peak can be half the usual): its highest peak of three is the reference.
        let mut s16 = 0;
        for _ in 0..3 {
            let (_, stats) = measure(send(vec![small.clone()], to.clone(), options.clone())).await;
            s16 = s16.max(stats.max_bytes);
        }
        let (_, s256) = measure(send(vec![big.clone()], to.clone(), options.clone())).await;
        server.stop().await;

        let slack = TLS_SLACK * options.streams;
        let ratio = s256.max_bytes as f64 / (s16 + slack) as f64;
        eprintln!(
            "peak heap: 16 MiB file {s16} B (highest of 3), 256 MiB file {} B, ratio to the \
             first plus {slack} B of TLS buffers {ratio:.3}",
            s256.max_bytes
        );
        assert!(
            ratio <= 1.05,
            "peak heap grew with the file: {s16} B for 16 MiB, {} B for 256 MiB",
            s256.max_bytes
        );
        assert!(
            s256.max_bytes <= budget as usize + FIXED_OVERHEAD,
            "peak heap {} B exceeds the budget {budget} B + {FIXED_OVERHEAD} B",
            s256.max_bytes
        );
    });
}

//! Peak RSS of both ends while `tidegate send` moves a 2 GiB file to `tidegate serve` over
//! loopback, each end its own process with default options.
//!
//! The sender's chunks are mapped file pages, which count toward its RSS while mapped: if
//! windows were never released, the sender's peak would approach the file size. The receiver
//! holds at most one chunk-sized frame per connection plus the chunk being written. Both must
//! stay within the default budget (64 MiB) plus a fixed overhead of 32 MiB: the 96 MiB per-end
//! target of DESIGN.md.

use std::io::{Read, Write};

mod common;

use common::process::{mib, run_measured, serve, stop, tidegate, vm_hwm};

const FILE_BYTES: u64 = 2 << 30;
const BOUND_BYTES: u64 = 96 << 20;

fn hash_file(path: &std::path::Path) -> blake3::Hash {
    let mut f = std::fs::File::open(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return hasher.finalize();
        }
        hasher.update(&buf[..n]);
    }
}

#[test]
fn peak_rss_of_each_end_sending_2_gib_stays_near_the_budget() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let mut reference = blake3::Hasher::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let block = common::data(1 << 20, 7);
        for i in 0..FILE_BYTES >> 20 {
            let mut b = block.clone();
            b[..8].copy_from_slice(&i.to_le_bytes()); // no two blocks alike
            f.write_all(&b).unwrap();
            reference.update(&b);
        }
        f.flush().unwrap();
    }

    let (server, addr) = serve(dst.path(), &[]);
    let (status, _, sender_peak) =
        run_measured(tidegate().args(["send", "--to", &addr]).arg(&file));
    // The server is still running: its peak so far covers the whole transfer.
    let receiver_peak = vm_hwm(&server);
    assert!(stop(server).success());
    assert!(status.success(), "send failed: {status}");
    assert_eq!(hash_file(&dst.path().join("big.bin")), reference.finalize());

    eprintln!(
        "peak RSS sending 2 GiB: sender {:.1} MiB, receiver {:.1} MiB",
        mib(sender_peak),
        mib(receiver_peak)
    );
    assert!(
        sender_peak < BOUND_BYTES,
        "sender peak RSS {sender_peak} bytes exceeds {BOUND_BYTES}"
    );
    assert!(
        receiver_peak < BOUND_BYTES,
        "receiver peak RSS {receiver_peak} bytes exceeds {BOUND_BYTES}"
    );
}

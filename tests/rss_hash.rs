//! Peak RSS of `tidegate hash` on a 2 GiB file, measured on a child process.
//!
//! Mapped file pages count toward RSS, so this catches windows that are never unmapped,
//! which a heap profiler cannot see: if every window stayed mapped, the peak would approach
//! the file size. The bound is the default hash budget (32 MiB) plus one 4 MiB window plus the
//! process's fixed overhead.

use std::io::Write;
use std::process::Command;

mod common;

use common::process::run_measured;

const FILE_BYTES: usize = 2 << 30;
const BOUND_BYTES: u64 = 64 << 20;

#[test]
fn peak_rss_hashing_2_gib_stays_near_the_budget() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut reference = blake3::Hasher::new();
    for i in 0..FILE_BYTES / block.len() {
        let mut b = block.clone();
        b[0] = i as u8; // no two blocks alike
        f.write_all(&b).unwrap();
        reference.update(&b);
    }
    f.flush().unwrap();
    let (status, stdout, peak) = run_measured(
        Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .arg("hash")
            .arg(f.path()),
    );
    assert!(status.success());
    assert_eq!(
        stdout,
        format!(
            "{}  {}\n",
            reference.finalize().to_hex(),
            f.path().display()
        )
    );
    eprintln!(
        "peak RSS hashing 2 GiB: {:.1} MiB",
        peak as f64 / (1 << 20) as f64
    );
    assert!(
        peak < BOUND_BYTES,
        "peak RSS {peak} bytes exceeds {BOUND_BYTES}"
    );
}

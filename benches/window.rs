//! The cost of reading a page-cached file through bounded mapped windows, isolated from the
//! rest of the pipeline (no tokio, no budget, no queues): for each window, map it, hash its
//! chunks on the rayon pool (which faults the pages in), release each chunk's pages, unmap.
//! The in-run baseline is what `b3sum` does: one mapping of the whole file, hashed with
//! `Hasher::update_rayon`. Throughput is per byte of the file, so the gap between a variant
//! and the baseline is the per-window cost.
//!
//! Variants: the window length, pre-faulting the window when it is mapped (`MAP_POPULATE`),
//! and skipping the release of each chunk's pages (`MADV_DONTNEED`).

use std::fs::File;
use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memmap2::{Advice, Mmap, MmapOptions};
use tidegate::pipeline::hash::{digest, RootBuilder};

const CHUNK: usize = 4 << 20;

/// 1 GiB when timed; 64 MiB in test mode (`cargo bench -- --test`), which only exercises it.
fn file_len() -> usize {
    if std::env::args().any(|a| a == "--test") {
        64 << 20
    } else {
        1 << 30
    }
}

fn make_file(len: usize) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let block: Vec<u8> = (0..(8 << 20) as u32)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    for _ in 0..len / block.len() {
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
    file
}

#[derive(Clone, Copy)]
struct Variant {
    window: usize,
    populate: bool,
    release: bool,
}

fn map(file: &File, offset: u64, len: usize, populate: bool) -> Mmap {
    let mut options = MmapOptions::new();
    options.offset(offset).len(len);
    if populate {
        options.populate();
    }
    // SAFETY: a private temporary file nobody else writes or truncates while it is mapped.
    let map = unsafe { options.map(file) }.unwrap();
    let _ = map.advise(Advice::Sequential);
    map
}

fn release(data: &[u8]) {
    // SAFETY: a range inside a live read-only file mapping; MADV_DONTNEED only drops this
    // process's page table entries, the contents stay in the page cache.
    unsafe {
        libc::madvise(
            data.as_ptr() as *mut libc::c_void,
            data.len(),
            libc::MADV_DONTNEED,
        );
    }
}

/// Hashes `file` window by window, as the pipeline's reader and hashing pool do.
fn windows(file: &File, len: usize, v: Variant) -> blake3::Hash {
    let mut root = RootBuilder::new();
    let mut offset = 0;
    while offset < len {
        let window_len = v.window.min(len - offset);
        let window = map(file, offset as u64, window_len, v.populate);
        let digests: Vec<_> = {
            let chunks: Vec<(u64, &[u8])> = window
                .chunks(CHUNK)
                .enumerate()
                .map(|(i, c)| ((offset + i * CHUNK) as u64, c))
                .collect();
            let mut out = vec![None; chunks.len()];
            rayon::scope(|s| {
                for ((at, data), slot) in chunks.iter().zip(out.iter_mut()) {
                    s.spawn(move |_| {
                        let d = digest(*at, data);
                        if v.release {
                            release(data);
                        }
                        *slot = Some(d);
                    });
                }
            });
            out.into_iter().map(Option::unwrap).collect()
        };
        for d in digests {
            root.push(d).unwrap();
        }
        drop(window);
        offset += window_len;
    }
    root.finish().unwrap()
}

fn window_cost(c: &mut Criterion) {
    let len = file_len();
    let tmp = make_file(len);
    let file = File::open(tmp.path()).unwrap();
    let expected = {
        let whole = map(&file, 0, len, false);
        let mut h = blake3::Hasher::new();
        h.update_rayon(&whole);
        h.finalize()
    };
    let mut group = c.benchmark_group("window_cost");
    group.throughput(Throughput::Bytes(len as u64));
    group.sample_size(10);
    group.bench_function("whole_mapping_update_rayon", |b| {
        b.iter(|| {
            let whole = map(&file, 0, len, false);
            let mut h = blake3::Hasher::new();
            h.update_rayon(black_box(&whole));
            assert_eq!(h.finalize(), expected);
        })
    });
    let variants = [
        ("windows", 8, false, true),
        ("windows", 16, false, true),
        ("windows", 32, false, true),
        ("windows_populate", 8, true, true),
        ("windows_populate", 32, true, true),
        ("windows_no_release", 8, false, false),
        ("windows_populate_no_release", 8, true, false),
    ];
    for (name, mib, populate, release) in variants {
        let v = Variant {
            window: mib << 20,
            populate,
            release,
        };
        group.bench_with_input(BenchmarkId::new(name, format!("{mib}MiB")), &v, |b, &v| {
            b.iter(|| assert_eq!(windows(&file, len, v), expected))
        });
    }
    group.finish();
}

criterion_group!(benches, window_cost);
criterion_main!(benches);

//! Chunking plus hashing: per-chunk BLAKE3 with root assembly (one thread), the same data
//! through `blake3::hash` as the in-run baseline, and the whole `HashJob` pipeline (mmap
//! windows, budget, rayon) on a page-cached file.

use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidegate::pipeline::hash::{digest, RootBuilder};
use tidegate::{ChunkSize, HashJob, Input};

const BYTES: usize = 64 << 20;

fn data() -> Vec<u8> {
    (0..BYTES)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect()
}

fn chunked(c: &mut Criterion) {
    let input = data();
    let mut group = c.benchmark_group("chunk_hash");
    group.throughput(Throughput::Bytes(BYTES as u64));
    group.sample_size(10);
    group.bench_function("blake3_hash_baseline", |b| {
        b.iter(|| blake3::hash(black_box(&input)))
    });
    for chunk in [64 << 10, 1 << 20] {
        group.bench_with_input(
            BenchmarkId::new("digest_and_root", chunk),
            &chunk,
            |b, &chunk| {
                b.iter(|| {
                    let mut root = RootBuilder::new();
                    for (i, piece) in input.chunks(chunk).enumerate() {
                        root.push(digest((i * chunk) as u64, piece)).unwrap();
                    }
                    root.finish().unwrap()
                })
            },
        );
    }
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let input = data();
    for _ in 0..4 {
        file.write_all(&input).unwrap();
    }
    file.flush().unwrap();
    let total = 4 * BYTES as u64;
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(total));
    group.sample_size(10);
    for chunk in [256 << 10, 1 << 20] {
        group.bench_with_input(
            BenchmarkId::new("hash_job_file", chunk),
            &chunk,
            |b, &chunk| {
                b.iter(|| {
                    runtime.block_on(async {
                        let mut options = HashJob::default_options();
                        options.chunk_size = ChunkSize::new(chunk).unwrap();
                        let job = HashJob::new(vec![Input::Path(file.path().to_path_buf())])
                            .options(options);
                        let report = job.start().unwrap().wait().await.unwrap();
                        assert_eq!(report.bytes, total);
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, chunked, pipeline);
criterion_main!(benches);

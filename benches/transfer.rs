//! The wire codec (encode head / decode of data frames) and a loopback transfer through a real
//! server, both with `Throughput::Bytes`.

use std::hint::black_box;
use std::io::Write;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidegate::protocol::{decode, encode, encode_head, Frame, MAX_FRAME_LEN};
use tidegate::{Server, ServerOptions, Transfer};

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for len in [64 << 10, 1 << 20] {
        let frame = Frame::Data {
            file: 1,
            index: 7,
            cv: [3; 32],
            payload: Bytes::from(vec![0xa5u8; len]),
        };
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("encode_head", len), &frame, |b, f| {
            let mut head = BytesMut::with_capacity(128);
            b.iter(|| {
                head.clear();
                black_box(encode_head(f, &mut head))
            })
        });
        let mut wire = BytesMut::new();
        encode(&frame, &mut wire);
        let wire = wire.freeze();
        group.bench_with_input(BenchmarkId::new("decode", len), &wire, |b, w| {
            b.iter(|| {
                let mut buf = BytesMut::from(&w[..]);
                black_box(decode(&mut buf, MAX_FRAME_LEN).unwrap())
            })
        });
    }
    group.finish();
}

fn loopback(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("payload.bin");
    let mut f = std::fs::File::create(&file).unwrap();
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for _ in 0..64 {
        f.write_all(&block).unwrap();
    }
    drop(f);
    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Bytes(64 << 20));
    group.sample_size(10);
    group.bench_function("send_64MiB_file", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let dst = tempfile::tempdir().unwrap();
                let server = Server::bind(
                    "127.0.0.1:0".parse().unwrap(),
                    ServerOptions::new(dst.path()),
                )
                .await
                .unwrap();
                let addr = server.local_addr().unwrap();
                let stop = server.shutdown_token();
                let serving = tokio::spawn(server.serve());
                let report = Transfer::new(vec![file.clone()], vec![addr.to_string()])
                    .start()
                    .unwrap()
                    .wait()
                    .await
                    .unwrap();
                assert!(report.success());
                stop.cancel();
                serving.await.unwrap().unwrap();
            })
        })
    });
    group.finish();
}

criterion_group!(benches, codec, loopback);
criterion_main!(benches);

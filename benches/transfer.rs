//! The wire codec (encode head / decode of data frames) and a loopback transfer through a real
//! server, both with `Throughput::Bytes`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tidegate::protocol::{decode, encode, encode_head, Frame, MAX_FRAME_LEN};
use tidegate_testkit::{send, test_key, write_file, TestServer};

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
    write_file(&file, 64 << 20, 1);
    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Bytes(64 << 20));
    group.sample_size(10);
    group.bench_function("send_64MiB_file", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let server = TestServer::start().await;
                let mut options = tidegate::TransferOptions::default();
                options.key = test_key();
                let report = send(vec![file.clone()], server.addr.to_string(), options).await;
                assert!(report.success(), "{report:?}");
                server.stop().await;
            })
        })
    });
    group.finish();
}

criterion_group!(benches, codec, loopback);
criterion_main!(benches);

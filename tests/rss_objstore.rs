//! Peak RSS of `tidegate send` putting a 2 GiB file into a real Garage (one node, on
//! loopback) with default options: parts in flight hold chunks, which count against the
//! budget, so the sender stays within the same 96 MiB as with a receiver. Then of
//! `tidegate hash --check` reading the object back: its body streams through the pipeline.
#![cfg(feature = "s3")]

use std::io::Write;

mod common;

use common::garage::{Garage, REGION};
use common::process::{mib, run_measured, tidegate};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{Attribute, GetOptions, ObjectStore};

const FILE_BYTES: u64 = 2 << 30;
const BOUND_BYTES: u64 = 96 << 20;

#[test]
fn peak_rss_sending_2_gib_into_an_object_store_stays_near_the_budget() {
    let g = Garage::start();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let mut reference = blake3::Hasher::new();
    let url = format!("s3://{}/rss/big.bin", g.bucket);
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let block = common::data(1 << 20, 9);
        for i in 0..FILE_BYTES >> 20 {
            let mut b = block.clone();
            b[..8].copy_from_slice(&i.to_le_bytes());
            f.write_all(&b).unwrap();
            reference.update(&b);
        }
        f.flush().unwrap();
    }
    let mut cmd = tidegate();
    cmd.args(["send", "--no-progress", "--to"])
        .arg(format!("s3://{}/rss", g.bucket))
        .arg(&file)
        .envs(g.env());
    let (status, _, peak) = run_measured(&mut cmd);
    assert!(status.success(), "send failed: {status}");

    let store = AmazonS3Builder::new()
        .with_endpoint(&g.endpoint)
        .with_allow_http(true)
        .with_region(REGION)
        .with_bucket_name(&g.bucket)
        .with_access_key_id(&g.key_id)
        .with_secret_access_key(&g.secret)
        .build()
        .unwrap();
    let head = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(store.get_opts(
            &Path::parse("rss/big.bin").unwrap(),
            GetOptions {
                head: true,
                ..GetOptions::default()
            },
        ))
        .unwrap();
    assert_eq!(head.meta.size, FILE_BYTES);
    let root = reference.finalize().to_hex().to_string();
    assert_eq!(
        head.attributes
            .get(&Attribute::Metadata("blake3".into()))
            .map(|v| v.to_string()),
        Some(root.clone())
    );
    eprintln!(
        "peak RSS putting 2 GiB into Garage: sender {:.1} MiB",
        mib(peak)
    );
    assert!(
        peak < BOUND_BYTES,
        "sender peak RSS {peak} bytes exceeds {BOUND_BYTES}"
    );

    let sums = src.path().join("sums");
    std::fs::write(&sums, format!("{root}  {url}\n")).unwrap();
    let mut check = tidegate();
    check
        .args(["hash", "--check", "--no-progress"])
        .arg(&sums)
        .envs(g.env());
    let (status, out, peak) = run_measured(&mut check);
    assert!(status.success(), "check failed: {status}: {out}");
    assert!(out.contains(&format!("{url}: OK")), "{out}");
    eprintln!("peak RSS checking the 2 GiB object: {:.1} MiB", mib(peak));
    assert!(
        peak < BOUND_BYTES,
        "checker peak RSS {peak} bytes exceeds {BOUND_BYTES}"
    );
}

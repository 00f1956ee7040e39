//! Replays every committed fuzz corpus file through the fuzz targets' own property checks, so
//! CI covers them on stable without cargo-fuzz.

use tidegate::protocol::fuzzing::{check_decode, check_roundtrip};

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        check(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn decode_corpus() {
    replay("decode", check_decode);
}

#[test]
fn roundtrip_corpus() {
    replay("roundtrip", check_roundtrip);
}

//! The properties the fuzz targets check, as plain functions, so that `cargo test` on stable
//! replays the committed corpora through exactly the same checks (`tests/fuzz_corpus.rs`).

use bytes::BytesMut;

use super::codec::{decode, encode, LEN_PREFIX};

/// The frame limit used by the fuzz targets: small, so that the bound is exercised.
pub const FUZZ_MAX_FRAME: usize = 64 * 1024;

/// Decodes `data` frame by frame. Panics (a finding) if the buffer's capacity ever exceeds
/// what one frame within the limit needs, or if decoding panics.
pub fn check_decode(data: &[u8]) {
    let mut buf = BytesMut::new();
    for piece in data.chunks(7) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf, FUZZ_MAX_FRAME) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let bound = (FUZZ_MAX_FRAME + LEN_PREFIX).max(data.len()) * 2;
        assert!(
            buf.capacity() <= bound,
            "buffered {} bytes for input of {}",
            buf.capacity(),
            data.len()
        );
    }
}

/// If `data` starts with a valid frame, checks that `decode(encode(f)) == f`.
pub fn check_roundtrip(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(frame)) = decode(&mut buf, FUZZ_MAX_FRAME) {
        let mut out = BytesMut::new();
        encode(&frame, &mut out);
        let again = decode(&mut out, FUZZ_MAX_FRAME);
        assert_eq!(again, Ok(Some(frame)));
        assert!(out.is_empty());
    }
}

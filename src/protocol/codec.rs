//! The sans-IO codec: length-prefixed frames in and out of byte buffers.
//!
//! [`decode`] takes what has arrived so far and returns `Ok(None)` until a whole frame is
//! there; a length over the limit is rejected from the 4-byte header alone, before anything is
//! buffered or reserved. [`encode_head`] writes everything but a frame's payload, so a sender
//! can pass the payload's `Bytes` to a vectored write without copying it; [`encode`] writes
//! the whole frame (tests, fuzzing, small frames). No sockets, no clock.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::frame::Frame;

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;
/// The largest frame a peer may send by default: a 64 MiB chunk plus room for its header.
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024 + 64 * 1024;

/// Decodes one frame from the front of `src`, consuming it. `Ok(None)`: need more bytes.
///
/// # Errors
/// A [`DecodeError`] for malformed input; the connection should then be closed.
pub fn decode(src: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, DecodeError> {
    if src.len() < LEN_PREFIX {
        return Ok(None);
    }
    let mut prefix = [0u8; LEN_PREFIX];
    prefix.copy_from_slice(&src[..LEN_PREFIX]);
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_len {
        return Err(DecodeError::TooLarge { len, max: max_len });
    }
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    let total = LEN_PREFIX + len;
    if src.len() < total {
        // Room for the rest of this frame only; the length is within the limit.
        reserve_exact(src, total - src.len());
        return Ok(None);
    }
    src.advance(LEN_PREFIX);
    let ty = src.get_u8();
    let body: Bytes = src.split_to(len - 1).freeze();
    Frame::parse(ty, body).map(Some)
}

/// Makes room for `additional` more bytes in `buf` without ever allocating more than that:
/// `BytesMut::reserve` may double the allocation, which let a connection's buffer reach twice
/// the largest frame when a frame was almost complete in a buffer of nearly its size.
pub(crate) fn reserve_exact(buf: &mut BytesMut, additional: usize) {
    if buf.capacity() - buf.len() >= additional || buf.try_reclaim(additional) {
        return;
    }
    let mut exact = BytesMut::with_capacity(buf.len() + additional);
    exact.extend_from_slice(buf);
    *buf = exact;
}

/// The length of `frame` on the wire, prefix included.
pub fn encoded_len(frame: &Frame) -> usize {
    let mut head = BytesMut::new();
    frame.put_body(&mut head);
    LEN_PREFIX + 1 + head.len() + frame.payload().map_or(0, Bytes::len)
}

/// Writes `frame`'s prefix, type and body into `dst`, but not its payload, and returns the
/// payload (a cheap clone of the `Bytes`) for the caller to write right after.
pub fn encode_head(frame: &Frame, dst: &mut BytesMut) -> Option<Bytes> {
    let start = dst.len();
    dst.put_u32(0); // patched below
    dst.put_u8(frame.type_byte());
    frame.put_body(dst);
    let payload = frame.payload().cloned();
    let len = dst.len() - start - LEN_PREFIX + payload.as_ref().map_or(0, Bytes::len);
    // Frames are built from chunks of at most 64 MiB and strings of at most 4 KiB, so the
    // length fits in u32; saturate rather than wrap if a caller breaks that.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    dst[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    payload
}

/// Writes the whole frame, payload included, into `dst`.
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    if let Some(payload) = encode_head(frame, dst) {
        dst.put_slice(&payload);
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{Meta, MAX_STRING_LEN};
    use super::*;
    use proptest::prelude::*;

    /// A frame of the largest size `max_len` allows, on the wire.
    fn largest_frame(max_len: usize) -> BytesMut {
        let data = |n: usize| Frame::Data {
            file: 1,
            index: 2,
            cv: [3; 32],
            payload: Bytes::from(vec![4u8; n]),
        };
        let head = encoded_len(&data(0)) - LEN_PREFIX;
        let mut wire = BytesMut::new();
        encode(&data(max_len - head), &mut wire);
        assert_eq!(wire.len(), LEN_PREFIX + max_len);
        wire
    }

    /// The buffer grows to hold the rest of a frame and no more, whatever it held before
    /// (`BytesMut::reserve` may double it instead: a buffer of 600 KiB holding the start of a
    /// 1 MiB frame would become 1.2 MiB).
    #[test]
    fn the_buffer_grows_to_one_frame_and_no_more() {
        let max_len = 1 << 20;
        let wire = largest_frame(max_len);
        for (capacity, have) in [
            (600 << 10, 100 << 10),
            (1 << 20, (1 << 20) - 100),
            (64 << 10, 10),
        ] {
            let mut buf = BytesMut::with_capacity(capacity);
            buf.extend_from_slice(&wire[..have]);
            assert_eq!(decode(&mut buf, max_len), Ok(None));
            assert!(
                buf.capacity() <= wire.len().max(capacity),
                "{} bytes of room for a frame of {} (buffer of {capacity} holding {have})",
                buf.capacity(),
                wire.len()
            );
            buf.extend_from_slice(&wire[have..]);
            assert!(matches!(
                decode(&mut buf, max_len),
                Ok(Some(Frame::Data { .. }))
            ));
        }
    }

    #[test]
    fn reserve_exact_adds_what_is_asked() {
        let mut buf = BytesMut::with_capacity(1 << 20);
        buf.extend_from_slice(&vec![0u8; (1 << 20) - 2048]);
        reserve_exact(&mut buf, 64 << 10);
        assert_eq!(buf.capacity(), buf.len() + (64 << 10));
        // Room already there is used as it is.
        let before = buf.capacity();
        reserve_exact(&mut buf, 1024);
        assert_eq!(buf.capacity(), before);
        assert!(buf.iter().all(|&b| b == 0));
    }

    fn samples() -> Vec<Frame> {
        let meta = Meta {
            path: b"dir/f\xffile".to_vec(),
            size: 5,
            mode: 0o644,
            mtime_ns: -1,
        };
        vec![
            Frame::Hello {
                version: 1,
                session: [7; 16],
                pake: Bytes::from_static(&[9; 33]),
            },
            Frame::Pake {
                pake: [1; 33],
                confirm: [4; 32],
            },
            Frame::Confirm { mac: [2; 32] },
            Frame::Welcome {
                mac: [3; 32],
                incarnation: 5,
            },
            Frame::FileBegin {
                file: 4,
                meta: meta.clone(),
                chunk_len: 1 << 20,
            },
            Frame::FileReady { file: 4, have: 9 },
            Frame::Data {
                file: 4,
                index: 2,
                cv: [5; 32],
                payload: Bytes::from_static(b"payload"),
            },
            Frame::Ack { file: 4, index: 2 },
            Frame::FileEnd {
                file: 4,
                root: [6; 32],
            },
            Frame::FileDone { file: 4 },
            Frame::SmallFile {
                file: 5,
                meta: meta.clone(),
                root: [8; 32],
                payload: Bytes::from_static(b"12345"),
            },
            Frame::Dir {
                file: 6,
                meta: Meta {
                    size: 0,
                    ..meta.clone()
                },
            },
            Frame::Symlink {
                file: 7,
                meta: Meta { size: 0, ..meta },
                target: b"../x".to_vec(),
            },
            Frame::Error {
                file: u64::MAX,
                code: 2,
                message: b"wrong key".to_vec(),
            },
            Frame::Finish,
            Frame::Finished,
        ]
    }

    fn bytes_of(frame: &Frame) -> BytesMut {
        let mut b = BytesMut::new();
        encode(frame, &mut b);
        b
    }

    #[test]
    fn every_frame_round_trips_and_every_strict_prefix_is_incomplete() {
        for frame in samples() {
            let full = bytes_of(&frame);
            assert_eq!(full.len(), encoded_len(&frame));
            for cut in 0..full.len() {
                let mut partial = BytesMut::from(&full[..cut]);
                assert_eq!(
                    decode(&mut partial, MAX_FRAME_LEN),
                    Ok(None),
                    "{frame:?} cut at {cut}"
                );
            }
            let mut whole = full.clone();
            whole.extend_from_slice(&full); // two in a row
            assert_eq!(decode(&mut whole, MAX_FRAME_LEN), Ok(Some(frame.clone())));
            assert_eq!(decode(&mut whole, MAX_FRAME_LEN), Ok(Some(frame)));
            assert!(whole.is_empty());
        }
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut b = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode(&mut b, MAX_FRAME_LEN),
            Err(DecodeError::TooLarge {
                len: u32::MAX as usize,
                max: MAX_FRAME_LEN
            })
        );
        assert!(b.capacity() < 1024, "nothing was reserved for it");
    }

    #[test]
    fn malformed_frames_give_specific_errors() {
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (vec![0, 0, 0, 0], DecodeError::Empty),
            (vec![0, 0, 0, 1, 99], DecodeError::UnknownType(99)),
            (vec![0, 0, 0, 3, 8, 0, 0], DecodeError::ShortBody),
            (
                vec![0, 0, 0, 2, 15, 0],
                DecodeError::TrailingBytes { ty: 15, extra: 1 },
            ),
            (
                [&[0, 0, 0, 55, 1][..], b"XXXX", &[0u8; 50][..]].concat(),
                DecodeError::BadMagic(*b"XXXX"),
            ),
        ];
        for (input, want) in cases {
            let mut b = BytesMut::from(&input[..]);
            assert_eq!(decode(&mut b, MAX_FRAME_LEN), Err(want));
        }
        // A string longer than the limit.
        let mut body = vec![14u8];
        body.extend_from_slice(&u64::MAX.to_be_bytes());
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&((MAX_STRING_LEN + 1) as u16).to_be_bytes());
        body.extend(std::iter::repeat_n(b'a', MAX_STRING_LEN + 1));
        let mut b = BytesMut::new();
        b.put_u32(body.len() as u32);
        b.put_slice(&body);
        assert_eq!(
            decode(&mut b, MAX_FRAME_LEN),
            Err(DecodeError::StringTooLong {
                len: MAX_STRING_LEN + 1
            })
        );
        // A small file whose content disagrees with its size.
        let mut b = bytes_of(&Frame::SmallFile {
            file: 1,
            meta: Meta {
                path: b"f".to_vec(),
                size: 3,
                mode: 0,
                mtime_ns: 0,
            },
            root: [0; 32],
            payload: Bytes::from_static(b"12345"),
        });
        assert_eq!(
            decode(&mut b, MAX_FRAME_LEN),
            Err(DecodeError::SizeMismatch {
                declared: 3,
                actual: 5
            })
        );
    }

    #[test]
    fn payload_is_not_copied_by_encode_head() {
        let payload = Bytes::from(vec![1u8; 1000]);
        let frame = Frame::Data {
            file: 1,
            index: 0,
            cv: [0; 32],
            payload: payload.clone(),
        };
        let mut head = BytesMut::new();
        let out = encode_head(&frame, &mut head).unwrap();
        assert_eq!(out.as_ptr(), payload.as_ptr());
        assert_eq!(head.len() + out.len(), encoded_len(&frame));
    }

    fn arb_meta() -> impl Strategy<Value = Meta> {
        (
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u64>(),
            any::<u32>(),
            any::<i64>(),
        )
            .prop_map(|(path, size, mode, mtime_ns)| Meta {
                path,
                size,
                mode,
                mtime_ns,
            })
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            (any::<u16>(), any::<[u8; 16]>(), bytes()).prop_map(|(version, session, pake)| {
                Frame::Hello {
                    version,
                    session,
                    pake: pake.into(),
                }
            }),
            (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(pake, confirm)| {
                let mut p = [0; 33];
                p[1..].copy_from_slice(&pake);
                Frame::Pake { pake: p, confirm }
            }),
            (any::<u64>(), arb_meta(), any::<u32>()).prop_map(|(file, meta, chunk_len)| {
                Frame::FileBegin {
                    file,
                    meta,
                    chunk_len,
                }
            }),
            (any::<u64>(), any::<u64>(), any::<[u8; 32]>(), bytes()).prop_map(
                |(file, index, cv, p)| Frame::Data {
                    file,
                    index,
                    cv,
                    payload: Bytes::from(p)
                }
            ),
            (any::<u64>(), arb_meta(), any::<[u8; 32]>(), bytes()).prop_map(
                |(file, mut meta, root, p)| {
                    meta.size = p.len() as u64;
                    Frame::SmallFile {
                        file,
                        meta,
                        root,
                        payload: Bytes::from(p),
                    }
                }
            ),
            (any::<u64>(), arb_meta(), bytes())
                .prop_map(|(file, meta, target)| { Frame::Symlink { file, meta, target } }),
            (any::<u64>(), any::<u16>(), bytes()).prop_map(|(file, code, message)| {
                Frame::Error {
                    file,
                    code,
                    message,
                }
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(file, index)| Frame::Ack { file, index }),
            (any::<u64>(), any::<u64>()).prop_map(|(file, have)| Frame::FileReady { file, have }),
            Just(Frame::Finish),
        ]
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(frame in arb_frame()) {
            let mut b = bytes_of(&frame);
            prop_assert_eq!(decode(&mut b, MAX_FRAME_LEN), Ok(Some(frame)));
            prop_assert!(b.is_empty());
        }

        /// A valid frame followed by arbitrary bytes: the frame comes out first, and every frame
        /// decoded from the rest is exactly the bytes it consumed (the encoding is canonical, so
        /// nothing is skipped or invented); an incomplete frame consumes nothing.
        #[test]
        fn arbitrary_bytes_decode_only_to_their_own_encoding(
            first in arb_frame(),
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut b = bytes_of(&first);
            b.extend_from_slice(&tail);
            let mut decoded = Vec::new();
            loop {
                let before = b.clone();
                match decode(&mut b, MAX_FRAME_LEN) {
                    Ok(Some(frame)) => {
                        let used = before.len() - b.len();
                        prop_assert_eq!(&bytes_of(&frame)[..], &before[..used]);
                        decoded.push(frame);
                    }
                    Ok(None) => {
                        prop_assert_eq!(&b[..], &before[..]);
                        let declared = before
                            .get(..LEN_PREFIX)
                            .map(|h| u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize);
                        prop_assert!(declared.is_none_or(|len| before.len() < LEN_PREFIX + len));
                        break;
                    }
                    Err(_) => break,
                }
            }
            prop_assert_eq!(decoded.first(), Some(&first));
        }
    }
}

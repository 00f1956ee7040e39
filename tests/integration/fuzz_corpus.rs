//! Replays every committed fuzz corpus file through the fuzz targets' own property checks, so
//! CI covers them on stable without cargo-fuzz.
//!
//! The hand-written seeds are produced by `write_seeds` (ignored; run it with
//! `cargo test --test integration fuzz_corpus -- --ignored` after changing the protocol).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tidegate::protocol::fuzzing::{check_decode, check_handshake, check_roundtrip};
use tidegate::protocol::handshake::{ClientHandshake, Key};
use tidegate::protocol::{encode, Frame, Meta};
use tidegate::server::fuzzing::{check_paths, check_session, session_input, Arena};

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn replay(target: &str, mut check: impl FnMut(&[u8])) {
    let dir = corpus(target);
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

#[test]
fn handshake_corpus() {
    replay("handshake", check_handshake);
}

#[test]
fn session_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let arena = Arena::new(dir.path()).unwrap();
    replay("session", |data| check_session(&arena, data));
}

#[test]
fn paths_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let arena = Arena::new(dir.path()).unwrap();
    replay("paths", |data| check_paths(&arena, data));
}

fn meta(path: &str, size: u64) -> Meta {
    Meta {
        path: path.as_bytes().to_vec(),
        size,
        mode: 0o644,
        mtime_ns: 1_700_000_000_000_000_000,
    }
}

fn small(file: u64, path: &str, body: &'static [u8]) -> Frame {
    Frame::SmallFile {
        file,
        meta: meta(path, body.len() as u64),
        root: [0; 32],
        payload: Bytes::from_static(body),
    }
}

fn dir(file: u64, path: &str) -> Frame {
    Frame::Dir {
        file,
        meta: meta(path, 0),
    }
}

fn link(file: u64, path: &str, target: &str) -> Frame {
    Frame::Symlink {
        file,
        meta: meta(path, 0),
        target: target.as_bytes().to_vec(),
    }
}

/// A two-chunk file of 16 KiB + `tail` bytes: begin, data, end.
fn large(file: u64, path: &str, tail: usize, end: bool) -> Vec<Frame> {
    let chunk = 16 * 1024;
    let mut frames = vec![
        Frame::FileBegin {
            file,
            meta: meta(path, (chunk + tail) as u64),
            chunk_len: chunk as u32,
        },
        Frame::Data {
            file,
            index: 0,
            cv: [0; 32],
            payload: Bytes::from(vec![b'a'; chunk]),
        },
        Frame::Data {
            file,
            index: 1,
            cv: [0; 32],
            payload: Bytes::from(vec![b'b'; tail]),
        },
    ];
    if end {
        frames.push(Frame::FileEnd {
            file,
            root: [0; 32],
        });
    }
    frames
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
#[ignore = "writes the hand-made seeds into fuzz/corpus"]
fn write_seeds() {
    // handshake: an honest client's frames, a reflected proof, key splits on one channel
    // (an even first byte) and on two (odd).
    let (_, hello) = ClientHandshake::new(&Key::from_passphrase("k"), [1; 16], [5; 32], [2; 32]);
    let mut honest = bytes::BytesMut::new();
    encode(&hello, &mut honest);
    encode(&Frame::Confirm { mac: [9; 32] }, &mut honest);
    encode(
        &Frame::Pake {
            pake: [0x42; 33],
            confirm: [5; 32],
        },
        &mut honest,
    );
    encode(
        &Frame::Welcome {
            mac: [9; 32],
            incarnation: 1,
        },
        &mut honest,
    );
    write("handshake", "honest", &honest);
    write("handshake", "equal_keys", b"\x06keykey");
    write("handshake", "other_keys", b"\x06keyKEY");
    write("handshake", "two_channels", b"\x07keykey");

    // session
    let files = [
        small(1, "a.txt", b"hello"),
        small(2, "sub/b", b"world"),
        dir(3, "d/e"),
        small(4, "d/e/f", b""),
        small(5, "d/g", b"more"),
        Frame::Finish,
    ];
    write("session", "small_files", &session_input(true, &files));
    write("session", "wrong_hashes", &session_input(false, &files));
    let mut big = large(1, "big", 100, true);
    big.push(Frame::Finish);
    write("session", "large_file", &session_input(true, &big));
    let escapes = [
        small(1, "escape/x", b"x"),
        small(2, "sub/up/x", b"x"),
        small(3, "../x", b"x"),
        small(4, "/x", b"x"),
        dir(5, "escape"),
        dir(6, "sub/up"),
        dir(7, "escape/d"),
        link(8, "sub/up", "/"),
        link(9, "l", ".."),
        small(10, "l/x", b"x"),
        dir(11, "l/d"),
        small(12, "escape", b"replaces the link"),
        Frame::Finish,
    ];
    write("session", "escapes", &session_input(true, &escapes));
    let mut clash = vec![dir(1, "x"), small(2, "x", b"onto a dir")];
    clash.extend(large(3, "y", 10, false));
    clash.push(dir(4, "y"));
    clash.push(Frame::FileEnd {
        file: 3,
        root: [0; 32],
    });
    clash.push(small(5, "z", b"z"));
    clash.push(dir(6, "z"));
    clash.push(link(7, "x", "t"));
    clash.push(Frame::Finish);
    write("session", "clashes", &session_input(true, &clash));
    let mut unfinished = large(1, "u", 5, false);
    unfinished.push(small(2, "s", b"never flushed"));
    write("session", "unfinished", &session_input(true, &unfinished));

    // paths
    let paths: [&[u8]; 14] = [
        b"a",
        b"a/b/c",
        b"escape",
        b"escape/x",
        b"sub/up",
        b"sub/up/x",
        b"sub/x",
        b"../x",
        b"/x",
        b"a//b",
        b"a/./b",
        b"",
        b"a\0b",
        b"\xff\xfe/x",
    ];
    for (i, p) in paths.iter().enumerate() {
        write("paths", &format!("seed{i:02}"), p);
    }
}

//! Heap scenario: 200 TLS connections against one server (clean sessions, garbage, a wrong key,
//! an oversized frame, and abrupt resets before and in the middle of a file) leave the
//! server's live heap where it was once every connection has ended and every interrupted
//! session has expired.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::heap::{cycle_rayon_injector, runtime, settle_to, settled};
use common::wire::{finish, meta, Conn};
use common::TestServer;
use tidegate::pipeline::hash::digest;
use tidegate::protocol::handshake::{ClientHandshake, Key};
use tidegate::protocol::Frame;
use tidegate::tls::ClientStream;
use tidegate::wire::FrameWriter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CYCLES: u32 = 200;
const KINDS: u32 = 6;

/// Connects and completes the handshake for a session numbered `id`.
async fn connect(addr: std::net::SocketAddr, id: u32) -> Conn {
    let mut session = [0u8; 16];
    session[..4].copy_from_slice(&id.to_le_bytes());
    common::wire::connect(addr, session).await
}

/// Closes with a reset instead of a FIN.
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

fn reunite((r, w): Conn) -> ClientStream<TcpStream> {
    r.into_inner().unsplit(w.into_inner())
}

/// Reads until the server closes the connection.
async fn until_closed(mut s: impl tokio::io::AsyncRead + Unpin) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn cycle(addr: std::net::SocketAddr, i: u32) {
    match i % KINDS {
        // A clean session: one small file, finished.
        0 => {
            let (mut r, mut w) = connect(addr, i).await;
            let payload = Bytes::from(format!("file {i}"));
            w.send(&Frame::SmallFile {
                file: 1,
                meta: meta(format!("clean-{i}"), payload.len() as u64),
                root: *blake3::hash(&payload).as_bytes(),
                payload,
            })
            .await
            .unwrap();
            finish(&mut r, &mut w, true).await;
        }
        // Garbage instead of a handshake.
        1 => {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let junk: Vec<u8> = (0..64 + i).map(|j| (j * 37 + i) as u8).collect();
            let _ = s.write_all(&junk).await;
            until_closed(s).await;
        }
        // The wrong key: the server refuses the session.
        2 => {
            let s = TcpStream::connect(addr).await.unwrap();
            let wrong = Key::from_passphrase("wrong");
            assert!(
                common::wire::handshake(s, &wrong, [9; 16]).await.is_err(),
                "handshake succeeded with the wrong key"
            );
        }
        // A 4 GiB frame length after the handshake.
        3 => {
            let mut s = reunite(connect(addr, i).await);
            s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
            until_closed(s).await;
        }
        // A reset in the middle of a large file: the session holds a partial file until it
        // expires, then keeps it with its resume journal (one chunk verified).
        4 => {
            let (mut r, mut w) = connect(addr, i).await;
            w.send(&Frame::FileBegin {
                file: 1,
                meta: meta(format!("cut-{i}"), 2 << 20),
                chunk_len: 1 << 20,
            })
            .await
            .unwrap();
            assert_eq!(
                r.next().await.unwrap().unwrap(),
                Frame::FileReady { file: 1, have: 0 }
            );
            let payload = Bytes::from(vec![i as u8; 1 << 20]);
            let cv = digest(0, &payload).chaining_value.unwrap();
            w.send(&Frame::Data {
                file: 1,
                index: 0,
                cv,
                payload,
            })
            .await
            .unwrap();
            assert_eq!(
                r.next().await.unwrap().unwrap(),
                Frame::Ack { file: 1, index: 0 }
            );
            reset(reunite((r, w)).into_inner().0);
        }
        // A reset halfway through the handshake.
        _ => {
            let tls = tidegate::tls::connect(TcpStream::connect(addr).await.unwrap())
                .await
                .unwrap();
            let binding = tidegate::tls::binding(tls.get_ref().1).unwrap();
            let mut w = FrameWriter::new(tls);
            let (_, hello) = ClientHandshake::new(&Key::default(), [3; 16], binding, [4; 32]);
            w.send(&hello).await.unwrap();
            reset(w.into_inner().into_inner().0);
        }
    }
}

#[test]
fn two_hundred_hostile_and_honest_connections_leak_nothing_on_the_server() {
    runtime().block_on(async {
        let server = TestServer::start_with(|o| {
            o.session_linger = Duration::from_millis(100);
            // All from one address, faster than their sessions expire.
            o.max_sessions_per_address = 1000;
            // Its wrong keys would lock the address out.
            o.auth_free_failures = u32::MAX;
        })
        .await;
        // Each kind once before the profiler, and once more under it before the snapshot.
        for i in 0..KINDS {
            cycle(server.addr, i).await;
        }
        server.idle().await;
        let profiler = dhat::Profiler::builder().testing().build();
        for i in KINDS..2 * KINDS {
            cycle(server.addr, i).await;
        }
        server.idle().await;
        cycle_rayon_injector();
        let before = settled().await;
        for i in 2 * KINDS..2 * KINDS + CYCLES {
            cycle(server.addr, i).await;
        }
        server.idle().await;
        let after = settle_to(&before).await;
        drop(profiler);
        eprintln!("before: {before:?}\nafter {CYCLES} connections: {after:?}");

        let root = server.stop().await;
        let names: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        // Small files in place; interrupted large files kept for resuming, each a partial file
        // and its journal; nothing else.
        let resumable = |n: &str| {
            n.strip_prefix(".cut-").is_some_and(|rest| {
                rest.ends_with(".tidegate-partial") || rest.ends_with(".tidegate-journal")
            })
        };
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("clean-") || resumable(n)),
            "left behind: {names:?}"
        );
        let kept = names.iter().filter(|n| resumable(n)).count();
        assert_eq!(kept % 2, 0, "a partial file without its journal: {names:?}");
        assert_eq!(
            (after.curr_bytes, after.curr_blocks),
            (before.curr_bytes, before.curr_blocks),
            "the server's live heap (bytes, blocks) changed over {CYCLES} connections"
        );
    });
}

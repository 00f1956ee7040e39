//! Hostile peers against what the receiver holds for them: sessions by the thousand, large
//! files left open, bytes announced and never sent, a disk near full, sockets that never
//! authenticate, a peer that stops reading, one that trickles frames that change nothing.
//! Each peer past a limit gets code 6 naming the flag that raises it, and each test ends with
//! the server serving an honest transfer.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tidegate::protocol::{ErrorCode, Frame};

use crate::common::wire::{connect, finish, meta, try_connect_from};
use crate::common::{data, fast_options, send, TestServer};

const CHUNK: u32 = 16 * 1024;
const LIMIT: u16 = ErrorCode::Limit as u16;

fn begin(file: u64, path: &str, size: u64) -> Frame {
    Frame::FileBegin {
        file,
        meta: meta(path, size),
        chunk_len: CHUNK,
    }
}

fn small(file: u64, path: &str, body: &[u8]) -> Frame {
    Frame::SmallFile {
        file,
        meta: meta(path, body.len() as u64),
        root: *blake3::hash(body).as_bytes(),
        payload: Bytes::copy_from_slice(body),
    }
}

/// Data for a file nobody began: answered with an error, changing nothing.
fn stray(index: u64) -> Frame {
    Frame::Data {
        file: 1 << 40,
        index,
        cv: [0; 32],
        payload: Bytes::from_static(b"x"),
    }
}

/// Sends 2,000,000 stray chunks, each answered with an error, reading none of the answers;
/// ends with the first failed write's error (`None`: every frame went out).
fn flood(
    mut w: tidegate::wire::FrameWriter<impl tokio::io::AsyncWrite + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<Option<std::io::Error>> {
    tokio::spawn(async move {
        for index in 0..2_000_000u64 {
            if let Err(e) = w.queue(&stray(index)).await {
                return Some(e);
            }
        }
        w.flush().await.err()
    })
}

/// An honest transfer of a small tree from 127.0.0.1 arrives whole.
async fn still_serves(server: &TestServer) {
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("honest");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"still here").unwrap();
    std::fs::write(tree.join("big.bin"), data(3 << 20, 5)).unwrap();
    let report = send(vec![tree.clone()], server.addr.to_string(), fast_options()).await;
    assert!(report.success(), "{report:#?}");
    crate::common::assert_same_tree(&tree, &server.root().join("honest"));
}

fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// Opens sessions `0..count` from `from`, 32 at a time, each holding a large file begun and
/// never sent (so that it lingers once its connection closes). Returns how many got in, and
/// each refusal's message.
async fn open_sessions(addr: SocketAddr, from: IpAddr, count: u32) -> (u32, Vec<String>) {
    let mut got_in = 0;
    let mut refused = Vec::new();
    let mut next = 0u32;
    while next < count {
        let wave: Vec<_> = (next..count.min(next + 32))
            .map(|i| {
                tokio::spawn(async move {
                    let mut id = [0xee; 16];
                    id[..4].copy_from_slice(&i.to_le_bytes());
                    id[4] = match from {
                        IpAddr::V4(v4) => v4.octets()[3],
                        IpAddr::V6(_) => 0,
                    };
                    match try_connect_from(addr, from, id).await {
                        Ok((mut r, mut w)) => {
                            w.send(&begin(1, &format!("held-{i}.bin"), 4 * u64::from(CHUNK)))
                                .await
                                .unwrap();
                            let ready = r.next().await.unwrap().unwrap();
                            assert!(matches!(ready, Frame::FileReady { .. }), "{ready:?}");
                            Ok(())
                        }
                        Err(refusal) => Err(refusal),
                    }
                })
            })
            .collect();
        next = count.min(next + 32);
        for task in wave {
            match task.await.unwrap() {
                Ok(()) => got_in += 1,
                Err((code, message)) => {
                    assert_eq!(code, LIMIT, "{message}");
                    refused.push(message);
                }
            }
        }
    }
    (got_in, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sessions_from_one_address_stop_at_its_limit() {
    let server = TestServer::start().await;
    let (got_in, refused) = open_sessions(server.addr, loopback(2), 10_000).await;
    eprintln!(
        "10,000 sessions from one address: {got_in} held, {} refused",
        refused.len()
    );
    assert_eq!(got_in, 32, "the default per-address limit");
    assert_eq!(refused.len(), 10_000 - 32);
    assert!(
        refused
            .iter()
            .all(|m| m.contains("--max-sessions-per-address")),
        "{}",
        refused[0]
    );
    assert_eq!(server.status.sessions(), 32);
    // Another address is not held back by that one.
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_the_overall_limit_are_refused_until_some_expire() {
    let server = TestServer::start_with(|o| {
        o.max_sessions = 40;
        o.session_linger = Duration::from_secs(2);
    })
    .await;
    let mut held = 0;
    let mut refused = Vec::new();
    for n in 2..5 {
        let (got_in, r) = open_sessions(server.addr, loopback(n), 30).await;
        held += got_in;
        refused.extend(r);
    }
    eprintln!(
        "90 sessions from 3 addresses: {held} held, {} refused",
        refused.len()
    );
    assert!(server.status.sessions() <= 40);
    assert!(!refused.is_empty() && refused.iter().all(|m| m.contains("--max-sessions ")));
    // The lingering sessions expire; an honest sender retrying gets in then.
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_large_files_in_one_session_stop_at_the_open_file_limit() {
    let server = TestServer::start().await;
    let (mut r, mut w) = connect(server.addr, [3; 16]).await;
    for file in 0..1000 {
        w.queue(&begin(file, &format!("f{file}.bin"), 4 * u64::from(CHUNK)))
            .await
            .unwrap();
    }
    w.flush().await.unwrap();
    let (mut ready, mut refused) = (0, 0);
    for _ in 0..1000 {
        match r.next().await.unwrap().unwrap() {
            Frame::FileReady { .. } => ready += 1,
            Frame::Error { code, message, .. } => {
                let message = String::from_utf8_lossy(&message);
                assert_eq!(code, LIMIT, "{message}");
                assert!(message.contains("--max-open-files"), "{message}");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((ready, refused), (256, 744), "the default limit");
    // Only those let in have a partial file (and a journal) on disk.
    let partials = std::fs::read_dir(server.root())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".tidegate-partial")
        })
        .count();
    assert_eq!(partials, 256);
    drop((r, w));
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_announced_and_not_sent_are_bounded_per_session_and_overall() {
    let chunk = u64::from(CHUNK);
    let server = TestServer::start_with(|o| {
        o.max_session_unfinished_bytes = 10 * chunk;
        o.max_unfinished_bytes = 16 * chunk;
    })
    .await;
    let (mut r, mut w) = connect(server.addr, [4; 16]).await;
    w.send(&begin(1, "one.bin", 8 * chunk)).await.unwrap();
    assert!(matches!(
        r.next().await.unwrap().unwrap(),
        Frame::FileReady { .. }
    ));
    w.send(&begin(2, "two.bin", 4 * chunk)).await.unwrap();
    match r.next().await.unwrap().unwrap() {
        Frame::Error { code, message, .. } => {
            assert_eq!(code, LIMIT);
            assert!(String::from_utf8_lossy(&message).contains("--max-session-unfinished"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // What arrives no longer counts: with half of `one.bin` sent, `two.bin` fits.
    let body = data(8 * chunk as usize, 9);
    for index in 0..4u64 {
        let at = (index * chunk) as usize;
        let piece = &body[at..at + chunk as usize];
        w.send(&Frame::Data {
            file: 1,
            index,
            cv: tidegate::pipeline::hash::digest(at as u64, piece)
                .chaining_value
                .unwrap(),
            payload: Bytes::copy_from_slice(piece),
        })
        .await
        .unwrap();
        assert!(matches!(
            r.next().await.unwrap().unwrap(),
            Frame::Ack { .. }
        ));
    }
    w.send(&begin(2, "two.bin", 4 * chunk)).await.unwrap();
    assert!(matches!(
        r.next().await.unwrap().unwrap(),
        Frame::FileReady { .. }
    ));
    // Overall: 4 + 4 chunks unfinished here, so another session may begin 8 and not 9.
    let (mut r2, mut w2) = connect(server.addr, [5; 16]).await;
    w2.send(&begin(1, "three.bin", 9 * chunk)).await.unwrap();
    match r2.next().await.unwrap().unwrap() {
        Frame::Error { code, message, .. } => {
            assert_eq!(code, LIMIT);
            assert!(String::from_utf8_lossy(&message).contains("--max-unfinished"));
        }
        other => panic!("unexpected {other:?}"),
    }
    w2.send(&begin(1, "three.bin", 8 * chunk)).await.unwrap();
    assert!(matches!(
        r2.next().await.unwrap().unwrap(),
        Frame::FileReady { .. }
    ));
    // A session that goes away gives its bytes back (its files are put aside with it).
    drop((r, w, r2, w2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_files_that_would_eat_into_the_free_space_reserve_are_refused() {
    let probe = tempfile::tempdir().unwrap();
    let free = tidegate::server::free_space(probe.path()).unwrap();
    // A reserve larger than the disk's free space: every new file is refused.
    let server = TestServer::start_with(|o| o.min_free_bytes = free + (1 << 30)).await;
    let (mut r, mut w) = connect(server.addr, [6; 16]).await;
    w.send(&begin(1, "large.bin", 4 * u64::from(CHUNK)))
        .await
        .unwrap();
    w.send(&small(2, "small.txt", b"tiny")).await.unwrap();
    for _ in 0..2 {
        match r.next().await.unwrap().unwrap() {
            Frame::Error { code, message, .. } => {
                let message = String::from_utf8_lossy(&message);
                assert_eq!(code, LIMIT, "{message}");
                assert!(message.contains("--min-free"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    finish(&mut r, &mut w, false).await;
    let left: Vec<_> = std::fs::read_dir(server.root()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    server.stop().await;
    // With the default reserve, the same disk takes them.
    let server = TestServer::start().await;
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_sockets_do_not_keep_an_authenticated_sender_out() {
    // Idle sockets are not timed out during the test: if the sender had to wait for them to
    // go, it would not get in at all.
    let server = TestServer::start_with(|o| o.handshake_timeout = Duration::from_secs(600)).await;
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    for _ in 0..1000 {
        if server.status.handshakes() == 256 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.status.handshakes(), 256, "the default pool is full");
    let started = std::time::Instant::now();
    still_serves(&server).await;
    eprintln!(
        "transfer with 500 idle sockets open: {:?}",
        started.elapsed()
    );
    // Most idle sockets are still there: nobody waited for them to go.
    assert!(
        server.status.handshakes() >= 250,
        "{}",
        server.status.handshakes()
    );
    // The oldest were closed to make room.
    let mut closed = 0;
    for socket in &idle[..200] {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_secs(5), socket.peek(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 200, "the oldest idle sockets are closed");
    drop(idle);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_dropped_after_the_write_timeout() {
    let server = TestServer::start_with(|o| {
        o.write_timeout = Duration::from_secs(1);
        o.idle_timeout = Duration::from_secs(600);
    })
    .await;
    let (r, w) = connect(server.addr, [7; 16]).await;
    // Each stray chunk is answered with an error; none of the answers is read.
    let writing = flood(w);
    let ended = tokio::time::timeout(Duration::from_secs(120), writing)
        .await
        .expect("the receiver kept a peer that reads nothing")
        .unwrap();
    assert!(
        ended.is_some(),
        "the receiver read 2,000,000 frames unanswered"
    );
    drop(r);
    server.idle().await;
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_trickling_frames_that_change_nothing_is_closed_after_the_idle_timeout() {
    let server = TestServer::start_with(|o| o.idle_timeout = Duration::from_secs(2)).await;
    let (mut r, mut w) = connect(server.addr, [8; 16]).await;
    let mut answered = 0;
    // One frame every 100 ms, each answered: well inside the idle timeout each time.
    for index in 0..600 {
        if w.send(&stray(index)).await.is_err() {
            break;
        }
        match r.next().await {
            Ok(Some(Frame::Error { code, .. })) => {
                assert_eq!(code, ErrorCode::Missing as u16);
                answered += 1;
            }
            Ok(None) | Err(_) => break,
            Ok(Some(other)) => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        answered < 600,
        "still open after 60 s of frames that changed nothing"
    );
    eprintln!("trickling peer closed after {answered} frames");
    server.idle().await;
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_whatever_a_peer_that_stops_reading_does() {
    let server = TestServer::start_with(|o| o.write_timeout = Duration::from_secs(1)).await;
    let (r, w) = connect(server.addr, [9; 16]).await;
    // Flood until the receiver's replies fill the socket and its writes block.
    let flooding = flood(w);
    while server.status.connections() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The peer is still connected and still reads nothing.
    tokio::time::timeout(Duration::from_secs(60), server.stop())
        .await
        .expect("shutdown waited on a peer that reads nothing");
    drop(r);
    flooding.abort();
}

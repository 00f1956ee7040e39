//! Resuming interrupted transfers: a large file's verified chunks are journaled beside its
//! partial file, and a later transfer of the same file sends only what is missing, whether the
//! sender went away, the receiver was stopped, or the receiver was killed outright.
//!
//! The interrupted transfers are played frame by frame by a raw client, so that exactly which
//! chunks reached the receiver is known; the resuming transfer is the real sender.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::wire::connect;
use crate::common::{data, fast_options, process, send, TestServer};
use bytes::Bytes;
use tidegate::pipeline::hash::digest;
use tidegate::protocol::{Frame, Meta};
use tidegate::{ChunkSize, Report, TransferOptions};

const CHUNK: usize = 1 << 20;

fn options() -> TransferOptions {
    let mut o = fast_options();
    o.pipeline.chunk_size = ChunkSize::new(CHUNK as u64).unwrap();
    o
}

/// Writes a file of `len` bytes and returns its path and its mtime in nanoseconds.
fn source(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>, i64) {
    let path = dir.join(name);
    let bytes = data(len, seed);
    std::fs::write(&path, &bytes).unwrap();
    let m = std::fs::metadata(&path).unwrap();
    (path, bytes, m.mtime() * 1_000_000_000 + m.mtime_nsec())
}

/// A connection of `session` that has begun file 1, `name`, of `len` bytes (1 MiB chunks).
async fn begin(
    addr: std::net::SocketAddr,
    session: [u8; 16],
    name: &str,
    len: usize,
    mtime_ns: i64,
) -> crate::common::wire::Conn {
    let (mut r, mut w) = connect(addr, session).await;
    w.send(&Frame::FileBegin {
        file: 1,
        meta: Meta {
            path: name.as_bytes().to_vec(),
            size: len as u64,
            mode: 0o644,
            mtime_ns,
        },
        chunk_len: CHUNK as u32,
    })
    .await
    .unwrap();
    assert!(matches!(
        r.next().await.unwrap().unwrap(),
        Frame::FileReady { file: 1, .. }
    ));
    (r, w)
}

/// A transfer of `bytes` as `name` that sends chunks `chunks` (in order) and then stops: its
/// connection closes with the file unfinished.
async fn interrupted(
    addr: std::net::SocketAddr,
    session: [u8; 16],
    name: &str,
    bytes: &[u8],
    mtime_ns: i64,
    chunks: std::ops::Range<usize>,
) {
    let (mut r, mut w) = begin(addr, session, name, bytes.len(), mtime_ns).await;
    for index in chunks {
        let at = index * CHUNK;
        let payload = Bytes::copy_from_slice(&bytes[at..(at + CHUNK).min(bytes.len())]);
        w.send(&Frame::Data {
            file: 1,
            index: index as u64,
            cv: digest(at as u64, &payload).chaining_value.unwrap(),
            payload,
        })
        .await
        .unwrap();
        assert_eq!(
            r.next().await.unwrap().unwrap(),
            Frame::Ack {
                file: 1,
                index: index as u64
            }
        );
    }
}

fn resumed_and_sent(report: &Report) -> (u64, u64) {
    let d = &report.destinations[0];
    (d.resumed, d.bytes)
}

/// Hidden files of the receiver's own (partial files, journals) left in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_went_away_is_resumed_by_the_next_transfer() {
    let src = tempfile::tempdir().unwrap();
    let (path, bytes, mtime) = source(src.path(), "big.bin", 12 * CHUNK + 123, 1);
    let server = TestServer::start().await;
    // The first sender got chunks 0..7 across, then vanished; its session lingers.
    interrupted(server.addr, [1; 16], "big.bin", &bytes, mtime, 0..7).await;

    let report = send(vec![path], server.addr.to_string(), options()).await;
    assert!(report.success(), "{report:?}");
    assert_eq!(
        resumed_and_sent(&report),
        (7 * CHUNK as u64, (bytes.len() - 7 * CHUNK) as u64)
    );
    assert_eq!(std::fs::read(server.root().join("big.bin")).unwrap(), bytes);
    assert_eq!(leftovers(server.root()), Vec::<String>::new());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_receiver_resumes_from_its_journal() {
    let src = tempfile::tempdir().unwrap();
    let (path, bytes, mtime) = source(src.path(), "big.bin", 10 * CHUNK, 2);
    let first = TestServer::start().await;
    interrupted(first.addr, [2; 16], "big.bin", &bytes, mtime, 0..4).await;
    // A graceful stop keeps the partial file and journals every verified chunk.
    let dir = first.stop().await;
    let mut kept = leftovers(dir.path());
    kept.sort();
    assert_eq!(
        kept,
        [".big.bin.tidegate-journal", ".big.bin.tidegate-partial"]
    );

    let second = TestServer::start_with(|o| o.root = dir.path().to_path_buf()).await;
    let report = send(vec![path], second.addr.to_string(), options()).await;
    assert!(report.success(), "{report:?}");
    assert_eq!(
        resumed_and_sent(&report),
        (4 * CHUNK as u64, 6 * CHUNK as u64)
    );
    assert_eq!(std::fs::read(dir.path().join("big.bin")).unwrap(), bytes);
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
    second.stop().await;
}

/// `kill -9` of the receiver: only chunks whose data was flushed before their journal records
/// were written count; the journal is flushed every 64 MiB of verified chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_receiver_resumes_from_what_it_had_flushed() {
    const FLUSH_CHUNKS: usize = 64; // tidegate::server::journal::FLUSH_EVERY / CHUNK
    let src = tempfile::tempdir().unwrap();
    let served = tempfile::tempdir().unwrap();
    let (path, bytes, mtime) = source(src.path(), "big.bin", 72 * CHUNK, 3);
    let (mut child, addr) = process::serve(served.path(), &[]);
    interrupted(
        addr.parse().unwrap(),
        [3; 16],
        "big.bin",
        &bytes,
        mtime,
        0..FLUSH_CHUNKS + 5,
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    let (child, addr) = process::serve(served.path(), &[]);
    let report = send(vec![path], addr, options()).await;
    process::stop(child);
    assert!(report.success(), "{report:?}");
    let (resumed, sent) = resumed_and_sent(&report);
    assert_eq!(resumed, (FLUSH_CHUNKS * CHUNK) as u64, "resumed");
    assert_eq!(sent, bytes.len() as u64 - resumed, "sent");
    assert_eq!(std::fs::read(served.path().join("big.bin")).unwrap(), bytes);
    assert_eq!(leftovers(served.path()), Vec::<String>::new());
}

/// A source that changed since (another mtime) starts over; one that changed without its
/// mtime or size changing is caught before anything is resumed. Content changing with both
/// kept is caught by the root hash: nothing wrong is put in place, the receiver drops its
/// partial file, and the same transfer sends the file again whole (a redo pass, like rsync's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_source_is_never_stitched_onto_old_chunks() {
    let src = tempfile::tempdir().unwrap();
    let (path, bytes, mtime) = source(src.path(), "big.bin", 8 * CHUNK, 4);
    let old = data(bytes.len(), 99);
    let server = TestServer::start().await;

    // Other content, another mtime: nothing resumed.
    interrupted(server.addr, [4; 16], "big.bin", &old, mtime - 1, 0..3).await;
    let report = send(vec![path.clone()], server.addr.to_string(), options()).await;
    assert!(report.success(), "{report:?}");
    assert_eq!(resumed_and_sent(&report), (0, bytes.len() as u64));
    assert_eq!(std::fs::read(server.root().join("big.bin")).unwrap(), bytes);

    // Other content, same size and mtime (rewritten in place, then the mtime set back): the
    // first pass skips chunks 0..3 and sends 3..8, the root does not match, the redo pass
    // sends all 8, and nothing counts as resumed.
    std::fs::remove_file(server.root().join("big.bin")).unwrap();
    interrupted(server.addr, [5; 16], "big.bin", &old, mtime, 0..3).await;
    let report = send(vec![path.clone()], server.addr.to_string(), options()).await;
    assert!(report.success(), "not sent again: {report:?}");
    assert_eq!(
        resumed_and_sent(&report),
        (0, (5 + 8) * CHUNK as u64),
        "{report:?}"
    );
    assert_eq!(report.destinations[0].files_done, 1);
    assert_eq!(std::fs::read(server.root().join("big.bin")).unwrap(), bytes);
    assert_eq!(leftovers(server.root()), Vec::<String>::new());

    // The next transfer finds it in place and complete.
    let report = send(vec![path], server.addr.to_string(), options()).await;
    assert!(report.success(), "{report:?}");
    assert_eq!(std::fs::read(server.root().join("big.bin")).unwrap(), bytes);
    server.stop().await;
}

/// While a live transfer writes a target, another transfer of the same target neither waits
/// for it nor touches its partial file or journal: it gets a partial file of its own (after a
/// short wait for the first to turn out gone), and both go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_transfer_of_the_same_target_gets_its_own_partial_file() {
    let src = tempfile::tempdir().unwrap();
    let (path, bytes, mtime) = source(src.path(), "big.bin", 4 * CHUNK, 6);
    let server = TestServer::start().await;
    // The first transfer is alive (its connection stays open), its file begun.
    let (r, w) = begin(server.addr, [6; 16], "big.bin", bytes.len(), mtime).await;

    let report = send(vec![path], server.addr.to_string(), options()).await;
    assert!(report.success(), "{report:?}");
    assert_eq!(resumed_and_sent(&report), (0, bytes.len() as u64));
    assert_eq!(std::fs::read(server.root().join("big.bin")).unwrap(), bytes);
    let mut left = leftovers(server.root());
    left.sort();
    assert_eq!(
        left,
        [".big.bin.tidegate-journal", ".big.bin.tidegate-partial"],
        "the first transfer's files"
    );
    drop((r, w));
    server.stop().await;
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// Partial files and journals that no transfer came back for are deleted by a server whose
/// `partial_expiry` they outlived, from its start on (which ones are old enough is
/// `leftovers.rs`'s unit tests); with `None` they stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_no_transfer_came_back_for_expire() {
    let keep = |o: &mut tidegate::ServerOptions| o.partial_expiry = None;
    let server = TestServer::start_with(keep).await;
    let bytes = data(4 * CHUNK, 7);
    interrupted(server.addr, [7; 16], "a.bin", &bytes, 1, 0..2).await;
    interrupted(server.addr, [8; 16], "b.bin", &bytes, 1, 0..2).await;
    let dir = server.stop().await;
    let all = [
        ".a.bin.tidegate-journal",
        ".a.bin.tidegate-partial",
        ".b.bin.tidegate-journal",
        ".b.bin.tidegate-partial",
    ];
    assert_eq!(sorted(leftovers(dir.path())), all, "kept for resuming");

    // Kept through a whole transfer of something else.
    let server = TestServer::start_in(dir, keep).await;
    let src = tempfile::tempdir().unwrap();
    let (path, ..) = source(src.path(), "other.bin", 3 * CHUNK, 8);
    let report = send(vec![path], server.addr.to_string(), options()).await;
    assert!(report.success(), "{report:?}");
    let dir = server.stop().await;
    assert_eq!(sorted(leftovers(dir.path())), all);

    // Expired: gone, swept when the server starts.
    let server = TestServer::start_in(dir, |o| {
        o.partial_expiry = Some(std::time::Duration::ZERO);
    })
    .await;
    for _ in 0..500 {
        if leftovers(server.root()).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(leftovers(server.root()), Vec::<String>::new());
    assert!(server.root().join("other.bin").exists());
    server.stop().await;
}

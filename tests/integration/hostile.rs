//! Hostile peers against what the receiver applies and what the sender shows: modes with
//! special bits, directories that were already there, symlinks that lead out, names that
//! shadow the receiver's own files, and escape sequences in a receiver's error messages.
//! Each ends with the server still serving an honest request.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::wire::{connect, finish, meta};
use crate::common::TestServer;
use bytes::Bytes;
use tidegate::protocol::handshake::{ServerHandshake, ServerStep};
use tidegate::protocol::{ErrorCode, Frame, Meta};
use tidegate::wire::{FrameReader, FrameWriter};

fn with_mode(path: &[u8], size: u64, mode: u32) -> Meta {
    let mut m = meta(path, size);
    m.mode = mode;
    m
}

fn small(file: u64, meta: Meta) -> Frame {
    let payload = Bytes::from(vec![b'x'; meta.size as usize]);
    Frame::SmallFile {
        file,
        root: *blake3::hash(&payload).as_bytes(),
        meta,
        payload,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Sends `frames`, then `Finish`, and returns every per-file error by file.
async fn run(addr: std::net::SocketAddr, session: [u8; 16], frames: &[Frame]) -> Vec<(u64, u16)> {
    let (mut r, mut w) = connect(addr, session).await;
    for f in frames {
        w.send(f).await.unwrap();
    }
    w.send(&Frame::Finish).await.unwrap();
    let mut errors = Vec::new();
    loop {
        match r.next().await.unwrap().unwrap() {
            Frame::Finished => return errors,
            Frame::Error { file, code, .. } => errors.push((file, code)),
            _ => {}
        }
    }
}

/// An honest small file still arrives.
async fn still_serves(server: &TestServer) {
    let (mut r, mut w) = connect(server.addr, [99; 16]).await;
    w.send(&small(1, meta(b"honest.txt", 3))).await.unwrap();
    finish(&mut r, &mut w, true).await;
    assert_eq!(
        std::fs::read(server.root().join("honest.txt")).unwrap(),
        b"xxx"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setuid_setgid_and_sticky_bits_are_never_applied() {
    let server = TestServer::start().await;
    let errors = run(
        server.addr,
        [1; 16],
        &[
            Frame::Dir {
                file: 1,
                meta: with_mode(b"d", 0, 0o3777),
            },
            small(2, with_mode(b"d/suid", 4, 0o4777)),
            small(3, with_mode(b"d/sgid", 4, 0o2755)),
        ],
    )
    .await;
    assert_eq!(errors, vec![]);
    let root = server.root();
    assert_eq!(mode(&root.join("d/suid")), 0o777);
    assert_eq!(mode(&root.join("d/sgid")), 0o755);
    assert_eq!(mode(&root.join("d")), 0o777);

    // A large file too.
    let data = vec![7u8; 3 << 20];
    let (mut r, mut w) = connect(server.addr, [2; 16]).await;
    w.send(&Frame::FileBegin {
        file: 1,
        meta: with_mode(b"big", data.len() as u64, 0o6755),
        chunk_len: 1 << 20,
    })
    .await
    .unwrap();
    assert!(matches!(
        r.next().await.unwrap().unwrap(),
        Frame::FileReady { .. }
    ));
    for (i, c) in data.chunks(1 << 20).enumerate() {
        let digest = tidegate::pipeline::hash::digest((i as u64) << 20, c);
        w.send(&Frame::Data {
            file: 1,
            index: i as u64,
            cv: digest.chaining_value.unwrap(),
            payload: Bytes::copy_from_slice(c),
        })
        .await
        .unwrap();
    }
    w.send(&Frame::FileEnd {
        file: 1,
        root: *blake3::hash(&data).as_bytes(),
    })
    .await
    .unwrap();
    finish(&mut r, &mut w, true).await;
    assert_eq!(mode(&root.join("big")), 0o755);
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_was_there_keeps_its_mode() {
    let server = TestServer::start().await;
    let root = server.root().to_path_buf();
    for (dir, m) in [("locked", 0o750), ("open", 0o700)] {
        std::fs::create_dir(root.join(dir)).unwrap();
        std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(m)).unwrap();
    }
    let errors = run(
        server.addr,
        [3; 16],
        &[
            // Would lock the server out of its own tree.
            Frame::Dir {
                file: 1,
                meta: with_mode(b"locked", 0, 0o000),
            },
            small(2, meta(b"locked/inside", 4)),
            // Would open a private tree to every local user.
            Frame::Dir {
                file: 3,
                meta: with_mode(b"open", 0, 0o777),
            },
            // Made by this transfer: writable until the end, then its own mode.
            Frame::Dir {
                file: 4,
                meta: with_mode(b"new", 0, 0o500),
            },
            small(5, meta(b"new/inside", 4)),
        ],
    )
    .await;
    assert_eq!(errors, vec![]);
    assert_eq!(mode(&root.join("locked")), 0o750);
    assert_eq!(mode(&root.join("open")), 0o700);
    assert_eq!(mode(&root.join("new")), 0o500);
    assert_eq!(std::fs::read(root.join("new/inside")).unwrap(), b"xxxx");
    assert_eq!(std::fs::read(root.join("locked/inside")).unwrap(), b"xxxx");
    std::fs::set_permissions(root.join("new"), std::fs::Permissions::from_mode(0o700)).unwrap();
    still_serves(&server).await;
    server.stop().await;
}

fn link(file: u64, path: &[u8], target: &[u8]) -> Frame {
    Frame::Symlink {
        file,
        meta: meta(path, 0),
        target: target.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_that_lead_out_are_refused_unless_allowed() {
    let server = TestServer::start().await;
    let root = server.root().to_path_buf();
    let errors = run(
        server.addr,
        [4; 16],
        &[
            link(1, b"abs", b"/etc/passwd"),
            link(2, b"up", b"../../etc/passwd"),
            link(3, b"a/b/up", b"../../../x"),
            link(4, b"a/sneaky", b"b/../../../x"),
            // Inside: kept.
            link(5, b"a/b/ok", b"../../honest.txt"),
            link(6, b"sib", b"a/b"),
        ],
    )
    .await;
    let bad = ErrorCode::BadPath as u16;
    assert_eq!(errors, vec![(1, bad), (2, bad), (3, bad), (4, bad)]);
    for refused in ["abs", "up", "a/b/up", "a/sneaky"] {
        assert!(
            std::fs::symlink_metadata(root.join(refused)).is_err(),
            "{refused}"
        );
    }
    assert_eq!(
        std::fs::read_link(root.join("a/b/ok")).unwrap(),
        Path::new("../../honest.txt")
    );
    assert_eq!(
        std::fs::read_link(root.join("sib")).unwrap(),
        Path::new("a/b")
    );
    still_serves(&server).await;
    server.stop().await;

    let server = TestServer::start_with(|o| o.links_anywhere = true).await;
    let errors = run(server.addr, [5; 16], &[link(1, b"abs", b"/etc/passwd")]).await;
    assert_eq!(errors, vec![]);
    assert_eq!(
        std::fs::read_link(server.root().join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    server.stop().await;
}

/// A local user with write access to the served tree swaps a directory for a symlink to
/// elsewhere, over and over, while a peer sends files into it: the kernel refuses the path
/// through the symlink at every step (`openat2`, or a walk with `O_NOFOLLOW`), so nothing is
/// ever created outside; each file lands in the real directory or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_symlink_meanwhile_redirects_no_write() {
    // Small files unnamed until their batch is linked into place, and under partial names.
    for unnamed in [None, Some(0)] {
        let server = TestServer::start_with(|o| o.unnamed_files = unnamed).await;
        swap_race(&server).await;
        server.stop().await;
    }
}

async fn swap_race(server: &TestServer) {
    let root = server.root().to_path_buf();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.join("d/e")).unwrap();
    std::fs::create_dir_all(outside.path().join("e")).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, root, outside) = (stop.clone(), root.clone(), outside.path().to_path_buf());
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if std::fs::rename(root.join("d"), root.join("real")).is_ok() {
                    let _ = std::os::unix::fs::symlink(&outside, root.join("d"));
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    let _ = std::fs::remove_file(root.join("d"));
                    let _ = std::fs::rename(root.join("real"), root.join("d"));
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    swaps += 1;
                }
            }
            swaps
        })
    };
    let frames: Vec<Frame> = (0..3000u64)
        .map(|i| small(i, meta(format!("d/e/f{i}").into_bytes(), 3)))
        .collect();
    let errors = run(server.addr, [10; 16], &frames).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0);
    let leaked: Vec<_> = std::fs::read_dir(outside.path().join("e"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leaked.is_empty(),
        "{} files created outside, such as {:?}",
        leaked.len(),
        &leaked[..leaked.len().min(5)]
    );
    // Each file is in place or refused; one put in place whose directory could not be
    // flushed (it was a symlink by then) is both, and is sent again by a real sender.
    // A partial file whose directory was a symlink when it was to be deleted stays, for the
    // leftover sweep: deleting through the symlink is what must never happen.
    let mut placed = std::collections::BTreeSet::new();
    let mut partials = 0;
    for entry in std::fs::read_dir(root.join("d/e")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(n) = name.strip_prefix('f') {
            placed.insert(n.parse::<u64>().unwrap());
        } else {
            assert!(name.ends_with(".tidegate-partial"), "{name}");
            partials += 1;
        }
    }
    let landed = placed.len();
    let refused: std::collections::BTreeSet<u64> = errors.iter().map(|(f, _)| *f).collect();
    let missing: Vec<u64> = (0..frames.len() as u64)
        .filter(|f| !placed.contains(f) && !refused.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "neither in place nor refused: {missing:?}"
    );
    let allowed = [ErrorCode::BadPath as u16, ErrorCode::Io as u16];
    let odd: Vec<_> = errors
        .iter()
        .filter(|(_, code)| !allowed.contains(code))
        .collect();
    assert!(odd.is_empty(), "unexpected error codes: {odd:?}");
    let bad_path = errors
        .iter()
        .filter(|(_, c)| *c == ErrorCode::BadPath as u16)
        .count();
    eprintln!(
        "{swaps} swaps: {landed} files in place, {} refused ({bad_path} as through a symlink), \
         {partials} partial files left for the sweep",
        errors.len()
    );
    still_serves(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_shadow_the_receivers_own_files_are_refused_in_any_component_and_case() {
    let server = TestServer::start().await;
    let root = server.root().to_path_buf();
    let errors = run(
        server.addr,
        [6; 16],
        &[
            small(1, meta(b".X.TIDEGATE-JOURNAL/y", 4)),
            Frame::Dir {
                file: 2,
                meta: meta(b".x.tidegate-journal", 0),
            },
            small(3, meta(b"a/.b.Tidegate-Partial/c", 4)),
            Frame::FileBegin {
                file: 4,
                meta: meta(b".big.tidegate-partial/z", 4 << 20),
                chunk_len: 1 << 20,
            },
        ],
    )
    .await;
    let bad = ErrorCode::BadPath as u16;
    assert_eq!(errors, vec![(1, bad), (2, bad), (3, bad), (4, bad)]);
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "nothing made");
    still_serves(&server).await;
    server.stop().await;
}

/// A receiver that refuses every entry with `message`.
async fn refusing_receiver(
    message: &'static [u8],
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tidegate::tls::ServerTls::ephemeral().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(stream).await else {
                    return;
                };
                let binding = tidegate::tls::binding(stream.get_ref().1).unwrap();
                let (rd, wr) = tokio::io::split(stream);
                let (mut r, mut w) = (FrameReader::new(rd, 1 << 20), FrameWriter::new(wr));
                let mut hs = ServerHandshake::new(tidegate_testkit::test_key(), binding, [3; 32]);
                while let Ok(Some(frame)) = r.next().await {
                    let reply = match (&frame, hs.welcome(1)) {
                        (_, None) => match hs.handle(&frame) {
                            Ok(ServerStep::Reply(f)) => f,
                            Ok(ServerStep::Done(_)) => hs.welcome(1).unwrap(),
                            Err(_) => return,
                        },
                        (Frame::Finish, _) => Frame::Finished,
                        (
                            Frame::SmallFile { file, .. }
                            | Frame::Dir { file, .. }
                            | Frame::FileBegin { file, .. },
                            _,
                        ) => Frame::Error {
                            file: *file,
                            code: ErrorCode::Io as u16,
                            message: message.to_vec(),
                        },
                        _ => continue,
                    };
                    if w.send(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receivers_escape_sequences_reach_the_sender_escaped() {
    let (addr, task) = refusing_receiver(b"\x1b]0;owned\x07\x1b[2Jdisk \x9b full\r\nok").await;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f.txt"), b"hello").unwrap();
    let out = crate::common::process::tidegate()
        .args([
            "send",
            "--no-progress",
            "--retry-for",
            "5s",
            "--to",
            &addr.to_string(),
        ])
        .arg(src.path().join("f.txt"))
        .output()
        .unwrap();
    task.abort();
    let shown = [out.stdout, out.stderr].concat();
    assert!(!out.status.success());
    assert!(
        !shown.iter().any(|&b| b == 0x1b || b == 0x07 || b == b'\r'),
        "raw control bytes shown: {:?}",
        String::from_utf8_lossy(&shown)
    );
    let shown = String::from_utf8_lossy(&shown);
    assert!(
        shown.contains("\\u{1b}]0;owned\\u{7}\\u{1b}[2Jdisk"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_announced_at_a_terabyte_allocates_only_what_arrives() {
    use std::os::unix::fs::MetadataExt;
    let server = TestServer::start().await;
    let allocated =
        |name: &str| std::fs::metadata(server.root().join(name)).map_or(0, |m| m.blocks() * 512);
    let (mut r, mut w) = connect(server.addr, [7; 16]).await;
    // More than this disk has: refused at once (or, on a disk that large, taken), and in
    // neither case allocated.
    w.send(&Frame::FileBegin {
        file: 1,
        meta: meta(b"huge", 1 << 40),
        chunk_len: 1 << 20,
    })
    .await
    .unwrap();
    match r.next().await.unwrap().unwrap() {
        Frame::FileReady { file: 1, have: 0 } => {}
        Frame::Error { file: 1, code, .. } => assert_eq!(code, ErrorCode::Io as u16),
        other => panic!("unexpected {other:?}"),
    }
    assert!(allocated(".huge.tidegate-partial") <= 1 << 20);
    // 16 GiB, which the disk has: chunks go to the first one, and to one far ahead (as out
    // of order as the receiver accepts).
    w.send(&Frame::FileBegin {
        file: 2,
        meta: meta(b"big", 16 << 30),
        chunk_len: 1 << 20,
    })
    .await
    .unwrap();
    if r.next().await.unwrap().unwrap() != (Frame::FileReady { file: 2, have: 0 }) {
        eprintln!("SKIPPED: the disk has less than 16 GiB free");
        return;
    }
    let chunk = vec![9u8; 1 << 20];
    for index in [0u64, 10_000] {
        let digest = tidegate::pipeline::hash::digest(index << 20, &chunk);
        w.send(&Frame::Data {
            file: 2,
            index,
            cv: digest.chaining_value.unwrap(),
            payload: Bytes::from(chunk.clone()),
        })
        .await
        .unwrap();
        assert_eq!(
            r.next().await.unwrap().unwrap(),
            Frame::Ack { file: 2, index }
        );
    }
    let on_disk = allocated(".big.tidegate-partial");
    // One step ahead of the start, and the far chunk's own megabyte.
    assert!(
        on_disk <= (64 << 20) + (2 << 20),
        "{on_disk} bytes allocated for 2 MiB received"
    );
    drop((r, w));
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_records_are_one_per_path_and_bounded() {
    // Room for 14 records of a 5-byte path (69 bytes each).
    let server = TestServer::start_with(|o| o.max_dir_bytes = 1000).await;
    let dir = |file: u64, path: String| Frame::Dir {
        file,
        meta: meta(path.into_bytes(), 0),
    };
    // One path sent 5,000 times is one record.
    let same: Vec<Frame> = (0..5000).map(|i| dir(i, "same0".into())).collect();
    assert_eq!(run(server.addr, [8; 16], &same).await, vec![]);

    let (mut r, mut w) = connect(server.addr, [9; 16]).await;
    for i in 0..20u64 {
        w.send(&dir(i, format!("d{i:04}"))).await.unwrap();
    }
    // A path already recorded is still taken past the limit.
    w.send(&dir(100, "d0000".into())).await.unwrap();
    w.send(&Frame::Finish).await.unwrap();
    let mut refused = Vec::new();
    loop {
        match r.next().await.unwrap().unwrap() {
            Frame::Finished => break,
            Frame::Error {
                file,
                code,
                message,
            } => {
                assert_eq!(code, ErrorCode::Limit as u16);
                let message = String::from_utf8_lossy(&message);
                assert!(message.contains("--max-dir-bytes"), "{message}");
                refused.push(file);
            }
            _ => {}
        }
    }
    assert_eq!(refused, (14..20).collect::<Vec<u64>>());
    // Other sessions are unaffected.
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_out_of_descriptors_keeps_serving() {
    use crate::common::process::{serve_from, stop, succeeds, tidegate};
    use std::os::unix::process::CommandExt;
    // Soft and hard limit 64, so that `serve` cannot raise it: accepting runs out of
    // descriptors (`EMFILE`) long before its 64 connection slots are taken.
    let mut cmd = tidegate();
    // SAFETY: only setrlimit, which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let dir = tempfile::tempdir().unwrap();
    // Each attempt is a transfer of its own from this one address: the per-address limits are
    // raised so that descriptors run out first.
    let (mut server, addr) = serve_from(
        cmd,
        dir.path(),
        &[
            "--idle-timeout",
            "60s",
            "--max-sessions-per-address",
            "1000",
            "--max-connections-per-address",
            "1000",
        ],
    );
    // 300 connection attempts at once; those that get in complete the handshake and are held
    // for longer than a receiver that gives up on accepting would take to do so (the
    // connections it took hold its descriptors meanwhile), the rest wait or time out.
    let attempts: Vec<_> = (0..300u16)
        .map(|i| {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            tokio::spawn(async move {
                let patience = std::time::Duration::from_secs(2);
                let mut session = [0; 16];
                session[..2].copy_from_slice(&i.to_le_bytes());
                tokio::time::timeout(patience, connect(addr, session))
                    .await
                    .ok()
            })
        })
        .collect();
    let mut held = Vec::new();
    for attempt in attempts {
        held.extend(attempt.await.unwrap());
    }
    assert!(
        !held.is_empty() && held.len() < 64,
        "{} connections in",
        held.len()
    );
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(server.try_wait().unwrap().is_none(), "serve exited");
    }
    drop(held);
    // Once they are gone (the receiver has closed its ends, which takes it a moment when the
    // machine is busy), a transfer goes through.
    let fds = format!("/proc/{}/fd", server.id());
    for _ in 0..300 {
        let open = std::fs::read_dir(&fds).map_or(0, Iterator::count);
        if open < 16 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("after.txt"), b"still here").unwrap();
    succeeds(
        tidegate()
            .args(["send", "--no-progress", "--retry-for", "30s", "--to", &addr])
            .arg(src.path().join("after.txt")),
    );
    assert_eq!(
        std::fs::read(dir.path().join("after.txt")).unwrap(),
        b"still here"
    );
    assert!(stop(server).success());
}

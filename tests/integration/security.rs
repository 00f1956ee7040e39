//! Hostile peers, written as raw frames: traversal attempts are refused with `BadPath`,
//! nothing is created outside the served directory, and the server keeps serving.

use crate::common::wire::{connect, finish, meta};
use crate::common::TestServer;
use bytes::Bytes;
use tidegate::protocol::{ErrorCode, Frame};
use tokio::net::TcpStream;

fn small(file: u64, path: &[u8]) -> Frame {
    let payload = Bytes::from_static(b"pwned");
    Frame::SmallFile {
        file,
        meta: meta(path, 5),
        root: *blake3::hash(&payload).as_bytes(),
        payload,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_are_rejected_and_nothing_escapes() {
    let outer = tempfile::tempdir().unwrap();
    let served = outer.path().join("served");
    let outside = outer.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let server = TestServer::start_with(|o| o.root = served.clone()).await;
    std::os::unix::fs::symlink(&outside, served.join("link")).unwrap();

    let (mut r, mut w) = connect(server.addr, [5; 16]).await;
    let attacks: Vec<Frame> = vec![
        small(1, b"../outside/evil"),
        small(2, b"/tmp/evil-absolute"),
        small(3, b"a/../../outside/evil"),
        small(4, b"link/evil"),
        small(5, b"./evil"),
        small(6, b"a//evil"),
        small(7, b"evil\0x"),
        Frame::Dir {
            file: 8,
            meta: meta(b"../outside/dir", 0),
        },
        Frame::Symlink {
            file: 9,
            meta: meta(b"link/s", 0),
            target: b"/etc/passwd".to_vec(),
        },
        Frame::FileBegin {
            file: 10,
            meta: meta(b"../outside/big", 4 << 20),
            chunk_len: 1 << 20,
        },
    ];
    let n = attacks.len();
    for f in &attacks {
        w.send(f).await.unwrap();
    }
    for _ in 0..n {
        match r.next().await.unwrap().unwrap() {
            Frame::Error { code, file, .. } => {
                assert_eq!(code, ErrorCode::BadPath as u16, "file {file}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // The same connection still works for honest requests.
    w.send(&small(11, b"fine/ok.txt")).await.unwrap();
    assert_eq!(
        r.next().await.unwrap().unwrap(),
        Frame::Ack { file: 11, index: 0 }
    );
    w.send(&Frame::Finish).await.unwrap();
    assert_eq!(
        r.next().await.unwrap().unwrap(),
        Frame::FileDone { file: 11 }
    );
    assert_eq!(r.next().await.unwrap().unwrap(), Frame::Finished);
    assert_eq!(std::fs::read(served.join("fine/ok.txt")).unwrap(), b"pwned");

    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing outside"
    );
    assert!(!std::path::Path::new("/tmp/evil-absolute").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_cost_only_that_connection() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    // Garbage before the handshake.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&[0xff; 64]).await.unwrap();
    // A frame length of 4 GiB after the handshake.
    let (_r, w) = connect(server.addr, [5; 16]).await;
    drop(w);
    let (mut r, mut w) = connect(server.addr, [5; 16]).await;
    w.send(&small(1, b"before")).await.unwrap();
    assert_eq!(
        r.next().await.unwrap().unwrap(),
        Frame::Ack { file: 1, index: 0 }
    );
    let mut evil = TcpStream::connect(server.addr).await.unwrap();
    evil.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    // A data frame whose chunk does not match its hash fails that file only.
    w.send(&Frame::FileBegin {
        file: 2,
        meta: meta(b"tampered", 2 << 20),
        chunk_len: 1 << 20,
    })
    .await
    .unwrap();
    assert_eq!(
        r.next().await.unwrap().unwrap(),
        Frame::FileReady { file: 2, have: 0 }
    );
    w.send(&Frame::Data {
        file: 2,
        index: 0,
        cv: [0; 32],
        payload: Bytes::from(vec![1u8; 1 << 20]),
    })
    .await
    .unwrap();
    match r.next().await.unwrap().unwrap() {
        Frame::Error { file: 2, code, .. } => assert_eq!(code, ErrorCode::Hash as u16),
        other => panic!("expected a hash error, got {other:?}"),
    }
    // The honest connection is unaffected.
    w.send(&Frame::Finish).await.unwrap();
    assert_eq!(
        r.next().await.unwrap().unwrap(),
        Frame::FileDone { file: 1 }
    );
    assert_eq!(r.next().await.unwrap().unwrap(), Frame::Finished);
    assert!(server.root().join("before").exists());
    assert!(!server.root().join("tampered").exists());
    let leftovers = std::fs::read_dir(server.root())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("partial")
        })
        .count();
    assert_eq!(leftovers, 0, "the tampered file's partial was deleted");
    server.stop().await;
}

/// A symlink made on one connection while another connection's file is being placed under
/// the same, not yet existing, directory: whichever wins, nothing lands outside. (Without the
/// receiver's layout lock the file's missing parent could be checked, then replaced by the
/// link, then followed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_racing_a_file_into_a_new_directory_never_escapes() {
    const ROUNDS: u64 = 200;
    let outer = tempfile::tempdir().unwrap();
    let served = outer.path().join("served");
    let outside = outer.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // Links that lead out allowed (`--links-anywhere`): the layout lock must hold even then.
    let server = TestServer::start_with(|o| {
        o.root = served.clone();
        o.links_anywhere = true;
    })
    .await;
    let (mut fr, mut fw) = connect(server.addr, [5; 16]).await;
    let (mut lr, mut lw) = connect(server.addr, [5; 16]).await;
    // Large enough that hashing it keeps the file's placement busy for a while.
    let payload = Bytes::from(vec![0x5au8; 512 << 10]);
    let root = *blake3::hash(&payload).as_bytes();
    let mut file_placed = Vec::new();
    for i in 0..ROUNDS {
        let dir = format!("race{i}");
        let file = Frame::SmallFile {
            file: 1000 + i,
            meta: meta(format!("{dir}/x").as_bytes(), payload.len() as u64),
            root,
            payload: payload.clone(),
        };
        let link = Frame::Symlink {
            file: 5000 + i,
            meta: meta(dir.as_bytes(), 0),
            target: outside.as_os_str().as_encoded_bytes().to_vec(),
        };
        // Each goes first in every other round, so that each wins some rounds.
        if i % 2 == 0 {
            fw.send(&file).await.unwrap();
            lw.send(&link).await.unwrap();
        } else {
            lw.send(&link).await.unwrap();
            fw.send(&file).await.unwrap();
        }
        // The file's side answers an acknowledgement or a refusal, whichever won. A symlink
        // made is confirmed only with the session's batch: not waited for here.
        // A full batch is flushed on whichever connection filled it: its `FileDone`s may come
        // first.
        let placed = loop {
            match fr.next().await.unwrap().unwrap() {
                Frame::Ack { .. } => break true,
                Frame::Error { .. } => break false,
                Frame::FileDone { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        file_placed.push(placed);
    }
    // `Finish` on each connection, after all its requests: every symlink and file is placed
    // or refused by the time both are answered.
    finish(&mut lr, &mut lw, false).await;
    finish(&mut fr, &mut fw, false).await;
    let escaped: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(escaped.is_empty(), "written outside: {escaped:?}");
    // Each round had one winner, and the rounds went both ways: some files were placed in a
    // directory the link then could not replace, some links were made first and the file
    // under them refused. Otherwise the two requests never met and the race was not tried.
    let (mut files_won, mut links_won) = (0, 0);
    for (i, placed) in file_placed.iter().enumerate() {
        let kind = std::fs::symlink_metadata(served.join(format!("race{i}")))
            .unwrap()
            .file_type();
        assert_eq!(
            kind.is_dir(),
            *placed,
            "round {i}: the file's answer and what is there"
        );
        if *placed {
            assert!(served.join(format!("race{i}/x")).is_file());
            files_won += 1;
        } else {
            assert!(kind.is_symlink(), "round {i}");
            links_won += 1;
        }
    }
    eprintln!("{files_won} files and {links_won} links won their round");
    assert!(
        files_won > 0 && links_won > 0,
        "{files_won} files, {links_won} links"
    );
    server.stop().await;
}

/// The names of the receiver's partial files are predictable (the session id is the client's),
/// so a symlink there would send the file's data wherever it points. A peer may not make one
/// (refused as a reserved name), and one planted some other way is never followed: nothing
/// outside is created or truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_at_a_partial_files_name_is_never_followed() {
    let outer = tempfile::tempdir().unwrap();
    let served = outer.path().join("served");
    let outside = outer.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let server = TestServer::start_with(|o| o.root = served.clone()).await;
    let session = [0xab; 16];
    let tag = "abababababababab";
    let (mut r, mut w) = connect(server.addr, session).await;
    let victim_bytes = victim.as_os_str().as_encoded_bytes().to_vec();
    let names = [
        format!(".s.{tag}.tidegate-partial"),
        format!(".big.{tag}.tidegate-partial"),
        ".big.tidegate-partial".to_string(),
        ".big.tidegate-journal".to_string(),
    ];
    for (file, name) in (1..).zip(&names) {
        w.send(&Frame::Symlink {
            file,
            meta: meta(name.as_bytes(), 0),
            target: victim_bytes.clone(),
        })
        .await
        .unwrap();
        match r.next().await.unwrap().unwrap() {
            Frame::Error { code, .. } => assert_eq!(code, ErrorCode::BadPath as u16, "{name}"),
            other => panic!("a link named {name} was accepted: {other:?}"),
        }
    }
    // Planted by someone else, then: each file fails rather than writing through them.
    for name in &names {
        std::os::unix::fs::symlink(&victim, served.join(name)).unwrap();
    }
    w.send(&small(10, b"s")).await.unwrap();
    let _ = r.next().await.unwrap().unwrap();
    w.send(&Frame::FileBegin {
        file: 11,
        meta: meta(b"big", 2 << 20),
        chunk_len: 1 << 20,
    })
    .await
    .unwrap();
    match r.next().await.unwrap().unwrap() {
        Frame::Error { file: 11, .. } => {}
        other => panic!("the large file was begun through a link: {other:?}"),
    }
    finish(&mut r, &mut w, false).await;
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"precious",
        "the file outside was written through a link"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    server.stop().await;
}

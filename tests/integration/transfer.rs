//! End-to-end transfers over loopback, each checked byte for byte against the source.

use std::path::PathBuf;

use crate::common::{assert_same_tree, data, fast_options, send, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_large_file() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    std::fs::write(&file, data(40 << 20 | 12345, 1)).unwrap();
    let mut options = fast_options();
    options.file_reports = true;
    let report = send(vec![file.clone()], server.addr.to_string(), options).await;
    assert!(report.success(), "{report:#?}");
    let got = std::fs::read(server.root().join("big.bin")).unwrap();
    assert!(got == std::fs::read(&file).unwrap());
    assert_eq!(report.files[0].blake3, blake3::hash(&got).to_hex().as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_with_empty_files_dirs_and_odd_names() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("tree");
    std::fs::create_dir_all(top.join("a b/ünï cödé/deeper")).unwrap();
    std::fs::create_dir_all(top.join("empty dir")).unwrap();
    std::fs::write(top.join("empty"), b"").unwrap();
    std::fs::write(top.join("a b/small file.txt"), b"hello").unwrap();
    std::fs::write(top.join("a b/ünï cödé/deeper/mid.bin"), data(3 << 20, 2)).unwrap();
    std::fs::write(top.join("a b/ünï cödé/exact"), data(1 << 20, 3)).unwrap();
    // Names of the longest length Linux allows (255 bytes), for a large file, a small one and
    // a directory: the receiver's partial files beside them must still fit.
    let longest = "l".repeat(255);
    let longest_utf8 = format!("{}x", "ü".repeat(127));
    std::fs::write(top.join(&longest), data(3 << 20, 4)).unwrap();
    std::fs::create_dir(top.join(&longest_utf8)).unwrap();
    std::fs::write(top.join(&longest_utf8).join(&longest), b"small").unwrap();
    let mut options = fast_options();
    options.file_reports = true;
    let report = send(vec![top.clone()], server.addr.to_string(), options).await;
    assert!(report.success(), "{report:#?}");
    assert_same_tree(&top, &server.root().join("tree"));
    // Asked for, every entry's report is kept, in the walk's order, with each file's root.
    let paths: Vec<&str> = report.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths.len() as u64, report.destinations[0].files_done);
    assert_eq!(paths[..3], ["tree", "tree/a b", "tree/empty"]);
    for f in report.files.iter().filter(|f| !f.blake3.is_empty()) {
        let got = std::fs::read(server.root().join(&f.path)).unwrap();
        assert_eq!(f.blake3, blake3::hash(&got).to_hex().as_str(), "{}", f.path);
        assert_eq!(f.bytes, got.len() as u64);
    }
    // No partial files are left behind.
    let leftovers: Vec<PathBuf> = walk_names(server.root())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("tidegate-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_small_files() {
    const N_DIRS: usize = 50;
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("many");
    for d in 0..N_DIRS {
        let dir = top.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let len = (d * 100 + f) % 7000;
            std::fs::write(
                dir.join(format!("f{f:03}")),
                data(len, (d * 100 + f) as u64),
            )
            .unwrap();
        }
    }
    let report = send(vec![top.clone()], server.addr.to_string(), fast_options()).await;
    assert!(report.success(), "{:?}", report.destinations);
    assert_eq!(report.destinations[0].files_done, N_DIRS as u64 * 101 + 1);
    assert_same_tree(&top, &server.root().join("many"));
    server.stop().await;
}

/// The receiver remembers the directories it has checked; one removed behind its back (by a
/// user clearing out received files) is made again for the next transfer, small files and
/// large alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_directory_removed_between_transfers_is_made_again() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/small"), data(3000, 1)).unwrap();
    std::fs::write(tree.join("sub/large"), data(3 << 20, 2)).unwrap();
    for round in 0..2 {
        let report = send(vec![tree.clone()], server.addr.to_string(), fast_options()).await;
        assert!(report.success(), "round {round}: {report:#?}");
        assert_same_tree(&tree, &server.root().join("tree"));
        std::fs::remove_dir_all(server.root().join("tree")).unwrap();
    }
    server.stop().await;
}

/// Small files wait for their batch's flush unnamed (by default), under partial names (none
/// allowed), or both (fewer descriptors than files in a batch). Each way, they arrive with
/// their bytes, mode and mtime, replace the files already there, and leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_unnamed_or_named_replace_what_was_there() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for unnamed in [None, Some(0), Some(7)] {
        let server = TestServer::start_with(|o| {
            o.unnamed_files = unnamed;
            o.batch_files = 40;
        })
        .await;
        let src = tempfile::tempdir().unwrap();
        let tree = src.path().join("tree");
        for round in 0..2u64 {
            for i in 0..120u64 {
                let dir = tree.join(format!("d{}", i % 4));
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join(format!("f{i}"));
                std::fs::write(
                    &file,
                    data(100 + (i * 37 % 5000) as usize, i + 1000 * round),
                )
                .unwrap();
                let mode = [0o644, 0o666, 0o775, 0o440][((i + round) % 4) as usize];
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let report = send(vec![tree.clone()], server.addr.to_string(), fast_options()).await;
            assert!(report.success(), "{unnamed:?} round {round}: {report:#?}");
            assert_same_tree(&tree, &server.root().join("tree"));
            for i in 0..120 {
                let rel = format!("d{}/f{i}", i % 4);
                let want = std::fs::metadata(tree.join(&rel)).unwrap();
                let got = std::fs::metadata(server.root().join("tree").join(&rel)).unwrap();
                let what = format!("{unnamed:?} round {round}: {rel}");
                assert_eq!(want.mode() & 0o7777, got.mode() & 0o7777, "{what}");
                assert_eq!(
                    (want.mtime(), want.mtime_nsec()),
                    (got.mtime(), got.mtime_nsec()),
                    "{what}"
                );
            }
            let leftovers: Vec<PathBuf> = walk_names(server.root())
                .into_iter()
                .filter(|p| p.to_string_lossy().contains("tidegate-partial"))
                .collect();
            assert!(leftovers.is_empty(), "{unnamed:?}: {leftovers:?}");
        }
        server.stop().await;
    }
}

fn walk_names(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A destination that is not `HOST:PORT` is refused before anything starts, naming it.
#[tokio::test]
async fn a_malformed_destination_is_refused_at_start() {
    let src = tempfile::tempdir().unwrap();
    let transfer = tidegate::Transfer::new(
        vec![src.path().to_path_buf()],
        vec!["127.0.0.1:9".into(), "receiver".into()],
    );
    match transfer.start() {
        Err(tidegate::transfer::TransferError::Destination(e)) => {
            assert_eq!(e.addr, "receiver");
            assert!(e.to_string().contains("port is missing"), "{e}");
        }
        other => panic!("expected a destination error, got {other:?}"),
    }
}

/// A directory and a symlink are confirmed only with the small-file batch, once their parent
/// directory is durable, not as soon as they are made: a receiver losing power before the
/// batch's flush must not have confirmed entries the sender will never send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_and_symlinks_are_confirmed_when_durable() {
    use tidegate::protocol::Frame;
    let server = TestServer::start().await;
    let (mut r, mut w) = crate::common::wire::connect(server.addr, [9; 16]).await;
    let payload = bytes::Bytes::from_static(b"after them");
    let requests = [
        Frame::Dir {
            file: 1,
            meta: crate::common::wire::meta(b"empty".to_vec(), 0),
        },
        Frame::Symlink {
            file: 2,
            meta: crate::common::wire::meta(b"link".to_vec(), 0),
            target: b"empty".to_vec(),
        },
        Frame::SmallFile {
            file: 3,
            meta: crate::common::wire::meta(b"f".to_vec(), payload.len() as u64),
            root: *blake3::hash(&payload).as_bytes(),
            payload,
        },
    ];
    for f in &requests {
        w.send(f).await.unwrap();
    }
    // Answered in order: the directory and the link had nothing to say yet.
    assert_eq!(
        r.next().await.unwrap().unwrap(),
        Frame::Ack { file: 3, index: 0 }
    );
    // Asking again while they wait is not answered either.
    w.send(&Frame::FileEnd {
        file: 1,
        root: [0; 32],
    })
    .await
    .unwrap();
    w.send(&Frame::Finish).await.unwrap();
    let mut done = Vec::new();
    loop {
        match r.next().await.unwrap().unwrap() {
            Frame::FileDone { file } => done.push(file),
            Frame::Finished => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    done.sort_unstable();
    assert_eq!(done, [1, 2, 3]);
    assert!(server.dir.path().join("empty").is_dir());
    assert_eq!(
        std::fs::read_link(server.dir.path().join("link")).unwrap(),
        std::path::Path::new("empty")
    );
    // Asked again once durable: confirmed at once.
    w.send(&Frame::FileEnd {
        file: 1,
        root: [0; 32],
    })
    .await
    .unwrap();
    assert_eq!(
        r.next().await.unwrap().unwrap(),
        Frame::FileDone { file: 1 }
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_transfer_still_reports_the_bytes_acknowledged_before_the_stall() {
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    std::fs::write(&file, data(32 << 20, 3)).unwrap();
    // The link stops forwarding after 8 MiB, and stays silent longer than the test runs.
    let proxy = crate::common::Proxy::start(server.addr).await;
    proxy.hold_after(8 << 20);
    let mut options = fast_options();
    options.reply_timeout = std::time::Duration::from_secs(600);
    let mut transfer =
        tidegate::Transfer::new(vec![file], vec![proxy.addr.to_string()]).options(options);
    let mut progress = transfer.subscribe();
    let handle = transfer.start().unwrap();
    proxy.until_held(std::time::Duration::from_secs(60)).await;
    // Of the 8 MiB, at most one chunk per connection (4) is cut short: at least 3 MiB of
    // chunks arrived whole. Their acknowledgements come in a burst, faster than the rate limit,
    // and must be read while the next frames cannot be written; and the count the rate limit
    // held back must be sent although nothing follows.
    let mut done = 0;
    while done < 3 << 20 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(60), progress.recv())
            .await
            .unwrap_or_else(|_| panic!("the last count sent was {done} bytes"))
            .unwrap();
        if let tidegate::Progress::Bytes { done_bytes, .. } = event {
            done = done_bytes;
        }
    }
    handle.cancel();
    proxy.release();
    drop(progress);
    let report = handle.wait().await.unwrap();
    assert!(report.cancelled, "{report:#?}");
    server.stop().await;
}

//! What a receiver's subscriber is told ([`tidegate::Server::subscribe`]): the connections
//! that came in, were refused or ended, and every file put in place, with its path and length.

use std::collections::BTreeSet;
use std::time::Duration;

use tidegate::protocol::handshake::Key;
use tidegate::{Server, ServerEvent, ServerOptions, Transfer};

use crate::common::{data, fast_options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_connections_refusals_and_every_file_received() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServerOptions::new(dir.path());
    opts.key = Key::from_passphrase("right");
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap();
    let mut events = server.subscribe().unwrap();
    assert!(server.subscribe().is_none());
    let addr = server.local_addr().unwrap().to_string();
    let stop = server.shutdown_token();
    let status = server.status();
    let serving = tokio::spawn(server.serve());

    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("t");
    std::fs::create_dir_all(tree.join("sub/empty")).unwrap();
    std::fs::write(tree.join("large.bin"), data(5 << 20, 1)).unwrap();
    std::fs::write(tree.join("sub/a"), data(1000, 2)).unwrap();
    std::fs::write(tree.join("sub/b"), b"").unwrap();
    let mut options = fast_options();
    options.key = Key::from_passphrase("right");
    options.streams = 2;
    let report = Transfer::new(vec![tree], vec![addr.clone()])
        .options(options.clone())
        .start()
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(report.success(), "{report:?}");

    options.key = Key::from_passphrase("wrong");
    options.retry_for = Duration::ZERO;
    let refused = Transfer::new(vec![src.path().join("t/sub/a")], vec![addr])
        .options(options)
        .start()
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(!refused.success());

    stop.cancel();
    serving.await.unwrap().unwrap();
    let mut files = BTreeSet::new();
    let (mut connected, mut disconnected, mut refusals) = (0, 0, Vec::new());
    while let Some(e) = events.recv().await {
        match e {
            ServerEvent::Connected { peer } => {
                assert!(peer.ip().is_loopback());
                connected += 1;
            }
            ServerEvent::Disconnected { error, .. } => {
                assert_eq!(error, None);
                disconnected += 1;
            }
            ServerEvent::Refused { reason, .. } => refusals.push(reason),
            ServerEvent::FileReceived { path, bytes } => {
                assert!(files.insert((path, bytes)), "told twice");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let want: BTreeSet<_> = [("t/large.bin", 5 << 20), ("t/sub/a", 1000), ("t/sub/b", 0)]
        .into_iter()
        .map(|(p, n)| (p.to_owned(), n))
        .collect();
    assert_eq!(files, want, "files, not directories");
    assert_eq!(connected, 2, "one per stream");
    assert_eq!(disconnected, connected);
    assert!(!refusals.is_empty(), "the wrong key is told of");
    assert!(refusals.iter().all(|r| r.contains("key")), "{refusals:?}");
    assert_eq!(status.missed_events(), 0);
}

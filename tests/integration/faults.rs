//! Failures: connections cut mid-transfer, receivers that come up late or never, wrong keys.

use std::time::Duration;

use crate::common::{data, fast_options, send, Proxy, TestServer};
use tidegate::protocol::handshake::Key;
use tidegate::{ConnectionState, Progress, Transfer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_transfer_still_deliver_identical_bytes() {
    let server = TestServer::start().await;
    // Cut every connection three times, each after another 8 MiB went through.
    let proxy = Proxy::cutting(server.addr, 8 << 20, 3).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let content = data(48 << 20, 7);
    std::fs::write(&file, &content).unwrap();
    let mut options = fast_options();
    // Small budget and chunks: many chunks in flight to lose and resend.
    let budget = 8 << 20;
    options.pipeline.memory_bytes = budget;
    options.pipeline.chunk_size = tidegate::ChunkSize::new(256 << 10).unwrap();
    let mut transfer = Transfer::new(vec![file], vec![proxy.addr.to_string()]).options(options);
    let mut events = transfer.subscribe();
    let handle = transfer.start().unwrap();
    let mut dropped = 0;
    while let Some(event) = events.recv().await {
        // (A redial cut during its handshake may also show as unreachable, then connected.)
        if let tidegate::Progress::Connection {
            state: tidegate::ConnectionState::Dropped,
            error,
            ..
        } = event
        {
            assert!(error.is_some());
            dropped += 1;
        }
    }
    let report = handle.wait().await.unwrap();
    assert!(report.success(), "{report:#?}");
    assert_eq!(proxy.cuts(), 3);
    assert!(report.destinations[0].reconnects >= 3, "{report:#?}");
    // Each drop an app can show, counted as the report counts them.
    assert_eq!(dropped, report.destinations[0].reconnects, "{report:#?}");
    let got = std::fs::read(server.root().join("big.bin")).unwrap();
    assert!(got == content, "received bytes differ");
    // At most the in-flight window (the budget) is sent again per cut, plus frame headers.
    let resent = proxy.forwarded() - content.len() as u64;
    eprintln!("resent after 3 cuts: {resent} bytes (budget {budget})");
    assert!(
        resent <= 3 * budget + (1 << 20),
        "{resent} bytes sent twice for 3 cuts with a budget of {budget}"
    );
    server.stop().await;
}

/// A byte damaged on the way (past TCP's checksum): the receiver refuses the chunk, drops
/// what it had of the file, and the sender sends the file again whole after the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_damaged_on_the_way_is_sent_again_and_the_transfer_succeeds() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    // Well inside the payload of a chunk of the large file (frame headers are a few dozen
    // bytes per MiB).
    proxy.corrupt_at((5 << 20) + 4321);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let content = data(16 << 20, 11);
    std::fs::write(&file, &content).unwrap();
    let report = send(vec![file], proxy.addr.to_string(), fast_options()).await;
    assert!(proxy.corrupted(), "the byte was not damaged");
    assert!(report.success(), "{report:#?}");
    assert_eq!(report.destinations[0].files_done, 1, "{report:#?}");
    let got = std::fs::read(server.root().join("big.bin")).unwrap();
    assert!(got == content, "received bytes differ");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_comes_up_within_retry_for_gets_everything() {
    // Reserve a free port, release it, and start the server there a little later.
    let addr: std::net::SocketAddr = crate::common::unused_addr().parse().unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("late.bin");
    std::fs::write(&file, data(3 << 20, 8)).unwrap();
    let mut transfer =
        Transfer::new(vec![file.clone()], vec![addr.to_string()]).options(fast_options());
    let mut events = transfer.subscribe();
    let handle = transfer.start().unwrap();
    // The first dials must fail: nothing is listening yet.
    let unreachable = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if let Progress::Connection { state, error, .. } = event {
                return Some((state, error));
            }
        }
        None
    })
    .await
    .expect("a connection event before the receiver is up");
    let (state, error) = unreachable.expect("the event stream ended early");
    assert_eq!(state, ConnectionState::Unreachable);
    assert!(
        error.is_some_and(|e| e.contains("onnect")),
        "the failed dial's cause is given"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut server_options = tidegate::ServerOptions::new(dir.path());
    server_options.key = tidegate_testkit::test_key();
    let server = tidegate::Server::bind(addr, server_options).await.unwrap();
    let stop = server.shutdown_token();
    let serving = tokio::spawn(server.serve());
    let mut failed_before = None;
    let drain = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Progress::Connection {
                state: ConnectionState::Connected,
                failed_attempts,
                ..
            } = event
            {
                failed_before.get_or_insert(failed_attempts);
            }
        }
        failed_before
    });
    let report = handle.wait().await.unwrap();
    assert!(report.success(), "{report:#?}");
    let failed = drain
        .await
        .unwrap()
        .expect("a connected event once the receiver is up");
    assert!(
        failed >= 1,
        "dials failed before the receiver came up: {failed}"
    );
    assert!(std::fs::read(dir.path().join("late.bin")).unwrap() == std::fs::read(&file).unwrap());
    stop.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_comes_up_fails_with_a_clear_error() {
    let addr = crate::common::unused_addr();
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    std::fs::write(&file, b"nobody home").unwrap();
    let mut options = fast_options();
    options.retry_for = Duration::from_secs(2);
    let report = send(vec![file], addr.clone(), options).await;
    assert!(!report.success());
    let error = report.destinations[0]
        .error
        .clone()
        .expect("the destination failed");
    assert!(error.contains(&addr), "{error}");
    assert!(error.contains("connect"), "the cause is named: {error}");
    assert_eq!(
        report.destinations[0].failure,
        Some(tidegate::DestinationFailure::Unreachable)
    );
    assert_eq!(
        report.destinations[0].failed.len(),
        1,
        "the file is listed as failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_creates_nothing() {
    let server = TestServer::start_with(|o| o.key = Key::from_passphrase("right")).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("secret");
    std::fs::write(&file, b"data").unwrap();
    let mut options = fast_options();
    options.key = Key::from_passphrase("wrong");
    let report = send(vec![file.clone()], server.addr.to_string(), options).await;
    let error = report.destinations[0].error.clone().expect("refused");
    assert!(error.contains("authentication failed"), "{error}");
    assert_eq!(
        report.destinations[0].failure,
        Some(tidegate::DestinationFailure::Authentication)
    );
    assert_eq!(
        std::fs::read_dir(server.root()).unwrap().count(),
        0,
        "nothing created"
    );
    // The right key works against the same server.
    let mut options = fast_options();
    options.key = Key::from_passphrase("right");
    let report = send(vec![file], server.addr.to_string(), options).await;
    assert!(report.success(), "{report:#?}");
    server.stop().await;
}

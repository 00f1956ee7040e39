//! Attackers on the path and at the door (the threat model in `docs/PROTOCOL.md`): a
//! recorder learns no name and no content, a TLS-terminating man in the middle without the
//! passphrase completes nothing, wrong passphrases are refused and then locked out per
//! address, a receiver never lets in a sender without its phrase unless told to, and a
//! plaintext peer of an older version is told both versions.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::common::process::{self, tidegate, Owned};
use crate::common::wire;
use crate::common::{fast_options, send, TestServer};
use tidegate::protocol::handshake::Key;
use tidegate::protocol::ErrorCode;
use tidegate::{DestinationFailure, Transfer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME_MARKER: &str = "tidegate-name-marker-7f3a9c";
const CONTENT_MARKER: &[u8] = b"TIDEGATE-CONTENT-MARKER-51e0d2|";

/// Stops `server` once idle, and checks that its directory is still empty.
async fn stop_with_nothing_created(server: TestServer) {
    server.idle().await;
    let root = server.stop().await;
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Copies `from` to `to`, appending what passes to `log`.
async fn pipe(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    log: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        log.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A TCP relay to `target` that records every byte both ways.
async fn recording_relay(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let record = log.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pipe(cr, sw, record.clone()));
            tokio::spawn(pipe(sr, cw, record.clone()));
        }
    });
    (addr, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_on_the_path_sees_no_name_and_no_content() {
    let server = TestServer::start().await;
    let (relay, log) = recording_relay(server.addr).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join(NAME_MARKER);
    let content: Vec<u8> = CONTENT_MARKER.repeat((3 << 20) / CONTENT_MARKER.len());
    std::fs::write(&file, &content).unwrap();
    let small = src.path().join(format!("{NAME_MARKER}.small"));
    std::fs::write(&small, CONTENT_MARKER).unwrap();
    let report = send(vec![file, small], relay.to_string(), fast_options()).await;
    assert!(report.success(), "{report:#?}");
    assert_eq!(
        std::fs::read(server.root().join(NAME_MARKER)).unwrap(),
        content
    );
    let recorded = log.lock().unwrap().clone();
    assert!(
        recorded.len() > content.len(),
        "everything went through the relay"
    );
    assert!(
        !contains(&recorded, NAME_MARKER.as_bytes()),
        "a name was seen"
    );
    assert!(
        !contains(&recorded, &CONTENT_MARKER[..16]),
        "content was seen"
    );
    let tls = report.destinations[0].tls.clone().expect("TLS negotiated");
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tls.cipher_suite, "TLS13_AES_128_GCM_SHA256");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_on_the_path_costs_one_connection_and_writes_nothing_forged() {
    let server = TestServer::start().await;
    let proxy = crate::common::Proxy::start(server.addr).await;
    // In the ciphertext of a chunk of the large file: the record fails its AEAD check.
    proxy.corrupt_at((5 << 20) + 4321);
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("big.bin");
    let content = crate::common::data(16 << 20, 11);
    std::fs::write(&file, &content).unwrap();
    let report = send(vec![file], proxy.addr.to_string(), fast_options()).await;
    assert!(proxy.corrupted(), "the byte was not flipped");
    assert!(report.success(), "{report:#?}");
    let dest = &report.destinations[0];
    assert!(
        dest.reconnects >= 1,
        "the forged record ended its connection: {dest:#?}"
    );
    assert!(std::fs::read(server.root().join("big.bin")).unwrap() == content);
    server.stop().await;
}

/// A man in the middle with its own TLS key: it terminates the sender's TLS, opens its own
/// to the receiver, and relays the plaintext between them both ways. It knows no passphrase.
async fn tls_man_in_the_middle(target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let own = tidegate::tls::ServerTls::ephemeral().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let own = own.clone();
            tokio::spawn(async move {
                let Ok(client) = own.accept(client).await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(target).await else {
                    return;
                };
                let Ok(server) = tidegate::tls::connect(server).await else {
                    return;
                };
                let (cr, cw) = tokio::io::split(client);
                let (sr, sw) = tokio::io::split(server);
                let log = Arc::new(Mutex::new(Vec::new()));
                tokio::join!(pipe(cr, sw, log.clone()), pipe(sr, cw, log));
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_terminating_man_in_the_middle_completes_nothing() {
    let server = TestServer::start().await;
    let mitm = tls_man_in_the_middle(server.addr).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f.txt");
    std::fs::write(&file, b"for the receiver only").unwrap();
    let mut options = fast_options();
    options.retry_for = std::time::Duration::ZERO;
    let report = send(vec![file], mitm.to_string(), options).await;
    let dest = &report.destinations[0];
    assert_eq!(
        dest.failure,
        Some(DestinationFailure::Authentication),
        "{dest:#?}"
    );
    assert!(
        dest.error
            .as_deref()
            .is_some_and(|e| e.contains("authentication failed")),
        "{dest:#?}"
    );
    stop_with_nothing_created(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passphrases_are_refused_then_locked_out_per_address() {
    let server = TestServer::start_with(|o| {
        o.auth_free_failures = 2;
        // Longer than the test: the lockout cannot end under it.
        o.auth_lockout = std::time::Duration::from_secs(600);
    })
    .await;
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let dial = |from: std::net::IpAddr| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        socket.connect(server.addr)
    };
    let wrong = Key::from_passphrase("not the passphrase");
    for _ in 0..3 {
        let refused = wire::handshake(dial(attacker).await.unwrap(), &wrong, [1; 16]).await;
        let Err((_, why)) = refused else {
            panic!("a wrong passphrase got in")
        };
        assert!(why.contains("authentication failed"), "{why}");
    }
    // Each failure is counted once the receiver sees its connection end.
    server.idle().await;
    // Now even the right passphrase from that address is turned away before it can guess.
    let right = tidegate_testkit::test_key();
    let locked = wire::handshake(dial(attacker).await.unwrap(), &right, [2; 16]).await;
    let Err((code, why)) = locked else {
        panic!("a locked-out address got in")
    };
    assert_eq!(code, ErrorCode::Limit as u16);
    assert!(
        why.contains("too many failed authentications from 127.0.0.2"),
        "{why}"
    );
    // Another address is served as usual.
    let other = wire::handshake(
        dial("127.0.0.3".parse().unwrap()).await.unwrap(),
        &right,
        [3; 16],
    );
    let (mut r, mut w) = other.await.expect("another address is served");
    wire::finish(&mut r, &mut w, true).await;
    drop((r, w));

    // A sender with the wrong passphrase fails at once, with what to do.
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f.txt");
    std::fs::write(&file, b"x").unwrap();
    let mut options = fast_options();
    options.key = wrong;
    let report = Transfer::new(vec![file], vec![server.addr.to_string()])
        .options(options)
        .start()
        .unwrap()
        .wait()
        .await
        .unwrap();
    let dest = &report.destinations[0];
    assert_eq!(
        dest.failure,
        Some(DestinationFailure::Authentication),
        "{dest:#?}"
    );
    assert!(
        dest.error.as_deref().unwrap().contains("TIDEGATE_KEY"),
        "{dest:#?}"
    );
    stop_with_nothing_created(server).await;
}

/// Starts `serve` with no key in its environment and returns it, its address and its stderr
/// lines up to the first blank line after the address (the code phrase's block, if any).
fn serve_without_key(dir: &std::path::Path, extra: &[&str]) -> (Owned, String, String) {
    use std::io::BufRead;
    let mut child = Owned::new(
        tidegate()
            .env_remove("TIDEGATE_KEY")
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir)
            .args(extra)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let mut addr = None;
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        said.push_str(&line);
        if let Some(a) = line.trim().strip_prefix("tidegate: receiving into ") {
            addr = a.rsplit(' ').next().map(str::to_owned);
            if extra.contains(&"--insecure-no-auth") {
                break;
            }
        }
        if line.contains("--insecure-no-auth lets anyone in") {
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, addr.expect("serve said its address"), said)
}

#[test]
fn serve_without_a_key_makes_a_code_phrase_and_refuses_a_keyless_send() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("f.txt");
    std::fs::write(&file, b"hello").unwrap();
    let (server, addr, said) = serve_without_key(dst.path(), &[]);
    let phrase = said
        .split_whitespace()
        .find_map(|w| w.strip_prefix("TIDEGATE_KEY="))
        .expect("a code phrase")
        .to_owned();
    assert_eq!(phrase.len(), 19, "{said}");
    assert!(
        said.contains(&format!(
            "--to 127.0.0.1:{}",
            addr.rsplit(':').next().unwrap()
        )),
        "{said}"
    );

    let keyless = tidegate()
        .env_remove("TIDEGATE_KEY")
        .args(["send", "--retry-for", "2s", "--to", &addr])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(keyless.status.code(), Some(1));
    let err = String::from_utf8_lossy(&keyless.stderr);
    assert!(err.contains("printed a code phrase"), "{err}");
    assert_eq!(
        std::fs::read_dir(dst.path()).unwrap().count(),
        0,
        "nothing created"
    );

    // The printed phrase is what it takes.
    process::succeeds(
        tidegate()
            .env("TIDEGATE_KEY", &phrase)
            .args(["send", "--no-progress", "--to", &addr])
            .arg(&file),
    );
    assert_eq!(std::fs::read(dst.path().join("f.txt")).unwrap(), b"hello");
    assert!(process::stop(server).success());
}

#[test]
fn insecure_no_auth_lets_a_keyless_send_in_and_empty_keys_are_usage_errors() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let file = src.path().join("f.txt");
    std::fs::write(&file, b"open").unwrap();
    let (server, addr, said) = serve_without_key(dst.path(), &["--insecure-no-auth"]);
    assert!(said.contains("not authenticated"), "{said}");
    let out = process::succeeds(
        tidegate()
            .env_remove("TIDEGATE_KEY")
            .args(["send", "--no-progress", "--to", &addr])
            .arg(&file),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key given"));
    assert_eq!(std::fs::read(dst.path().join("f.txt")).unwrap(), b"open");
    assert!(process::stop(server).success());

    let empty = src.path().join("empty-key");
    std::fs::write(&empty, "\nsecond line\n").unwrap();
    for cmd in [
        tidegate()
            .env("TIDEGATE_KEY", "")
            .args(["send", "--to", &addr])
            .arg(&file)
            .output(),
        tidegate()
            .args(["send", "--to", &addr, "--key-file"])
            .arg(&empty)
            .arg(&file)
            .output(),
        tidegate()
            .env("TIDEGATE_KEY", "")
            .args(["serve", "--dir"])
            .arg(dst.path())
            .output(),
    ] {
        let out = cmd.unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("empty"),
            "{out:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_peer_of_version_4_is_told_both_versions() {
    use tidegate::protocol::{codec, Frame};
    let server = TestServer::start().await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    // Version 4's Hello: magic, version, session, a 32-byte nonce, in the clear.
    let hello = Frame::Hello {
        version: 4,
        session: [1; 16],
        pake: bytes::Bytes::from_static(&[0; 32]),
    };
    let mut buf = bytes::BytesMut::new();
    codec::encode(&hello, &mut buf);
    s.write_all(&buf).await.unwrap();
    let (rd, _wr) = s.into_split();
    let mut r = tidegate::wire::FrameReader::new(rd, 1 << 16);
    let Some(Frame::Error { message, .. }) = r.next().await.unwrap() else {
        panic!("an error frame expected");
    };
    let message = String::from_utf8_lossy(&message);
    assert!(
        message.contains("version 4") && message.contains("version 5"),
        "{message}"
    );
    server.stop().await;
}

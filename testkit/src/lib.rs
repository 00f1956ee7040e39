//! What tidegate's tests, benches and heap profiles share, so that none of them rebuilds it:
//! an in-process server on a loopback port ([`TestServer`]), deterministic test data
//! ([`data`], [`write_file`]), tree comparison ([`assert_same_tree`]), whole transfers
//! ([`send`]), raw protocol clients that play a peer frame by frame ([`frames`]), a proxy that
//! cuts connections ([`Proxy`]), a Garage cluster for the object-store tests ([`garage`]),
//! and the dhat helpers of the heap tests ([`heap`]).
//!
//! Dev-only: nothing here is part of tidegate's API, and every helper panics on failure.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod frames;
pub mod garage;
pub mod heap;
mod proxy;

pub use proxy::Proxy;

use tidegate::{Server, ServerOptions, ServerStatus, TransferOptions};
use tokio_util::sync::CancellationToken;

/// A loopback address nothing listens on (a port the kernel just handed out and took back).
pub fn unused_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// A running server; stops (and is awaited) on `stop`.
pub struct TestServer {
    pub addr: SocketAddr,
    pub status: ServerStatus,
    pub dir: tempfile::TempDir,
    token: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerOptions)) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), tweak).await
    }

    /// A server on `dir` (say, one an earlier server left).
    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut ServerOptions)) -> Self {
        let mut opts = ServerOptions::new(dir.path());
        opts.key = test_key();
        tweak(&mut opts);
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), opts)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let token = server.shutdown_token();
        let status = server.status();
        let task = tokio::spawn(server.serve());
        TestServer {
            addr,
            status,
            dir,
            token,
            task,
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until every connection has ended and been reaped and no session is held.
    pub async fn idle(&self) {
        for _ in 0..1000 {
            if self.status.connections() == 0 && self.status.sessions() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "server not idle after 10 s: {} connections, {} sessions",
            self.status.connections(),
            self.status.sessions()
        );
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.token.cancel();
        self.task.await.unwrap().unwrap();
        self.dir
    }
}

/// The passphrase of every test server and sender (and of the `tidegate` processes the
/// tests start, as `TIDEGATE_KEY`), so that they authenticate as users' do.
pub const TEST_KEY: &str = "tidegate test passphrase";

/// [`TEST_KEY`]'s key.
pub fn test_key() -> tidegate::protocol::handshake::Key {
    tidegate::protocol::handshake::Key::from_passphrase(TEST_KEY)
}

/// Options for tests: quick retries, [`TEST_KEY`].
pub fn fast_options() -> TransferOptions {
    let mut o = TransferOptions::default();
    o.key = test_key();
    o.retry_for = Duration::from_secs(10);
    o.connect_timeout = Duration::from_secs(2);
    o.reply_timeout = Duration::from_secs(10);
    o
}

/// Deterministic, non-repeating bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Asserts that `got` holds exactly the files, directories and bytes of `want`.
pub fn assert_same_tree(want: &Path, got: &Path) {
    let mut a = list(want);
    let mut b = list(got);
    a.sort();
    b.sort();
    let names_a: Vec<_> = a.iter().map(|(p, _)| p.clone()).collect();
    let names_b: Vec<_> = b.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(names_a, names_b, "different entries");
    for (rel, is_dir) in a {
        if !is_dir {
            let x = std::fs::read(want.join(&rel)).unwrap();
            let y = std::fs::read(got.join(&rel)).unwrap();
            assert!(
                x == y,
                "{} differs: {} vs {} bytes",
                rel.display(),
                x.len(),
                y.len()
            );
        }
    }
}

fn list(root: &Path) -> Vec<(PathBuf, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            out.push((p.strip_prefix(root).unwrap().to_path_buf(), ft.is_dir()));
            if ft.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Runs a whole transfer of `paths` to `to` and returns its report.
pub async fn send(paths: Vec<PathBuf>, to: String, options: TransferOptions) -> tidegate::Report {
    tidegate::Transfer::new(paths, vec![to])
        .options(options)
        .start()
        .unwrap()
        .wait()
        .await
        .unwrap()
}

/// Writes `len` deterministic bytes to `path`, 1 MiB at a time.
pub fn write_file(path: &Path, len: u64, seed: u64) {
    let block = data(1 << 20, seed);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

//! A receiver restarted under a live `send` (a service restart, an upgrade, a crash under a
//! supervisor): the same `send` finishes, byte-identical, exits 0, and resends only what the
//! receiver lost. A proxy between them holds the sender's bytes at a chosen point, so that
//! the restart happens mid-transfer whatever the machine's speed.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::process::{serve, serve_at, stop, tidegate, Owned};
use crate::common::{assert_same_tree, write_file, Proxy};

const MIB: u64 = 1 << 20;
/// The most a receiver acknowledges of a large file before recording it in its journal.
const JOURNAL_FLUSH: u64 = 64 * MIB;
/// The sender's memory budget in these tests.
const BUDGET: u64 = 32 * MIB;

#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGTERM: a graceful stop (journals flushed, the batch of small files dropped).
    Term,
    /// SIGKILL: nothing flushed that was not already.
    Kill,
}

/// A receiver behind a proxy, and a `send` running through it.
struct Run {
    served: tempfile::TempDir,
    listen: String,
    server: Option<Owned>,
    proxy: Proxy,
    sender: Option<Child>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Run {
    async fn start(source: &Path) -> Run {
        let served = tempfile::tempdir().unwrap();
        let (server, listen) = serve(served.path(), &[]);
        let proxy = Proxy::start(listen.parse().unwrap()).await;
        // Held from the start: the test says how far the sender may go.
        proxy.hold_after(0);
        let mut sender = tidegate()
            .args(["send", "--json", "--retry-for", "60s", "--memory", "32MiB"])
            .args(["--to", &proxy.addr.to_string()])
            .arg(source)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = sender.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut out, &mut s).unwrap();
            s
        });
        Run {
            served,
            listen,
            server: Some(server),
            proxy,
            sender: Some(sender),
            stdout: Some(stdout),
        }
    }

    /// Lets the sender's bytes through until `bytes` have gone in all, and waits for that.
    async fn go_until(&self, bytes: u64) {
        self.proxy.hold_after(bytes);
        self.proxy.until_held(Duration::from_secs(120)).await;
    }

    /// Stops the receiver and starts it again on the same address.
    fn restart(&mut self, how: Stop) {
        let mut server = self.server.take().unwrap();
        match how {
            Stop::Term => {
                let status = stop(server);
                assert!(status.success(), "serve stopped with {status}");
            }
            Stop::Kill => {
                server.kill().unwrap();
                server.wait().unwrap();
            }
        }
        let (server, _) = serve_at(&self.listen, self.served.path(), &[]);
        self.server = Some(server);
    }

    /// Lets everything through, waits for `send`, and returns its destination report.
    async fn finish(mut self) -> (serde_json::Value, tempfile::TempDir) {
        self.proxy.release();
        let mut sender = self.sender.take().unwrap();
        let status = tokio::task::spawn_blocking(move || sender.wait().unwrap())
            .await
            .unwrap();
        let stdout = self.stdout.take().unwrap().join().unwrap();
        assert!(status.success(), "send exited with {status}: {stdout}");
        let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let dest = last["report"]["destinations"][0].clone();
        assert_eq!(dest["error"], serde_json::Value::Null, "{dest}");
        assert_eq!(dest["failed"], serde_json::json!([]), "{dest}");
        eprintln!(
            "resent {} bytes, {} restarts, {} reconnects",
            dest["resent"], dest["restarts"], dest["reconnects"]
        );
        if let Some(server) = self.server.take() {
            stop(server);
        }
        (dest, self.served)
    }
}

/// Files the receiver keeps while something is unfinished: partial files and journals.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            found.extend(leftovers(&path));
        } else if path.to_string_lossy().contains(".tidegate-") {
            found.push(path);
        }
    }
    found
}

fn large_source(len: u64) -> (tempfile::TempDir, PathBuf) {
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("big.bin");
    write_file(&path, len, 21);
    (src, path)
}

/// A tree of 2,000 small files of 1 to 8 KiB in 20 directories; returns it and its bytes.
fn small_tree() -> (tempfile::TempDir, PathBuf, u64) {
    let src = tempfile::tempdir().unwrap();
    let top = src.path().join("tree");
    let mut total = 0;
    for d in 0..20u64 {
        let dir = top.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100u64 {
            let len = 1024 + (d * 100 + f) * 37 % (7 * 1024);
            write_file(&dir.join(format!("f{f:03}")), len, d * 100 + f);
            total += len;
        }
    }
    (src, top, total)
}

fn count(dest: &serde_json::Value, field: &str) -> u64 {
    dest[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {dest}"))
}

async fn large_file_restarted(how: Stop) -> u64 {
    let len = 160 * MIB;
    let (_src, path) = large_source(len);
    let mut run = Run::start(&path).await;
    // Past one journal flush, so that a killed receiver still has something to resume.
    run.go_until(100 * MIB).await;
    run.restart(how);
    let (dest, served) = run.finish().await;
    assert_eq!(
        std::fs::read(served.path().join("big.bin")).unwrap(),
        std::fs::read(&path).unwrap()
    );
    assert_eq!(leftovers(served.path()), Vec::<PathBuf>::new());
    assert_eq!(count(&dest, "restarts"), 1, "{dest}");
    assert!(count(&dest, "reconnects") >= 1, "{dest}");
    assert_eq!(count(&dest, "files_done"), 1, "{dest}");
    let resent = count(&dest, "resent");
    // What the receiver had acknowledged and not yet recorded in its journal, and what was
    // in flight.
    assert!(
        resent <= JOURNAL_FLUSH + BUDGET,
        "{} MiB resent: {dest}",
        resent / MIB
    );
    resent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_stopped_mid_file_and_started_again_gets_the_file() {
    let resent = large_file_restarted(Stop::Term).await;
    // A graceful stop flushes the journal: what goes again is what was in flight, and the
    // chunks verified ahead of the first one missing (in flight too, a moment before).
    assert!(resent <= 2 * BUDGET, "{} MiB resent", resent / MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_mid_file_and_started_again_gets_the_file() {
    large_file_restarted(Stop::Kill).await;
}

async fn small_files_restarted(how: Stop) {
    let (src, top, total) = small_tree();
    let mut run = Run::start(&top).await;
    run.go_until(total / 2).await;
    run.restart(how);
    let (dest, served) = run.finish().await;
    assert_same_tree(&top, &served.path().join("tree"));
    assert_eq!(leftovers(served.path()), Vec::<PathBuf>::new());
    assert_eq!(count(&dest, "restarts"), 1, "{dest}");
    // 2,000 files and 21 directories.
    assert_eq!(count(&dest, "files_done"), 2021, "{dest}");
    drop(src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_stopped_while_small_files_are_in_flight_gets_every_one() {
    small_files_restarted(Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_while_small_files_are_in_flight_gets_every_one() {
    small_files_restarted(Stop::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_restarts_within_one_transfer() {
    let len = 160 * MIB;
    let (_src, path) = large_source(len);
    let mut run = Run::start(&path).await;
    run.go_until(40 * MIB).await;
    run.restart(Stop::Kill);
    run.go_until(110 * MIB).await;
    run.restart(Stop::Term);
    let (dest, served) = run.finish().await;
    assert_eq!(
        std::fs::read(served.path().join("big.bin")).unwrap(),
        std::fs::read(&path).unwrap()
    );
    assert_eq!(leftovers(served.path()), Vec::<PathBuf>::new());
    assert_eq!(count(&dest, "restarts"), 2, "{dest}");
}

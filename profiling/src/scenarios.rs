//! The named scenarios. Each prepares its data and warms up (runtime threads, rayon pool, a
//! server, one small run) before the profiler starts, then runs its workload under the
//! profiler and tears everything it started down before the heap is read, so that bytes
//! still live at the end are bytes leaked by tidegate.

use std::path::PathBuf;
use std::time::Duration;

use tidegate::{HashJob, Input, TransferOptions};
use tidegate_testkit::{write_file, Proxy, TestServer};

/// Every scenario, in the order `run` and `check` use.
pub const ALL: [&str; 4] = ["hash-large", "send-large", "send-small", "reconnect-storm"];

const MIB: u64 = 1 << 20;

/// Data for a scenario, made before profiling.
pub struct Prepared {
    _dir: tempfile::TempDir,
    warm: Vec<PathBuf>,
    work: Vec<PathBuf>,
    /// Bytes the workload moves (hashes or sends), for allocations per MiB.
    pub bytes: u64,
}

/// Makes the scenario's files.
pub fn prepare(name: &str) -> Prepared {
    let dir = tempfile::tempdir().expect("tempdir");
    let warm = dir.path().join("warm");
    write_file(&warm, 4 * MIB, 1);
    let (work, bytes) = match name {
        "hash-large" | "send-large" => {
            let big = dir.path().join("big");
            write_file(&big, 256 * MIB, 2);
            (vec![big], 256 * MIB)
        }
        "reconnect-storm" => {
            let big = dir.path().join("big");
            write_file(&big, 64 * MIB, 3);
            (vec![big], 64 * MIB)
        }
        "send-small" => {
            let tree = dir.path().join("tree");
            let mut total = 0;
            for i in 0..5000u64 {
                let sub = tree.join(format!("d{:02}", i % 50));
                std::fs::create_dir_all(&sub).expect("mkdir");
                let len = 1024 + (i * 7919) % (15 * 1024);
                write_file(&sub.join(format!("f{i:05}")), len, i);
                total += len;
            }
            (vec![tree], total)
        }
        other => panic!("unknown scenario {other}"),
    };
    Prepared {
        _dir: dir,
        warm: vec![warm],
        work,
        bytes,
    }
}

/// Runs `name`: its warm-up before the profiler, its workload under it. `profile` starts the
/// profiler and returns a guard; `read` reads the heap once the runtime has been shut down
/// (its worker and blocking threads joined), just before the guard is dropped.
pub fn run<G>(name: &str, data: &Prepared, profile: impl FnOnce() -> G, read: impl FnOnce()) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    warm_rayon();
    let guard = rt.block_on(async {
        match name {
            "hash-large" => {
                hash(&data.warm).await;
                let guard = profile();
                hash(&data.work).await;
                guard
            }
            "send-large" | "send-small" => {
                let server = TestServer::start().await;
                let to = server.addr.to_string();
                send(&data.warm, &to, keyed()).await;
                let guard = profile();
                send(&data.work, &to, keyed()).await;
                server.stop().await;
                guard
            }
            "reconnect-storm" => {
                let server = TestServer::start().await;
                let to = server.addr.to_string();
                send(&data.warm, &to, storm_options()).await;
                let guard = profile();
                {
                    // 50 cuts, one after every 1 MiB forwarded.
                    let proxy = Proxy::cutting(server.addr, MIB, 50).await;
                    let report = send(&data.work, &proxy.addr.to_string(), storm_options()).await;
                    assert_eq!(proxy.cuts(), 50, "the proxy did not cut 50 times");
                    eprintln!(
                        "reconnect-storm: 50 cuts, {} reconnects",
                        report.destinations[0].reconnects
                    );
                }
                server.stop().await;
                guard
            }
            other => panic!("unknown scenario {other}"),
        }
    });
    drop(rt);
    read();
    drop(guard);
}

/// Makes every thread of the global rayon pool finish starting up (its own job queue) and
/// register with the epoch collector its work-stealing deques use. Threads start
/// asynchronously, and an idle one registers the first time it tries to steal: either could
/// otherwise happen under the profiler and leave a per-thread block that looks like a leak.
fn warm_rayon() {
    rayon::broadcast(|_| drop(crossbeam_epoch::pin()));
}

/// The defaults, with the test servers' passphrase.
fn keyed() -> TransferOptions {
    let mut o = TransferOptions::default();
    o.key = tidegate_testkit::test_key();
    o
}

/// A small budget and chunk size: many chunks in flight to lose at each cut.
fn storm_options() -> TransferOptions {
    let mut o = keyed();
    o.pipeline.memory_bytes = 8 * MIB;
    o.pipeline.chunk_size = tidegate::ChunkSize::new(256 << 10).expect("chunk size");
    o.retry_for = Duration::from_secs(30);
    o
}

async fn hash(paths: &[PathBuf]) {
    let inputs = paths.iter().cloned().map(Input::Path).collect();
    let report = HashJob::new(inputs)
        .start()
        .expect("hash job")
        .wait()
        .await
        .expect("hash task");
    assert_eq!(report.failures(), 0, "hashing failed");
}

async fn send(paths: &[PathBuf], to: &str, options: TransferOptions) -> tidegate::Report {
    let report = tidegate_testkit::send(paths.to_vec(), to.to_string(), options).await;
    assert!(report.success(), "transfer failed: {report:?}");
    report
}

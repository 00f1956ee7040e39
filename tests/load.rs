//! Load: 8 senders at once, each making 50 transfers of a mixed tree (one 64 MiB file, 500
//! small files, empty directories, symlinks) into one `tidegate serve` process, each through a
//! proxy of its own that cuts every connection after a pseudo-random amount of traffic.
//!
//! Every transfer must succeed and arrive byte-identical; the receiver's peak RSS stays under
//! the 96 MiB per-end target; its open descriptors return to their idle count; nothing but
//! what was sent is left in the served directory. The figures are printed.
//! `TIDEGATE_LOAD_SENDERS` and `TIDEGATE_LOAD_TRANSFERS` change the scale.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::process::{mib, serve, stop, vm_hwm};
use common::{assert_same_tree, data, fast_options, write_file, Proxy};

const BOUND_BYTES: u64 = 96 << 20;

fn scale(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sender `n`'s tree, `tree-n`: a 64 MiB file, 500 small files over 5 directories, 3 empty
/// directories and 4 symlinks inside the tree. Returns it and its size in bytes.
fn make_tree(root: &Path, n: u64) -> (PathBuf, u64) {
    let tree = root.join(format!("tree-{n}"));
    std::fs::create_dir(&tree).unwrap();
    write_file(&tree.join("large.bin"), 64 << 20, 100 + n);
    let mut bytes = 64 << 20;
    for d in 0..5 {
        let dir = tree.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..100u64 {
            // 0 B to 64 KiB, one size of each kind.
            let len = ((f * 7919 + d * 131) % 65_537) as usize;
            std::fs::write(dir.join(format!("f{f}.dat")), data(len, n * 1000 + f)).unwrap();
            bytes += len as u64;
        }
    }
    for e in 0..3 {
        std::fs::create_dir_all(tree.join(format!("empty{e}/inner"))).unwrap();
    }
    for l in 0..4 {
        std::os::unix::fs::symlink(format!("d{l}/f1.dat"), tree.join(format!("link{l}"))).unwrap();
    }
    (tree, bytes)
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Receiver's own names left anywhere under `dir`.
fn leftovers(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tidegate-partial") || name.ends_with(".tidegate-journal") {
            out.push(e.path());
        }
        if e.file_type().unwrap().is_dir() {
            leftovers(&e.path(), out);
        }
    }
}

#[test]
fn eight_senders_fifty_mixed_trees_each_with_connections_cut() {
    let senders = scale("TIDEGATE_LOAD_SENDERS", 8) as u64;
    let transfers = scale("TIDEGATE_LOAD_TRANSFERS", 50);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let trees: Vec<_> = (0..senders).map(|n| make_tree(src.path(), n)).collect();
    let (server, addr) = serve(dst.path(), &[]);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let idle_fds = descriptors(server.id());
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (reconnects, cuts) = runtime.block_on(async {
        let tasks: Vec<_> = trees
            .iter()
            .enumerate()
            .map(|(n, (tree, _))| {
                let (tree, root) = (tree.clone(), dst.path().to_path_buf());
                tokio::spawn(async move {
                    // A cut after 20 to 60 MiB of traffic, differing per sender.
                    let every = (20 + (n as u64 * 11) % 41) << 20;
                    let proxy = Proxy::cutting(addr, every, u64::MAX).await;
                    let mut reconnects = 0;
                    for round in 0..transfers {
                        let mut options = fast_options();
                        options.links = true;
                        options.retry_for = Duration::from_secs(60);
                        let report =
                            common::send(vec![tree.clone()], proxy.addr.to_string(), options).await;
                        assert!(
                            report.success(),
                            "sender {n}, transfer {round}: {report:#?}"
                        );
                        reconnects += report.destinations[0].reconnects;
                        let name = tree.file_name().unwrap();
                        let got = root.join(name);
                        let tree = tree.clone();
                        tokio::task::spawn_blocking(move || assert_same_tree(&tree, &got))
                            .await
                            .unwrap();
                    }
                    (reconnects, proxy.cuts())
                })
            })
            .collect();
        let mut totals = (0, 0);
        for task in tasks {
            let (r, c) = task.await.unwrap();
            totals.0 += r;
            totals.1 += c;
        }
        totals
    });
    let elapsed = started.elapsed();
    let peak = vm_hwm(&server);
    // Connections end and are reaped a moment after their sender is done.
    let mut after_fds = descriptors(server.id());
    for _ in 0..500 {
        if after_fds <= idle_fds {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        after_fds = descriptors(server.id());
    }
    let moved: u64 = trees.iter().map(|(_, b)| b).sum::<u64>() * transfers as u64;
    let count = senders as usize * transfers;
    eprintln!(
        "load: {count} transfers in {:.1} s ({:.2}/s), {:.0} MiB, {cuts} cuts, {reconnects} \
         reconnects; receiver peak RSS {:.1} MiB; descriptors {idle_fds} idle, {after_fds} after",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        mib(moved),
        mib(peak)
    );
    assert!(cuts > 0, "no connection was cut");
    assert!(
        peak < BOUND_BYTES,
        "receiver peak RSS {peak} bytes exceeds {BOUND_BYTES}"
    );
    assert_eq!(after_fds, idle_fds, "descriptors held after the load");
    let mut left = Vec::new();
    leftovers(dst.path(), &mut left);
    assert!(left.is_empty(), "left behind: {left:?}");
    let names: Vec<_> = std::fs::read_dir(dst.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), senders as usize, "{names:?}");
    assert!(stop(server).success());
}

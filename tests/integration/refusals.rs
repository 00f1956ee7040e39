//! A file that every receiver refuses is no longer read: the sender moves on at once instead
//! of reading and hashing the whole file for nobody, and a receiver that refused a file gets
//! none of its data while the others get all of it.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::common::process::{serve, stop, tidegate};
use crate::common::{data, fast_options, send, Proxy, TestServer};

const TIB: u64 = 1 << 40;

/// A 1 TiB sparse file: nothing on disk, every byte readable as zero.
fn sparse_tib(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("big.bin");
    std::fs::File::create(&path).unwrap().set_len(TIB).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().blocks(), 0, "sparse");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_every_receiver_refuses_is_read_no_further() {
    let server = TestServer::start_with(|o| o.max_file_size = 1 << 30).await;
    let src = tempfile::tempdir().unwrap();
    let big = sparse_tib(src.path());
    let after = src.path().join("after.bin");
    std::fs::write(&after, data(3 << 20, 4)).unwrap();
    let report = send(
        vec![big, after.clone()],
        server.addr.to_string(),
        fast_options(),
    )
    .await;
    assert!(!report.success());
    let failed = &report.destinations[0].failed;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "big.bin");
    assert!(
        failed[0].1.contains("exceeds the limit"),
        "the receiver's reason: {failed:?}"
    );
    assert!(
        report.source_errors.is_empty(),
        "{:?}",
        report.source_errors
    );
    // What was read before the refusal arrived: the budget's worth at most, not 1 TiB.
    let budget = fast_options().pipeline.memory_bytes;
    assert!(
        report.bytes <= 2 * budget + (3 << 20),
        "read {} bytes of a refused file",
        report.bytes
    );
    // The transfer went on to the next file.
    assert_eq!(
        std::fs::read(server.root().join("after.bin")).unwrap(),
        std::fs::read(&after).unwrap()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_one_receiver_refuses_still_reaches_the_other_and_no_data_goes_to_the_first() {
    let taking = TestServer::start().await;
    let refusing = TestServer::start_with(|o| o.max_file_size = 1 << 20).await;
    let proxy = Proxy::start(refusing.addr).await;
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f.bin");
    let len = 24 << 20;
    std::fs::write(&file, data(len, 9)).unwrap();
    let report = tidegate::Transfer::new(
        vec![file.clone()],
        vec![taking.addr.to_string(), proxy.addr.to_string()],
    )
    .options(fast_options())
    .start()
    .unwrap()
    .wait()
    .await
    .unwrap();
    assert!(report.destinations[0].failed.is_empty(), "{report:#?}");
    assert_eq!(report.destinations[1].failed.len(), 1, "{report:#?}");
    assert!(std::fs::read(taking.root().join("f.bin")).unwrap() == std::fs::read(&file).unwrap());
    assert_eq!(
        report.bytes, len as u64,
        "read once, whole, for the receiver that takes it"
    );
    // Handshakes, the `FileBegin` and `Finish`: a few hundred bytes per connection, no chunk.
    assert!(
        proxy.forwarded() < 16 << 10,
        "{} bytes went to the receiver that refused the file",
        proxy.forwarded()
    );
    assert_eq!(
        std::fs::read_dir(refusing.root()).unwrap().count(),
        0,
        "nothing left there"
    );
    taking.stop().await;
    refusing.stop().await;
}

/// Once every destination has failed, the transfer ends (their notes stop) and nothing more is
/// read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_more_is_read_once_every_receiver_has_failed() {
    let src = tempfile::tempdir().unwrap();
    let big = sparse_tib(src.path());
    let mut options = fast_options();
    options.retry_for = std::time::Duration::from_secs(1);
    let report = send(vec![big], crate::common::unused_addr(), options).await;
    assert!(report.destinations[0].error.is_some(), "{report:#?}");
    let budget = fast_options().pipeline.memory_bytes;
    assert!(
        report.bytes <= 2 * budget,
        "read {} bytes with no receiver left",
        report.bytes
    );
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop; `None` without root.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The case as a user meets it: `send` of a 1 TiB file to a receiver whose disk is too small
/// ends at once with exit 1 and the receiver's reason.
#[test]
fn send_of_a_file_that_fits_nowhere_ends_at_once_with_the_reason() {
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_fs) = Tmpfs::mount(&mnt, "16m") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let big = sparse_tib(work.path());
    let (server, addr) = serve(&mnt, &[]);
    let out = tidegate()
        .args(["send", "--json", "--no-progress", "--retry-for", "10s"])
        .arg(&big)
        .args(["--to", &addr])
        .output()
        .unwrap();
    stop(server);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report_line = stdout.lines().last().unwrap();
    let report: serde_json::Value = serde_json::from_str(report_line).unwrap();
    let report = &report["report"];
    let failed = report["destinations"][0]["failed"].to_string();
    assert!(failed.contains("No space left on device"), "{failed}");
    let read = report["bytes"].as_u64().unwrap();
    assert!(read < 1 << 30, "read {read} bytes of a file nobody takes");
    assert!(
        stdout.contains("file_failed"),
        "the event names the failure"
    );
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

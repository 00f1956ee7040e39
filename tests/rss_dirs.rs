//! Peak RSS of `tidegate serve` while one peer sends it 1,000,000 `Dir` frames with 4 KiB
//! paths, all different, in one session: 4 GiB of directory records if the receiver kept them.
//! It keeps at most `--max-dir-bytes` (16 MiB) of them and refuses the rest with a limit
//! error, so its peak stays under the 96 MiB per-end target; then it still serves an honest
//! transfer.

use std::time::Instant;

use tidegate::protocol::{ErrorCode, Frame};

mod common;

use common::process::{mib, serve, stop, succeeds, tidegate, vm_hwm};
use common::wire::{connect, meta};

const FRAMES: u64 = 1_000_000;
const BOUND_BYTES: u64 = 96 << 20;

#[test]
fn a_million_directories_with_4_kib_paths_keep_the_receiver_under_96_mib() {
    let dst = tempfile::tempdir().unwrap();
    // Refused frames change nothing, and a connection that gets nothing done for the idle
    // timeout is closed: this one must be kept to the last frame.
    let (server, addr) = serve(dst.path(), &["--idle-timeout", "1h"]);
    let started = Instant::now();
    let (accepted, refused) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (mut r, mut w) = connect(addr.parse().unwrap(), [1; 16]).await;
            // 20 components of 200 bytes, then one of its own: 4,096 bytes, the longest path
            // accepted (longer than PATH_MAX with the served directory before it: the receiver
            // reaches it from the served directory's descriptor).
            let prefix: Vec<u8> = (0..20)
                .flat_map(|i| {
                    let mut c = vec![b'a' + i as u8; 200];
                    c.push(b'/');
                    c
                })
                .collect();
            let reading = tokio::spawn(async move {
                let (mut refused, mut other) = (0u64, 0u64);
                loop {
                    let frame = match r.next().await {
                        Ok(Some(f)) => f,
                        other => panic!("connection ended before Finished: {other:?}"),
                    };
                    match frame {
                        Frame::Error { code, message, .. } if code == ErrorCode::Limit as u16 => {
                            if refused == 0 {
                                let m = String::from_utf8_lossy(&message);
                                assert!(m.contains("--max-dir-bytes"), "{m}");
                            }
                            refused += 1;
                        }
                        Frame::Finished => return (other, refused),
                        Frame::Error { message, .. } => {
                            panic!("{}", String::from_utf8_lossy(&message))
                        }
                        _ => other += 1,
                    }
                }
            });
            for file in 0..FRAMES {
                let mut path = prefix.clone();
                path.extend_from_slice(format!("{file:0>76}").as_bytes());
                assert_eq!(path.len(), 4096);
                w.queue(&Frame::Dir {
                    file,
                    meta: meta(path, 0),
                })
                .await
                .unwrap();
            }
            w.send(&Frame::Finish).await.unwrap();
            reading.await.unwrap()
        });
    let peak = vm_hwm(&server);
    eprintln!(
        "1,000,000 Dir frames of 4 KiB: {accepted} answered, {refused} refused, receiver peak \
         RSS {:.1} MiB, {:.1} s",
        mib(peak),
        started.elapsed().as_secs_f64()
    );
    assert!(refused > 990_000, "{refused} refused");
    assert!(
        peak < BOUND_BYTES,
        "receiver peak RSS {peak} bytes exceeds {BOUND_BYTES}"
    );
    // It still serves an honest transfer.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("after.txt"), b"still here").unwrap();
    succeeds(
        tidegate()
            .args(["send", "--no-progress", "--to", &addr])
            .arg(src.path().join("after.txt")),
    );
    assert_eq!(
        std::fs::read(dst.path().join("after.txt")).unwrap(),
        b"still here"
    );
    assert!(stop(server).success());
}

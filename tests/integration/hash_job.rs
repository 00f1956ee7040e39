//! `HashJob` end to end on real files: roots equal `blake3::hash` (what b3sum prints) for
//! every edge length, a sparse file past 4 GiB, progress events and cancellation.

use std::io::{Seek, SeekFrom, Write};

use tidegate::{ChunkSize, HashJob, Input, PipelineOptions, Progress, SourceError};

fn data(len: usize) -> Vec<u8> {
    crate::common::data(len, 11)
}

fn opts(chunk: usize) -> PipelineOptions {
    let mut o = HashJob::default_options();
    o.chunk_size = ChunkSize::new(chunk as u64).unwrap();
    o.memory_bytes = (8 * chunk) as u64;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_match_blake3_for_edge_lengths() {
    let c = 16 * 1024;
    let mut lengths = vec![0, 1, 1023, 1024, 1025, c - 1, c, c + 1];
    for n in 1..=7 {
        lengths.extend([(c << n) - 1, c << n, (c << n) + 1]);
    }
    // Past the small-file route too, so both reads and mapped windows are covered.
    lengths.extend([(64 << 10) + 1, 5 << 20, (5 << 20) + 3]);
    let all = data(*lengths.iter().max().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut inputs = Vec::new();
    for (i, &len) in lengths.iter().enumerate() {
        let p = dir.path().join(format!("f{i}"));
        std::fs::write(&p, &all[..len]).unwrap();
        inputs.push(Input::Path(p));
    }
    for chunk in [c, 64 * 1024] {
        let report = HashJob::new(inputs.clone())
            .options(opts(chunk))
            .start()
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(report.files.len(), lengths.len());
        for (f, &len) in report.files.iter().zip(&lengths) {
            let root = f.result.as_ref().unwrap();
            assert_eq!(
                *root,
                blake3::hash(&all[..len]),
                "length {len}, chunk {chunk}"
            );
            assert_eq!(f.bytes, len as u64);
        }
        assert_eq!(report.bytes, lengths.iter().map(|&l| l as u64).sum::<u64>());
    }
}

/// A sparse file past 4 GiB: offsets above 32 bits, and a tree deeper than any other test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_file_past_4_gib() {
    let len: u64 = (4 << 30) + 12_345;
    let marks: [(u64, &[u8]); 3] = [(0, b"start"), (3 << 30, b"middle"), (len - 4, b"end!")];
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(len).unwrap();
    for (at, bytes) in marks {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(bytes).unwrap();
    }
    f.flush().unwrap();
    // The reference streams the same content through blake3's own incremental hasher.
    let mut reference = blake3::Hasher::new();
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    for (at, bytes) in marks {
        while pos < at {
            let n = (at - pos).min(zeros.len() as u64) as usize;
            reference.update(&zeros[..n]);
            pos += n as u64;
        }
        reference.update(bytes);
        pos += bytes.len() as u64;
    }
    assert_eq!(pos, len);
    let report = HashJob::new(vec![Input::Path(f.path().to_path_buf())])
        .start()
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(
        report.files[0].result.as_ref().unwrap(),
        &reference.finalize()
    );
    assert_eq!(report.bytes, len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_events_and_failures_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    std::fs::write(&a, data(3 << 20)).unwrap();
    let missing = dir.path().join("missing");
    let mut job = HashJob::new(vec![Input::Path(a.clone()), Input::Path(missing.clone())]);
    let mut events = job.subscribe();
    let report = job.start().unwrap().wait().await.unwrap();
    let mut seen = Vec::new();
    while let Some(e) = events.recv().await {
        seen.push(e);
    }
    assert!(
        matches!(&seen[0], Progress::FileStarted { file: 0, size: Some(s), .. } if *s == 3 << 20)
    );
    let done = seen
        .iter()
        .position(|e| matches!(e, Progress::FileDone { file: 0, .. }))
        .unwrap();
    let failed = seen
        .iter()
        .position(|e| matches!(e, Progress::FileFailed { file: 1, .. }))
        .unwrap();
    assert!(done < failed);
    match seen.last().unwrap() {
        Progress::Bytes {
            done_bytes,
            files_done,
            total_bytes,
            ..
        } => {
            assert_eq!((*done_bytes, *files_done, *total_bytes), (3 << 20, 2, None));
        }
        other => panic!("the last event is the final byte count, got {other:?}"),
    }
    assert_eq!(report.failures(), 1);
    assert!(
        matches!(&report.files[1].result, Err(SourceError::Open { path, .. }) if *path == missing)
    );
}

/// Cancelling must end the job even while the reader is blocked on a pipe that never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_job_even_when_a_read_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(writer_path)
            .unwrap();
        w.write_all(b"some bytes, then silence").unwrap();
        let _ = release_rx.recv();
    });
    let mut job = HashJob::new(vec![Input::Path(fifo.clone()), Input::Path(fifo.clone())]);
    let mut events = job.subscribe();
    let handle = job.start().unwrap();
    assert!(matches!(
        events.recv().await,
        Some(Progress::FileStarted { file: 0, .. })
    ));
    handle.cancel();
    let report = handle.wait().await.unwrap();
    assert!(report.cancelled);
    assert_eq!(report.files.len(), 1);
    assert!(
        matches!(&report.files[0].result, Err(SourceError::Cancelled { path }) if *path == fifo)
    );
    drop(release_tx);
    writer.join().unwrap();
}

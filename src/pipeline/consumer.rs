//! The consuming side of the pipeline: [`Pipeline`] starts the producer (`producer.rs`) and
//! turns its queue into an ordered stream of [`Event`]s for the job that consumes them.
//!
//! The producer passes, for each chunk, a `oneshot` receiver of its hash down a bounded
//! channel, in order. [`Pipeline::next`] awaits those receivers in order, so hashing runs in
//! parallel while events come out in file and chunk order, and it assembles each file's root.

use std::path::PathBuf;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::budget::Budget;
use super::chunk::Chunk;
use super::hash::{HashPool, RootBuilder};
use super::options::PipelineOptions;
use crate::source::read::BufPool;
use crate::source::SourceError;

/// What the pipeline produces, in input order; each file's chunks come between its
/// `FileStarted` and its `FileDone` or `FileFailed`.
#[derive(Debug)]
pub(crate) enum Event<S> {
    /// A file was opened (or failed to open; `FileFailed` follows).
    FileStarted {
        file: u64,
        spec: S,
        size: Option<u64>,
    },
    /// A hashed chunk. Dropping it gives its bytes back to the budget.
    Chunk(Chunk),
    /// A file ended; `root` is its BLAKE3 hash.
    FileDone {
        file: u64,
        len: u64,
        root: blake3::Hash,
    },
    /// A file failed. No more chunks of it follow.
    FileFailed { file: u64, error: SourceError },
    /// A spec with nothing to read, in its place in the order.
    Entry { file: u64, spec: S },
}

use super::producer::{Item, Producer, QUEUE};
pub(crate) use super::readable::Readable;
use super::skip::Skips;

struct Current {
    file: u64,
    /// For errors found by the consumer (hashing), which has no source to ask.
    path: PathBuf,
    root: RootBuilder,
    failed: bool,
}

/// A running pipeline. Dropping it cancels the producer.
pub(crate) struct Pipeline<S> {
    rx: mpsc::Receiver<Item<S>>,
    /// The rest of an `Item::Whole` taken apart (its chunk and end), taken before `rx`.
    unpacked: std::collections::VecDeque<Item<S>>,
    /// A chunk taken from the queue whose hash is still being awaited. Kept here, not in a
    /// local, so that `next` is cancel-safe: a caller's `select!` may drop the future.
    hashing: Option<oneshot::Receiver<Result<Chunk, SourceError>>>,
    current: Option<Current>,
    cancel: CancellationToken,
    producer: Option<std::thread::JoinHandle<()>>,
    /// Shared with the producer.
    skips: Skips,
}

impl<S: Readable> Pipeline<S> {
    /// Starts reading `specs` in order, numbering them from 0. Must be called inside a tokio
    /// runtime.
    ///
    /// `options` must have been validated.
    pub(crate) fn spawn(
        specs: impl Iterator<Item = S> + Send + 'static,
        options: &PipelineOptions,
        pool: HashPool,
        budget: Budget,
        cancel: &CancellationToken,
    ) -> std::io::Result<Self> {
        Self::spawn_numbered((0u64..).zip(specs), options, pool, budget, cancel)
    }

    /// Like [`Pipeline::spawn`], with the caller's file numbers (a second pass over some
    /// files of a first one keeps their numbers).
    pub(crate) fn spawn_numbered(
        specs: impl Iterator<Item = (u64, S)> + Send + 'static,
        options: &PipelineOptions,
        pool: HashPool,
        budget: Budget,
        cancel: &CancellationToken,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let cancel = cancel.child_token();
        let producer = Producer {
            tx,
            budget,
            pool,
            cancel: cancel.clone(),
            chunk_len: options.chunk_size.bytes(),
            window_len: options.window_bytes(),
            bufs: BufPool::new(
                options.chunk_size.bytes(),
                (options.memory_bytes / options.chunk_size.bytes() as u64).min(64) as usize,
            ),
            runtime: Handle::current(),
            skips: Skips::default(),
        };
        let skips = producer.skips.clone();
        let handle = std::thread::Builder::new()
            .name("tidegate-source".into())
            .spawn(move || producer.run(specs))?;
        Ok(Pipeline {
            rx,
            unpacked: std::collections::VecDeque::with_capacity(2),
            hashing: None,
            current: None,
            cancel,
            producer: Some(handle),
            skips,
        })
    }

    /// The handle that stops the reading of a file at its next chunk ([`Skips::skip`]); its
    /// chunks already read still come out, and the file ends with [`SourceError::Skipped`].
    pub(crate) fn skips(&self) -> Skips {
        self.skips.clone()
    }

    /// The next event, or `None` when every input is done (or the job was cancelled).
    ///
    /// Cancel-safe: if the future is dropped before it completes, no event is lost.
    pub(crate) async fn next(&mut self) -> Option<Event<S>> {
        loop {
            if let Some(rx) = self.hashing.as_mut() {
                let result = rx.await;
                self.hashing = None;
                if let Some(event) = self.on_hashed(result) {
                    return Some(event);
                }
                continue;
            }
            let item = match self.unpacked.pop_front() {
                Some(item) => item,
                None => {
                    let Some(item) = self.rx.recv().await else {
                        if let Some(producer) = self.producer.take() {
                            // The producer dropped its sender, so it is returning; this join
                            // does not wait for any work.
                            let _ = producer.join();
                        }
                        return None;
                    };
                    item
                }
            };
            let item = match item {
                Item::Whole {
                    file,
                    spec,
                    size,
                    chunk,
                    result,
                } => {
                    if let Some(rx) = chunk {
                        self.unpacked.push_back(Item::Chunk { rx });
                    }
                    self.unpacked.push_back(Item::End {
                        file,
                        result: result.map_err(|e| *e),
                    });
                    Item::Start { file, spec, size }
                }
                other => other,
            };
            match item {
                Item::Entry { file, spec } => return Some(Event::Entry { file, spec }),
                Item::Start { file, spec, size } => {
                    self.current = Some(Current {
                        file,
                        path: spec
                            .input()
                            .map(|i| i.display_path().to_path_buf())
                            .unwrap_or_default(),
                        root: RootBuilder::new(),
                        failed: false,
                    });
                    return Some(Event::FileStarted { file, spec, size });
                }
                Item::Chunk { rx } => self.hashing = Some(rx),
                Item::Whole { .. } => unreachable!("taken apart above"),
                Item::End { file, result } => {
                    let Some(current) = self.current.take() else {
                        continue;
                    };
                    if current.failed {
                        continue;
                    }
                    return Some(match result {
                        Ok(len) => match current.root.finish() {
                            Ok(root) => Event::FileDone { file, len, root },
                            Err(e) => Event::FileFailed {
                                file,
                                error: SourceError::Read {
                                    path: current.path,
                                    offset: len,
                                    source: std::io::Error::other(e),
                                },
                            },
                        },
                        Err(error) => Event::FileFailed { file, error },
                    });
                }
            }
        }
    }
}

impl<S> Pipeline<S> {
    /// Turns a hashed chunk into its event; `None` when the chunk is dropped (its file
    /// already failed).
    fn on_hashed(
        &mut self,
        result: Result<Result<Chunk, SourceError>, oneshot::error::RecvError>,
    ) -> Option<Event<S>> {
        let current = self.current.as_mut()?;
        if current.failed {
            return None; // dropping the chunk returns its budget
        }
        let error = match result {
            Ok(Ok(chunk)) => match current.root.push(chunk.digest) {
                Ok(()) => return Some(Event::Chunk(chunk)),
                Err(e) => SourceError::Read {
                    path: current.path.clone(),
                    offset: chunk.offset,
                    source: std::io::Error::other(e),
                },
            },
            Ok(Err(e)) => e,
            Err(_) => SourceError::Cancelled {
                path: current.path.clone(),
            },
        };
        current.failed = true;
        Some(Event::FileFailed {
            file: current.file,
            error,
        })
    }
}

impl<S> Drop for Pipeline<S> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::chunk::ChunkSize;
    use crate::source::Input;
    use std::io::Write;
    use std::time::Duration;

    fn file_of(len: usize, seed: u8) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        f.write_all(&data).unwrap();
        f
    }

    fn spawn(
        paths: &[&std::path::Path],
        opts: &PipelineOptions,
        budget: &Budget,
    ) -> Pipeline<Input> {
        let inputs: Vec<Input> = paths.iter().map(|p| Input::Path(p.to_path_buf())).collect();
        let cancel = CancellationToken::new();
        Pipeline::spawn(
            inputs.into_iter(),
            opts,
            HashPool::default(),
            budget.clone(),
            &cancel,
        )
        .unwrap()
    }

    fn options(memory: u64, chunk: u64) -> PipelineOptions {
        PipelineOptions {
            memory_bytes: memory,
            chunk_size: ChunkSize::new(chunk).unwrap(),
            ..PipelineOptions::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_consumer_stalls_the_reader_within_the_budget() {
        let f = file_of(16 << 20, 1);
        let opts = options(4 << 20, 1 << 20);
        let budget = Budget::new(4 << 20);
        let mut pipe = spawn(&[f.path()], &opts, &budget);
        assert!(matches!(pipe.next().await, Some(Event::FileStarted { .. })));
        let mut held = Vec::new();
        for _ in 0..4 {
            match pipe.next().await {
                Some(Event::Chunk(c)) => held.push(c),
                other => panic!("expected a chunk, got {other:?}"),
            }
        }
        assert_eq!(budget.in_flight_bytes(), 4 << 20);
        // With the whole budget held, no fifth chunk can be read, however long we wait.
        let stalled = tokio::time::timeout(Duration::from_millis(300), pipe.next()).await;
        assert!(stalled.is_err(), "the reader got ahead of the budget");
        // Releasing one chunk lets exactly the reader continue.
        held.remove(0);
        assert!(matches!(pipe.next().await, Some(Event::Chunk(_))));
        drop(held);
        let mut rest = 0;
        loop {
            match pipe.next().await {
                Some(Event::Chunk(c)) => rest += c.data.len(),
                Some(Event::FileDone { len, .. }) => {
                    assert_eq!(len, 16 << 20);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(rest, 11 << 20);
        assert!(pipe.next().await.is_none());
        assert_eq!(budget.in_flight_bytes(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_truncated_mid_read_fails_alone() {
        let victim = file_of(32 << 20, 2);
        let other = file_of(3 << 20, 3);
        let opts = options(2 << 20, 256 << 10);
        let mut pipe = spawn(&[victim.path(), other.path()], &opts, &Budget::new(2 << 20));
        let mut truncated = false;
        let mut failures = Vec::new();
        let mut done = Vec::new();
        while let Some(event) = pipe.next().await {
            match event {
                Event::Chunk(c) if c.file == 0 && !truncated => {
                    victim.as_file().set_len(100_000).unwrap();
                    truncated = true;
                }
                Event::Chunk(_) | Event::FileStarted { .. } | Event::Entry { .. } => {}
                Event::FileFailed { file, error } => failures.push((file, error)),
                Event::FileDone { file, root, .. } => done.push((file, root)),
            }
        }
        assert_eq!(failures.len(), 1, "{failures:?}");
        let (file, error) = &failures[0];
        assert_eq!(*file, 0);
        match error {
            SourceError::Truncated {
                path, expected_len, ..
            } => {
                assert_eq!(path, victim.path());
                assert_eq!(*expected_len, 32 << 20);
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
        let expected = blake3::hash(&std::fs::read(other.path()).unwrap());
        assert_eq!(done, vec![(1, expected)]);
    }

    /// `next` keeps the chunk it is awaiting when a caller's `select!` drops its future: a
    /// chunk lost there would send a file with missing bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn next_is_cancel_safe() {
        let f = file_of((8 << 20) + 777, 4);
        let opts = options(4 << 20, 256 << 10);
        let mut pipe = spawn(&[f.path()], &opts, &Budget::new(4 << 20));
        let (mut bytes, mut cancelled, mut root) = (0, 0, None);
        loop {
            // Poll `next` once; if it is not ready, drop it mid-await, as a `select!` would.
            let polled = tokio::select! {
                biased;
                event = pipe.next() => Ok(event),
                () = std::future::ready(()) => Err(()),
            };
            match polled {
                Err(()) => {
                    cancelled += 1;
                    tokio::task::yield_now().await;
                }
                Ok(Some(Event::Chunk(c))) => bytes += c.data.len(),
                Ok(Some(Event::FileDone { root: r, .. })) => root = Some(r),
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
        assert!(cancelled > 0, "the test never interrupted next()");
        assert_eq!(bytes, (8 << 20) + 777);
        assert_eq!(root, Some(blake3::hash(&std::fs::read(f.path()).unwrap())));
    }

    /// Small files travel from the reading thread as one message each; the events still come
    /// out one by one and in order: start, chunk (none for an empty file), done; a file that
    /// cannot be opened is started and failed, and large files around them are unaffected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_files_give_the_same_events_in_order() {
        let small = file_of(5_000, 5);
        let empty = file_of(0, 6);
        let large = file_of((1 << 20) + 3, 7);
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let opts = options(4 << 20, 256 << 10);
        let mut pipe = spawn(
            &[
                small.path(),
                &missing,
                empty.path(),
                large.path(),
                small.path(),
            ],
            &opts,
            &Budget::new(4 << 20),
        );
        let mut seen = Vec::new();
        while let Some(event) = pipe.next().await {
            seen.push(match event {
                Event::FileStarted { file, .. } => format!("start {file}"),
                Event::Chunk(c) => format!("chunk {} {}", c.file, c.data.len()),
                Event::FileDone { file, len, root } => {
                    let want = match file {
                        2 => blake3::hash(b""),
                        3 => blake3::hash(&std::fs::read(large.path()).unwrap()),
                        _ => blake3::hash(&std::fs::read(small.path()).unwrap()),
                    };
                    assert_eq!(root, want, "file {file}");
                    format!("done {file} {len}")
                }
                Event::FileFailed { file, .. } => format!("failed {file}"),
                Event::Entry { file, .. } => format!("entry {file}"),
            });
        }
        let large_chunks =
            std::iter::repeat_n(format!("chunk 3 {}", 256 << 10), 4).chain(["chunk 3 3".into()]);
        let mut want: Vec<String> = vec![
            "start 0",
            "chunk 0 5000",
            "done 0 5000",
            "start 1",
            "failed 1",
            "start 2",
            "done 2 0",
            "start 3",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        want.extend(large_chunks);
        want.extend(["done 3 1048579", "start 4", "chunk 4 5000", "done 4 5000"].map(String::from));
        assert_eq!(seen, want);
    }
}

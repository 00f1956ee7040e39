//! The producing side of the pipeline: a plain thread that opens each input, waits for
//! budget, reads chunks (through mapped windows or positioned reads) and hands each one to the
//! rayon pool to be hashed, passing the consumer (`consumer.rs`) a receiver for the result.
//!
//! It is a plain thread because reads of pipes and positioned reads block; it waits for budget
//! on the tokio runtime's handle, so backpressure reaches it directly.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::budget::Budget;
use super::chunk::Chunk;
use super::hash::{digest, digest_whole, HashPool};
use super::readable::Readable;
use super::skip::Skips;
use crate::source::read::BufPool;
use crate::source::{FileSource, LastDir, RawChunk, SourceError};

/// Capacity of the producer-to-consumer queue. It only holds small records (the chunk data is
/// owned by rayon jobs and bounded by the budget), so this just smooths scheduling.
pub(super) const QUEUE: usize = 64;

pub(super) enum Item<S> {
    Entry {
        file: u64,
        spec: S,
    },
    Start {
        file: u64,
        spec: S,
        size: Option<u64>,
    },
    Chunk {
        rx: oneshot::Receiver<Result<Chunk, SourceError>>,
    },
    End {
        file: u64,
        result: Result<u64, SourceError>,
    },
    /// `Start`, at most one `Chunk` and `End` of a file of at most one small chunk, in one
    /// message: a tree of small files would otherwise cost three cross-thread wake-ups each.
    Whole {
        file: u64,
        spec: S,
        size: Option<u64>,
        chunk: Option<oneshot::Receiver<Result<Chunk, SourceError>>>,
        /// Boxed: an error is rare, and every queue slot is as large as the largest item.
        result: Result<u64, Box<SourceError>>,
    },
}

pub(super) struct Producer<S> {
    pub(super) tx: mpsc::Sender<Item<S>>,
    pub(super) budget: Budget,
    pub(super) pool: HashPool,
    pub(super) cancel: CancellationToken,
    pub(super) chunk_len: usize,
    pub(super) window_len: u64,
    pub(super) bufs: Arc<BufPool>,
    pub(super) runtime: Handle,
    /// Files not to read further.
    pub(super) skips: Skips,
}

/// Chunks up to this size are hashed on the reading thread instead of the pool.
const INLINE_HASH_MAX: usize = 64 * 1024;

impl<S: Readable> Producer<S> {
    pub(super) fn run(self, specs: impl Iterator<Item = (u64, S)>) {
        let mut dirs = LastDir::default();
        for (file, spec) in specs {
            if self.cancel.is_cancelled() {
                break;
            }
            let Some(input) = spec.input() else {
                if self.tx.blocking_send(Item::Entry { file, spec }).is_err() {
                    return;
                }
                continue;
            };
            let opened = FileSource::open(
                input,
                spec.walked_len().map(|len| (len, &mut dirs)),
                self.chunk_len,
                self.window_len,
                Arc::clone(&self.bufs),
            );
            let size = opened.as_ref().ok().and_then(FileSource::len_hint);
            let small = size.is_some_and(|s| s <= INLINE_HASH_MAX.min(self.chunk_len) as u64);
            let source = match opened {
                Ok(source) => source,
                Err(e) => {
                    if self.send_whole(file, spec, size, None, Err(e)).is_err() {
                        return;
                    }
                    continue;
                }
            };
            if !small {
                if self
                    .tx
                    .blocking_send(Item::Start { file, spec, size })
                    .is_err()
                {
                    return;
                }
                let result = self.read_file(file, source, &mut |rx| {
                    self.tx.blocking_send(Item::Chunk { rx }).is_ok()
                });
                if self.tx.blocking_send(Item::End { file, result }).is_err() {
                    return;
                }
                continue;
            }
            // One message for the whole file; should it yield more than one chunk after all,
            // the start and the first chunk go out before the second.
            let mut start = Some(spec);
            let mut held = None;
            let result = self.read_file(file, source, &mut |rx| {
                if start.is_some() && held.is_none() {
                    held = Some(rx);
                    return true;
                }
                if let Some(spec) = start.take() {
                    if self
                        .tx
                        .blocking_send(Item::Start { file, spec, size })
                        .is_err()
                    {
                        return false;
                    }
                }
                if let Some(first) = held.take() {
                    if self.tx.blocking_send(Item::Chunk { rx: first }).is_err() {
                        return false;
                    }
                }
                self.tx.blocking_send(Item::Chunk { rx }).is_ok()
            });
            let sent = match start {
                Some(spec) => self.send_whole(file, spec, size, held, result),
                None => self
                    .tx
                    .blocking_send(Item::End { file, result })
                    .map_err(drop),
            };
            if sent.is_err() {
                return;
            }
        }
    }

    fn send_whole(
        &self,
        file: u64,
        spec: S,
        size: Option<u64>,
        chunk: Option<oneshot::Receiver<Result<Chunk, SourceError>>>,
        result: Result<u64, SourceError>,
    ) -> Result<(), ()> {
        let result = result.map_err(Box::new);
        self.tx
            .blocking_send(Item::Whole {
                file,
                spec,
                size,
                chunk,
                result,
            })
            .map_err(drop)
    }

    /// Reads one file to its end, handing each chunk's result to `emit` (false: the consumer
    /// is gone). Returns its length.
    fn read_file(
        &self,
        file: u64,
        mut source: FileSource,
        emit: &mut dyn FnMut(oneshot::Receiver<Result<Chunk, SourceError>>) -> bool,
    ) -> Result<u64, SourceError> {
        let path: Arc<PathBuf> = Arc::new(source.path().to_path_buf());
        let expected_len = source.len_hint();
        let mut index = 0;
        while let Some(want) = source.next_request() {
            // A file's first chunk follows the check in `run`.
            if index > 0 && self.cancel.is_cancelled() {
                return Err(SourceError::Cancelled {
                    path: path.to_path_buf(),
                });
            }
            if index > 0 && self.skips.contains(file) {
                return Err(SourceError::Skipped {
                    path: path.to_path_buf(),
                });
            }
            // Entering the runtime to wait costs more than reading a small file: only when
            // the budget is full.
            let permit = self.budget.try_acquire(want).or_else(|| {
                self.runtime.block_on(async {
                    tokio::select! {
                        permit = self.budget.acquire(want) => Some(permit),
                        () = self.cancel.cancelled() => None,
                    }
                })
            });
            let Some(permit) = permit else {
                return Err(SourceError::Cancelled {
                    path: path.to_path_buf(),
                });
            };
            // A wait for budget may have outlasted every destination's interest in the file.
            if index > 0 && self.skips.contains(file) {
                return Err(SourceError::Skipped {
                    path: path.to_path_buf(),
                });
            }
            let Some(raw) = source.read_next(want)? else {
                break;
            };
            let (tx, rx) = oneshot::channel();
            let chunk_path = Arc::clone(&path);
            // A small chunk is hashed right here: waking a pool thread for it costs more than
            // the hashing (tens of microseconds), and a tree of small files is all such chunks.
            let inline = raw.data.len() <= INLINE_HASH_MAX;
            let job = move || {
                let path = chunk_path;
                let RawChunk {
                    offset,
                    data,
                    watch,
                    release,
                } = raw;
                let digest = if offset == 0 && expected_len == Some(data.len() as u64) {
                    digest_whole(&data)
                } else {
                    digest(offset, &data)
                };
                let result = if watch.is_some_and(|w| w.poisoned()) {
                    Err(SourceError::Truncated {
                        path: path.to_path_buf(),
                        offset,
                        expected_len: expected_len.unwrap_or(0),
                        actual_len: std::fs::metadata(path.as_path()).map_or(0, |m| m.len()),
                    })
                } else {
                    Ok(Chunk {
                        file,
                        index,
                        offset,
                        data,
                        digest,
                        permit,
                        release,
                    })
                };
                // The receiver is gone only if the consumer stopped; the chunk is dropped.
                let _ = tx.send(result);
            };
            if inline {
                job();
            } else {
                self.pool.spawn(job);
            }
            if !emit(rx) {
                return Err(SourceError::Cancelled {
                    path: path.to_path_buf(),
                });
            }
            index += 1;
        }
        source.finish()
    }
}

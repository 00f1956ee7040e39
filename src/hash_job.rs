//! [`HashJob`]: hash files and streams through the bounded pipeline (`tidegate hash`).
//!
//! It owns the job-level concerns: turning pipeline events into [`Progress`] events at a
//! bounded rate, cancellation, and the per-file [`HashReport`]. Reading and hashing are the
//! pipeline's; printing is the CLI's.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pipeline::budget::Budget;
use crate::pipeline::chunk::ChunkSize;
use crate::pipeline::hash::HashPool;
use crate::pipeline::options::{OptionsError, PipelineOptions};
use crate::pipeline::{Event, Pipeline};
use crate::progress::{Progress, Ticker};
use crate::source::{Input, SourceError};

/// The default chunk size for hashing (16 MiB).
const HASH_CHUNK: ChunkSize = match ChunkSize::new_const(16 * 1024 * 1024) {
    Some(c) => c,
    None => ChunkSize::DEFAULT,
};

/// How many progress events may wait for a slow subscriber before the job waits for it.
const PROGRESS_QUEUE: usize = 256;

/// Hashes inputs in order. Build it, optionally [`subscribe`](Self::subscribe), then
/// [`start`](Self::start).
#[derive(Debug)]
pub struct HashJob {
    inputs: Vec<Input>,
    options: PipelineOptions,
    progress: Option<mpsc::Sender<Progress>>,
    cancel: CancellationToken,
}

/// The outcome for one input.
#[derive(Debug)]
pub struct FileDigest {
    /// The input as given.
    pub input: Input,
    /// Bytes hashed (up to the failure, for a failed file).
    pub bytes: u64,
    /// The BLAKE3 root, or why there is none.
    pub result: Result<blake3::Hash, SourceError>,
}

/// What a finished job did.
#[derive(Debug)]
#[non_exhaustive]
pub struct HashReport {
    /// One entry per input that was reached, in input order.
    pub files: Vec<FileDigest>,
    /// Bytes hashed in all files.
    pub bytes: u64,
    /// Wall time from start to end.
    pub elapsed: Duration,
    /// Whether the job was cancelled before reaching every input.
    pub cancelled: bool,
}

impl HashReport {
    /// The number of files that failed.
    pub fn failures(&self) -> usize {
        self.files.iter().filter(|f| f.result.is_err()).count()
    }
}

/// A running [`HashJob`].
#[derive(Debug)]
pub struct HashHandle {
    cancel: CancellationToken,
    task: JoinHandle<HashReport>,
}

impl HashJob {
    /// The default options for hashing: [`PipelineOptions::default`] with a 48 MiB budget
    /// and 16 MiB chunks. Large chunks mean few cross-thread wake-ups per byte, which shows
    /// when both cores hash at AVX-512 speed; three of them in flight keep every core busy
    /// while the reader waits for budget. Hashing has no network to absorb, so the budget
    /// stays below sending's and peak RSS near 54 MiB.
    pub fn default_options() -> PipelineOptions {
        PipelineOptions {
            memory_bytes: 48 * 1024 * 1024,
            chunk_size: HASH_CHUNK,
            ..PipelineOptions::default()
        }
    }

    /// A job over `inputs`, with [`default_options`](Self::default_options).
    pub fn new(inputs: Vec<Input>) -> Self {
        HashJob {
            inputs,
            options: Self::default_options(),
            progress: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Replaces the options.
    pub fn options(mut self, options: PipelineOptions) -> Self {
        self.options = options;
        self
    }

    /// Uses `cancel` (or a child of it) to stop the job from outside.
    pub fn cancel_token(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Returns a stream of progress events. Without a subscriber no events are made. The
    /// receiver must be drained or dropped: when it holds 256 unread events, the job waits.
    pub fn subscribe(&mut self) -> mpsc::Receiver<Progress> {
        let (tx, rx) = mpsc::channel(PROGRESS_QUEUE);
        self.progress = Some(tx);
        rx
    }

    /// Starts hashing on the current tokio runtime.
    ///
    /// # Errors
    /// [`OptionsError`] when the options do not work together or the hashing threads cannot
    /// start.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn start(self) -> Result<HashHandle, OptionsError> {
        self.options.validate()?;
        let pool = HashPool::new(self.options.threads)
            .map_err(|e| OptionsError::ThreadPool(e.to_string()))?;
        let budget = Budget::new(usize::try_from(self.options.memory_bytes).unwrap_or(usize::MAX));
        let total_bytes = known_total(&self.inputs);
        let pipeline = Pipeline::spawn(
            self.inputs.into_iter(),
            &self.options,
            pool,
            budget,
            &self.cancel,
        )
        .map_err(|e| OptionsError::ThreadPool(e.to_string()))?;
        let consumer = Consumer {
            progress: self.progress,
            ticker: Ticker::new(self.options.progress_interval),
            total_bytes,
            started: Instant::now(),
            done_bytes: 0,
            files_done: 0,
            files: Vec::new(),
        };
        let cancel = self.cancel.clone();
        let task = tokio::spawn(consumer.run(pipeline, self.cancel));
        Ok(HashHandle { cancel, task })
    }
}

/// The sum of the inputs' sizes if they are all regular files, for progress totals.
fn known_total(inputs: &[Input]) -> Option<u64> {
    inputs.iter().try_fold(0u64, |sum, input| match input {
        Input::Path(p) => std::fs::metadata(p)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| sum + m.len()),
        Input::Stdin | Input::Stream(_) => None,
    })
}

impl HashHandle {
    /// A token that cancels the job when cancelled (for signal handlers, UI buttons).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Asks the job to stop; [`wait`](Self::wait) then returns what was done.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the job to end.
    ///
    /// # Errors
    /// Only if the job's task panicked or was aborted by the runtime shutting down.
    pub async fn wait(self) -> Result<HashReport, tokio::task::JoinError> {
        self.task.await
    }
}

struct Consumer {
    progress: Option<mpsc::Sender<Progress>>,
    ticker: Ticker,
    total_bytes: Option<u64>,
    started: Instant,
    done_bytes: u64,
    files_done: u64,
    files: Vec<Pending>,
}

/// A file's outcome while the job runs; `result` is `None` until its end.
struct Pending {
    input: Input,
    bytes: u64,
    result: Option<Result<blake3::Hash, SourceError>>,
}

impl Consumer {
    async fn run(mut self, mut pipeline: Pipeline<Input>, cancel: CancellationToken) -> HashReport {
        loop {
            // Cancellation must not wait for the producer: it may be blocked reading a pipe.
            let owed = self.progress.as_ref().and(self.ticker.owed());
            let event = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                event = pipeline.next() => event,
                // The count the rate limit held back, sent even if a read stalls after it.
                () = crate::progress::sleep_until(owed), if owed.is_some() => {
                    self.tick(false).await;
                    continue;
                }
            };
            let Some(event) = event else { break };
            match event {
                Event::FileStarted { file, spec, size } => {
                    self.emit(|| Progress::FileStarted {
                        file,
                        path: spec.to_string(),
                        size,
                    })
                    .await;
                    self.files.push(Pending {
                        input: spec,
                        bytes: 0,
                        result: None,
                    });
                }
                Event::Chunk(chunk) => {
                    let len = chunk.data.len() as u64;
                    drop(chunk);
                    self.done_bytes += len;
                    if let Some(f) = self.files.last_mut() {
                        f.bytes += len;
                    }
                    self.tick(false).await;
                }
                Event::FileDone { file, len, root } => {
                    if let Some(f) = self.files.last_mut() {
                        f.bytes = len;
                        f.result = Some(Ok(root));
                        self.files_done += 1;
                        let path = f.input.to_string();
                        self.emit(|| Progress::FileDone {
                            file,
                            path,
                            bytes: len,
                            blake3: root.to_hex().to_string(),
                        })
                        .await;
                    }
                }
                Event::Entry { .. } => {}
                Event::FileFailed { file, error } => {
                    if let Some(f) = self.files.last_mut() {
                        let path = f.input.to_string();
                        let message = error.to_string();
                        f.result = Some(Err(error));
                        self.files_done += 1;
                        self.emit(|| Progress::FileFailed {
                            file,
                            path,
                            error: message,
                        })
                        .await;
                    }
                }
            }
        }
        self.tick(true).await;
        // A file whose end never came was cut off by cancellation.
        let files = self
            .files
            .into_iter()
            .map(|f| FileDigest {
                result: f.result.unwrap_or_else(|| {
                    Err(SourceError::Cancelled {
                        path: f.input.display_path().to_path_buf(),
                    })
                }),
                input: f.input,
                bytes: f.bytes,
            })
            .collect();
        HashReport {
            files,
            bytes: self.done_bytes,
            elapsed: self.started.elapsed(),
            cancelled: cancel.is_cancelled(),
        }
    }

    async fn emit(&self, event: impl FnOnce() -> Progress) {
        if let Some(tx) = &self.progress {
            // A dropped subscriber just means nobody is listening any more.
            let _ = tx.send(event()).await;
        }
    }

    /// Sends a byte-count event if the interval has passed, or always when `last`.
    async fn tick(&mut self, last: bool) {
        if self.progress.is_none() {
            return;
        }
        if !self.ticker.due(last) {
            return;
        }
        let event = Progress::Bytes {
            done_bytes: self.done_bytes,
            total_bytes: self.total_bytes,
            files_done: self.files_done,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        };
        self.emit(|| event).await;
    }
}

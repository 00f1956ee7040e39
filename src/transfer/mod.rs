//! [`Transfer`]: the library API for sending files and trees to one or more receivers. The
//! CLI's `send` and `bench`, and the Tauri adapter, use only this.
//!
//! A transfer walks its sources (sending starts while the walk goes on), reads and hashes
//! them once through the bounded pipeline, and fans every chunk out to each destination. A
//! chunk's memory (its budget permit) is released when every destination has acknowledged
//! it, so a slow destination slows the reader instead of growing memory.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pipeline::budget::Budget;
use crate::pipeline::consumer::Readable;
use crate::pipeline::hash::HashPool;
use crate::pipeline::options::{OptionsError, PipelineOptions};
use crate::pipeline::Pipeline;
use crate::progress::Progress;
use crate::protocol::handshake::{random, Key};
use crate::source::walk::{self, Entry, EntryKind, WalkError};
use crate::source::Input;

mod fanout;
mod tracker;

use fanout::{run, Shared};

/// Sending options. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransferOptions {
    /// Memory budget, chunk size, hashing threads, progress rate. Default
    /// [`PipelineOptions::default`]: 64 MiB, 1 MiB chunks.
    pub pipeline: PipelineOptions,
    /// TCP connections per destination. Default 4.
    pub streams: usize,
    /// The pre-shared key. Default: the empty passphrase.
    pub key: Key,
    /// How long a destination may stay unreachable (from its first failure in a row) before
    /// it fails. Default 60 s.
    pub retry_for: Duration,
    /// Timeout of one connection attempt (TCP connect plus handshake). Default 10 s.
    pub connect_timeout: Duration,
    /// With requests outstanding, a connection silent for this long is dropped and
    /// redialled. Default 60 s (a receiver may be flushing a large batch).
    pub reply_timeout: Duration,
    /// Send symlinks as links. Default `false`: skip them with a warning.
    pub links: bool,
    /// Keep every entry's [`FileReport`] for [`Report::files`]. Default `false`: nothing is
    /// then kept per entry once every destination confirmed it, so memory does not grow with
    /// the number of files (about 200 bytes each otherwise); the [`Progress::FileDone`]
    /// events carry the same path, size and root as each entry is done.
    pub file_reports: bool,
    /// How to reach `s3://` destinations. Default: empty; the CLI reads the `AWS_*`
    /// variables ([`S3Options::from_env`](crate::objstore::S3Options::from_env)).
    #[cfg(feature = "s3")]
    pub s3: crate::objstore::S3Options,
    /// Count the sources' bytes on a thread of their own while sending, so that
    /// [`Progress::Bytes`] can carry a total (and a progress bar an ETA) once the count is
    /// done. It costs one more `stat` per file. Default `true`.
    pub count_total: bool,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions {
            pipeline: PipelineOptions::default(),
            streams: 4,
            key: Key::default(),
            retry_for: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(60),
            links: false,
            file_reports: false,
            #[cfg(feature = "s3")]
            s3: crate::objstore::S3Options::default(),
            count_total: true,
        }
    }
}

/// Why a transfer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Bad options.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// Nothing to send, or nowhere to send it.
    #[error("{0}")]
    Usage(&'static str),
    /// Two sources that would put something at the same path of the destination.
    #[error(transparent)]
    Names(#[from] crate::source::walk::NameClash),
    /// A destination that is not `HOST:PORT`.
    #[error(transparent)]
    Destination(#[from] crate::AddressError),
    /// A destination that is not a valid `s3://BUCKET/PREFIX`.
    #[cfg(feature = "s3")]
    #[error(transparent)]
    ObjectStore(#[from] crate::objstore::target::TargetError),
    /// A thread could not be started, or randomness was unavailable.
    #[error("cannot start: {0}")]
    Start(#[from] std::io::Error),
}

/// One file's result (the same at every destination that received it).
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Relative path at the destination.
    pub path: String,
    /// Bytes.
    pub bytes: u64,
    /// BLAKE3 root in hex (empty for directories and links).
    pub blake3: String,
}

/// One destination's result.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationReport {
    /// The address as given.
    pub address: String,
    /// Entries confirmed durable.
    pub files_done: u64,
    /// Entries that failed, with why.
    pub failed: Vec<(String, String)>,
    /// Chunk bytes sent and acknowledged.
    pub bytes: u64,
    /// Chunk bytes not sent because the destination already had them verified from an
    /// interrupted transfer of the same file (see the resume journal in `docs/PROTOCOL.md`).
    pub resumed: u64,
    /// Chunk bytes sent more than once: unanswered when a connection dropped, or read again
    /// from the source for a receiver that had lost them (it restarted).
    pub resent: u64,
    /// Connections that dropped and were redialled.
    pub reconnects: u64,
    /// Times the receiver lost this transfer's state (a restart, seen as a new incarnation
    /// in its `Welcome`) and the transfer went on by sending again what it lacked.
    pub restarts: u64,
    /// Set when the destination failed as a whole (unreachable past the deadline, wrong key).
    pub error: Option<String>,
    /// What kind of failure `error` is, for a front end that acts on it.
    pub failure: Option<DestinationFailure>,
    /// What TLS negotiated with this destination; `None` if no connection was made.
    pub tls: Option<crate::tls::Negotiated>,
    /// How the receiver was authenticated.
    pub authentication: Authentication,
    /// Files not sent because the destination had them already: for an object store, an
    /// object of the same size whose `blake3` metadata equals the file's root.
    pub already_there: u64,
    /// What the destination cannot hold, said once (an object store's empty directories and
    /// symlinks).
    pub notes: Vec<String>,
}

/// How a transfer authenticated its receivers ([`DestinationReport::authentication`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Authentication {
    /// A SPAKE2 exchange over the passphrase, bound to the TLS channel: only a receiver
    /// with the same passphrase completes it.
    Passphrase,
    /// The anonymous key (no passphrase): encrypted, but anyone could be at the other end.
    None,
    /// An object store: requests signed with its access key (AWS Signature V4).
    Credentials,
}

impl std::fmt::Display for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Authentication::Passphrase => "passphrase (SPAKE2 bound to the TLS channel)",
            Authentication::None => "none (no passphrase: anyone could be the receiver)",
            Authentication::Credentials => "access key (AWS Signature V4)",
        })
    }
}

/// Why a destination failed as a whole ([`DestinationReport::failure`]). Serialises in
/// snake case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DestinationFailure {
    /// No connection could be made, or made again, within `retry_for`.
    Unreachable,
    /// The receiver refused the key (or the sender's).
    Authentication,
    /// The receiver speaks another protocol version.
    Incompatible,
    /// The transfer was cancelled.
    Cancelled,
    /// Anything else (the receiver kept losing the transfer's state, no randomness).
    Other,
}

/// What a finished transfer did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Every entry read, in order, with [`TransferOptions::file_reports`]; otherwise empty.
    pub files: Vec<FileReport>,
    /// Entries that could not be read at the source, with why.
    pub source_errors: Vec<(String, String)>,
    /// Per destination.
    pub destinations: Vec<DestinationReport>,
    /// Bytes read from the sources.
    pub bytes: u64,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Whether it was cancelled.
    pub cancelled: bool,
}

impl Report {
    /// True when every entry reached every destination.
    pub fn success(&self) -> bool {
        !self.cancelled
            && self.source_errors.is_empty()
            && self
                .destinations
                .iter()
                .all(|d| d.error.is_none() && d.failed.is_empty())
    }
}

/// A transfer to configure and start.
#[derive(Debug)]
pub struct Transfer {
    sources: Vec<PathBuf>,
    destinations: Vec<String>,
    options: TransferOptions,
    progress: Option<mpsc::Sender<Progress>>,
    cancel: CancellationToken,
}

/// A running transfer.
#[derive(Debug)]
pub struct TransferHandle {
    cancel: CancellationToken,
    task: JoinHandle<Report>,
}

impl TransferHandle {
    /// A token that cancels the transfer.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops the transfer; [`wait`](Self::wait) returns what was done.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the end.
    ///
    /// # Errors
    /// Only if the transfer's task panicked.
    pub async fn wait(self) -> Result<Report, tokio::task::JoinError> {
        self.task.await
    }
}

impl Readable for Entry {
    fn input(&self) -> Option<&Input> {
        match self.kind {
            EntryKind::File => Some(&self.input),
            _ => None,
        }
    }

    fn walked_len(&self) -> Option<u64> {
        (self.kind == EntryKind::File).then_some(self.size)
    }
}

impl Transfer {
    /// Sends `sources` (files or directories) to every address in `destinations`
    /// (`host:port`).
    pub fn new(sources: Vec<PathBuf>, destinations: Vec<String>) -> Self {
        Transfer {
            sources,
            destinations,
            options: TransferOptions::default(),
            progress: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Replaces the options.
    pub fn options(mut self, options: TransferOptions) -> Self {
        self.options = options;
        self
    }

    /// A stream of progress events (see [`crate::HashJob::subscribe`] for the contract).
    pub fn subscribe(&mut self) -> mpsc::Receiver<Progress> {
        let (tx, rx) = mpsc::channel(256);
        self.progress = Some(tx);
        rx
    }

    /// Starts on the current tokio runtime.
    ///
    /// # Errors
    /// [`TransferError`] for bad options, an empty source or destination list, two sources
    /// that would land on the same path, or a destination that is not `HOST:PORT`.
    pub fn start(self) -> Result<TransferHandle, TransferError> {
        self.options.pipeline.validate()?;
        if self.sources.is_empty() {
            return Err(TransferError::Usage("nothing to send"));
        }
        if self.destinations.is_empty() {
            return Err(TransferError::Usage("no destination"));
        }
        for addr in &self.destinations {
            if addr.starts_with("s3://") {
                #[cfg(feature = "s3")]
                crate::objstore::S3Target::parse(addr)?;
                #[cfg(not(feature = "s3"))]
                return Err(TransferError::Usage(
                    "s3:// destinations need tidegate built with the `s3` feature",
                ));
            } else {
                crate::client::address::check(addr)?;
            }
        }
        walk::check_names(&self.sources, self.options.links)?;
        let pool = HashPool::new(self.options.pipeline.threads)
            .map_err(|e| OptionsError::ThreadPool(e.to_string()))?;
        let budget =
            Budget::new(usize::try_from(self.options.pipeline.memory_bytes).unwrap_or(usize::MAX));
        let walk_errors = Arc::new(Mutex::new(Vec::new()));
        let tally = if self.options.count_total {
            Some(walk::count(self.sources.clone(), self.options.links)?)
        } else {
            None
        };
        let entries = walk::spawn(self.sources.clone(), self.options.links)?;
        let errors = Arc::clone(&walk_errors);
        let specs = entries.filter_map(move |e: Result<Entry, WalkError>| match e {
            Ok(entry) => Some(entry),
            Err(err) => {
                tracing::warn!(path = %err.path.display(), error = %err.source, "cannot read; skipped");
                errors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((err.path.display().to_string(), err.source.to_string()));
                None
            }
        });
        let pipeline = Pipeline::spawn(
            specs,
            &self.options.pipeline,
            pool.clone(),
            budget.clone(),
            &self.cancel,
        )?;
        let session: [u8; 16] = random()?;
        let cancel = self.cancel.clone();
        let shared = Shared {
            options: self.options,
            pool,
            budget,
            cancel: self.cancel,
        };
        let task = tokio::spawn(run(
            pipeline,
            self.destinations,
            shared,
            session,
            self.progress,
            tally,
            walk_errors,
        ));
        Ok(TransferHandle { cancel, task })
    }
}

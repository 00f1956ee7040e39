//! [`Transfer`]: the library API for sending files and trees to one or more receivers. The
//! CLI's `send` and `bench`, and the Tauri adapter, use only this.
//!
//! A transfer walks its sources (sending starts while the walk goes on), reads and hashes
//! them once through the bounded pipeline, and fans every chunk out to each destination. A
//! chunk's memory (its budget permit) is released when every destination has acknowledged
//! it, so a slow destination slows the reader instead of growing memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::connection::Params;
use crate::client::dispatch::{DestEvent, Dispatch, Note, Outcome};
use crate::pipeline::budget::Budget;
use crate::pipeline::hash::HashPool;
use crate::pipeline::options::{OptionsError, PipelineOptions};
use crate::pipeline::run::Spec;
use crate::pipeline::{Event, Pipeline};
use crate::progress::{ConnectionState, Progress, Ticker};
use crate::protocol::handshake::{random, Key};
use crate::source::walk::{self, Entry, EntryKind, Tally, WalkError};
use crate::source::Input;

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
    Destination(#[from] crate::client::address::AddressError),
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
    /// Connections that dropped and were redialled.
    pub reconnects: u64,
    /// Set when the destination failed as a whole (unreachable past the deadline, wrong key).
    pub error: Option<String>,
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

impl Spec for Entry {
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
            crate::client::address::check(addr)?;
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
                tracing::warn!(error = %err, "cannot read");
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

/// Events a destination may queue ahead of its dispatcher.
const DEST_QUEUE: usize = 64;

struct Destination {
    /// Its place in the transfer's list of destinations.
    index: usize,
    tx: Option<mpsc::Sender<DestEvent>>,
    task: JoinHandle<Outcome>,
}

/// What every pass of a transfer shares.
struct Shared {
    options: TransferOptions,
    pool: HashPool,
    budget: Budget,
    cancel: CancellationToken,
}

async fn run(
    pipeline: Pipeline<Entry>,
    addresses: Vec<String>,
    shared: Shared,
    session: [u8; 16],
    progress: Option<mpsc::Sender<Progress>>,
    tally: Option<Tally>,
    walk_errors: Arc<Mutex<Vec<(String, String)>>>,
) -> Report {
    let started = Instant::now();
    let mut state = Tracker {
        progress,
        tally,
        ticker: Ticker::new(shared.options.pipeline.progress_interval),
        started,
        files: HashMap::new(),
        kept: shared.options.file_reports.then(Vec::new),
        read_bytes: 0,
        acked: vec![0; addresses.len()],
        files_done: 0,
        n_dest: addresses.len() as u64,
        done_count: HashMap::new(),
        chunk_len: shared.options.pipeline.chunk_size.bytes() as u64,
        addresses: addresses.clone(),
    };
    let everyone: Vec<usize> = (0..addresses.len()).collect();
    let mut outcomes = pass(
        pipeline, &addresses, &everyone, session, &shared, &mut state,
    )
    .await;

    // The redo pass (like rsync's): a resumed file whose root hash did not verify was sent
    // from a partial file that no longer matches the source. The receiver dropped that
    // partial file, so reading the file again sends it whole. Once per destination, and
    // only once: a file that fails again is reported.
    for (dest, first) in outcomes.iter_mut().enumerate() {
        let redo = std::mem::take(&mut first.redo);
        if redo.is_empty() {
            continue;
        }
        if let Some(fatal) = &first.fatal {
            // The destination is gone: no point dialling it again.
            let why = format!("resumed data did not verify, not sent again: {fatal}");
            first
                .files_failed
                .extend(redo.into_iter().map(|f| (f, why.clone())));
            continue;
        }
        let outcome = redo_pass(&redo, &addresses, dest, &shared, &mut state).await;
        first.files_done += outcome.files_done;
        first.files_failed.extend(outcome.files_failed);
        first.bytes_acked += outcome.bytes_acked;
        first.bytes_resumed += outcome.bytes_resumed;
        first.reconnects += outcome.reconnects;
        if first.fatal.is_none() {
            first.fatal = outcome.fatal;
        }
    }

    let name = |f: u64| {
        state
            .files
            .get(&f)
            .map(|t| t.report.path.clone())
            .unwrap_or_default()
    };
    let reports = addresses
        .into_iter()
        .zip(outcomes)
        .map(|(address, outcome)| DestinationReport {
            address,
            files_done: outcome.files_done,
            failed: outcome
                .files_failed
                .iter()
                .map(|(f, why)| (name(*f), why.clone()))
                .collect(),
            bytes: outcome.bytes_acked,
            resumed: outcome.bytes_resumed,
            reconnects: outcome.reconnects,
            error: outcome.fatal,
        })
        .collect();
    state.tick(true).await;
    let mut source_errors =
        std::mem::take(&mut *walk_errors.lock().unwrap_or_else(PoisonError::into_inner));
    source_errors.extend(state.source_failures());
    let bytes = state.read_bytes;
    Report {
        files: state.into_file_reports(),
        source_errors,
        destinations: reports,
        bytes,
        elapsed_ms: started.elapsed().as_millis() as u64,
        cancelled: shared.cancel.is_cancelled(),
    }
}

/// Sends `redo` (file numbers of the first pass) to destination `dest` again, in a session
/// of their own.
async fn redo_pass(
    redo: &[u64],
    addresses: &[String],
    dest: usize,
    shared: &Shared,
    state: &mut Tracker,
) -> Outcome {
    let mut files = Vec::with_capacity(redo.len());
    let mut unreadable = Vec::new();
    for &f in redo {
        match state.entry(f) {
            Some(entry) => files.push((f, (*entry).clone())),
            None => unreadable.push((f, "root hash mismatch; cannot be read again".to_string())),
        }
    }
    files.sort_by_key(|(f, _)| *f);
    let fail_all = |why: String| Outcome {
        files_failed: redo.iter().map(|&f| (f, why.clone())).collect(),
        ..Outcome::default()
    };
    if shared.cancel.is_cancelled() {
        return fail_all("cancelled".into());
    }
    if files.is_empty() {
        return Outcome {
            files_failed: unreadable,
            ..Outcome::default()
        };
    }
    tracing::info!(
        addr = %addresses[dest],
        files = files.len(),
        "sending files again whose resumed data did not verify"
    );
    let pipeline = Pipeline::spawn_numbered(
        files.into_iter(),
        &shared.options.pipeline,
        shared.pool.clone(),
        shared.budget.clone(),
        &shared.cancel,
    );
    let (pipeline, session) = match (pipeline, random::<16>()) {
        (Ok(pipeline), Ok(session)) => (pipeline, session),
        (Err(e), _) | (_, Err(e)) => return fail_all(format!("cannot send it again: {e}")),
    };
    let mut outcome = pass(pipeline, addresses, &[dest], session, shared, state)
        .await
        .swap_remove(dest);
    // Only once: failing again (a journal written meanwhile by someone else) is a failure.
    let again = std::mem::take(&mut outcome.redo);
    outcome.files_failed.extend(
        again
            .into_iter()
            .map(|f| (f, "root hash mismatch, also when sent again".to_string())),
    );
    outcome.files_failed.extend(unreadable);
    outcome
}

/// Runs `pipeline` to the destinations `targets` (indices into `addresses`) until every
/// file is confirmed or failed. Returns one outcome per address (empty for those not in
/// `targets`).
async fn pass(
    mut pipeline: Pipeline<Entry>,
    addresses: &[String],
    targets: &[usize],
    session: [u8; 16],
    shared: &Shared,
    state: &mut Tracker,
) -> Vec<Outcome> {
    let options = &shared.options;
    let cancel = &shared.cancel;
    let (note_tx, mut notes) = mpsc::channel::<(usize, Note)>(256);
    let chunk_len = options.pipeline.chunk_size.bytes() as u32;
    let mut destinations = Vec::new();
    for &index in targets {
        let (tx, input) = mpsc::channel(DEST_QUEUE);
        let dispatch = Dispatch {
            params: Params {
                addr: addresses[index].clone(),
                key: options.key.clone(),
                session,
                connect_timeout: options.connect_timeout,
                reply_timeout: options.reply_timeout,
                retry_for: options.retry_for,
                max_in_flight: 64,
            },
            streams: options.streams,
            chunk_len,
            input,
            notes: note_tx.clone(),
            dest: index,
            cancel: cancel.child_token(),
        };
        destinations.push(Destination {
            index,
            tx: Some(tx),
            task: tokio::spawn(dispatch.run()),
        });
    }
    drop(note_tx);

    let mut pipeline_open = true;
    // One waiter on the token for the whole loop, not one made and dropped per event.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => break,
            note = notes.recv() => match note {
                Some((dest, note)) => state.on_note(dest, note).await,
                None => break,
            },
            event = pipeline.next(), if pipeline_open => {
                let Some(event) = event else {
                    pipeline_open = false;
                    for d in &mut destinations {
                        d.tx = None; // input ends; dispatchers finish up
                    }
                    continue;
                };
                let outgoing = state.on_event(event).await;
                if let Some(out) = outgoing {
                    for d in &mut destinations {
                        let Some(tx) = &d.tx else { continue };
                        // Backpressure: a slow destination makes us wait here. Its notes
                        // must still be drained meanwhile, or it could block on them while
                        // we block on it.
                        let sent = loop {
                            tokio::select! {
                                biased;
                                () = &mut cancelled => break false,
                                note = notes.recv() => match note {
                                    Some((dest, note)) => state.on_note(dest, note).await,
                                    None => break false,
                                },
                                permit = tx.reserve() => match permit {
                                    Ok(permit) => {
                                        permit.send(out.clone());
                                        break true;
                                    }
                                    Err(_) => break false,
                                },
                            }
                        };
                        if !sent {
                            d.tx = None; // that destination has ended (failed)
                        }
                    }
                }
            }
        }
    }
    drop(pipeline);
    let mut outcomes: Vec<Outcome> = addresses.iter().map(|_| Outcome::default()).collect();
    for d in destinations {
        drop(d.tx);
        outcomes[d.index] = d.task.await.unwrap_or_default();
    }
    outcomes
}

struct Tracked {
    report: FileReport,
    source_error: Option<String>,
    /// A large file read from a path, until every destination confirmed it: what a redo
    /// pass reads again.
    entry: Option<Arc<Entry>>,
}

struct Tracker {
    progress: Option<mpsc::Sender<Progress>>,
    /// The sources' total, counted alongside (`TransferOptions::count_total`).
    tally: Option<Tally>,
    ticker: Ticker,
    started: Instant,
    /// Entries read and not yet confirmed by every destination (and those that failed
    /// somewhere), by number. What is done is dropped, or moved to `kept`.
    files: HashMap<u64, Tracked>,
    /// Reports of entries every destination confirmed, with
    /// [`TransferOptions::file_reports`].
    kept: Option<Vec<(u64, FileReport)>>,
    read_bytes: u64,
    acked: Vec<u64>,
    files_done: u64,
    n_dest: u64,
    /// How many destinations confirmed each file; the file is done when all did.
    done_count: HashMap<u64, u64>,
    /// Files larger than this are sent in chunks and may be resumed.
    chunk_len: u64,
    /// The destinations, for messages.
    addresses: Vec<String>,
}

impl Tracker {
    async fn emit(&self, event: Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(event).await;
        }
    }

    async fn emit_failed(&self, file: u64, error: String) {
        if let Some(tracked) = self.files.get(&file) {
            let path = tracked.report.path.clone();
            self.emit(Progress::FileFailed { file, path, error }).await;
        }
    }

    fn track(&mut self, file: u64, entry: &Arc<Entry>, size: u64) {
        let keep = (size > self.chunk_len && matches!(entry.input, Input::Path(_)))
            .then(|| Arc::clone(entry));
        if let Some(tracked) = self.files.get_mut(&file) {
            // Read again by a redo pass.
            tracked.entry = keep;
            return;
        }
        self.files.insert(
            file,
            Tracked {
                report: FileReport {
                    path: entry.rel_display(),
                    bytes: 0,
                    blake3: String::new(),
                },
                source_error: None,
                entry: keep,
            },
        );
    }

    /// A large file's entry, if it is still kept for a redo pass.
    fn entry(&self, file: u64) -> Option<Arc<Entry>> {
        self.files.get(&file)?.entry.clone()
    }

    /// Returns what to fan out, if anything.
    async fn on_event(&mut self, event: Event<Entry>) -> Option<DestEvent> {
        match event {
            Event::FileStarted { file, spec, size } => {
                let entry = Arc::new(spec);
                self.emit(Progress::FileStarted {
                    file,
                    path: entry.rel_display(),
                    size,
                })
                .await;
                let size = size.unwrap_or(entry.size);
                self.track(file, &entry, size);
                Some(DestEvent::Start { file, entry, size })
            }
            Event::Entry { file, spec } => {
                let entry = Arc::new(spec);
                self.track(file, &entry, 0);
                Some(DestEvent::Entry { file, entry })
            }
            Event::Chunk(chunk) => {
                self.read_bytes += chunk.data.len() as u64;
                Some(DestEvent::Chunk(Arc::new(chunk)))
            }
            Event::FileDone { file, len, root } => {
                if let Some(tracked) = self.files.get_mut(&file) {
                    tracked.report.bytes = len;
                    tracked.report.blake3 = root.to_hex().to_string();
                }
                Some(DestEvent::End {
                    file,
                    root: *root.as_bytes(),
                })
            }
            Event::FileFailed { file, error } => {
                let message = error.to_string();
                if let Some(tracked) = self.files.get_mut(&file) {
                    tracked.source_error = Some(message.clone());
                }
                self.emit_failed(file, message).await;
                Some(DestEvent::Abort { file })
            }
        }
    }

    async fn on_note(&mut self, dest: usize, note: Note) {
        match note {
            Note::Acked { bytes } => {
                self.acked[dest] += bytes;
                self.tick(false).await;
            }
            Note::Done { file } => {
                let count = self.done_count.entry(file).or_insert(0);
                *count += 1;
                if *count == self.n_dest {
                    self.done_count.remove(&file);
                    self.files_done += 1;
                    if let Some(Tracked { report, .. }) = self.files.remove(&file) {
                        let event = Progress::FileDone {
                            file,
                            path: report.path.clone(),
                            bytes: report.bytes,
                            blake3: report.blake3.clone(),
                        };
                        self.emit(event).await;
                        if let Some(kept) = &mut self.kept {
                            kept.push((file, report));
                        }
                    }
                }
            }
            Note::Failed { file, message } => self.emit_failed(file, message).await,
            Note::Connection {
                state,
                error,
                failed_dials,
            } => {
                let addr = &self.addresses[dest];
                let why = error.as_deref().unwrap_or_default();
                match state {
                    ConnectionState::Dropped => tracing::warn!(
                        %addr,
                        error = %why,
                        "connection dropped; redialling and resending what it had not confirmed"
                    ),
                    ConnectionState::Unreachable => tracing::warn!(
                        %addr,
                        error = %why,
                        "cannot connect; retrying with backoff until the retry deadline"
                    ),
                    ConnectionState::Connected => {
                        tracing::warn!(%addr, failed_dials, "connected");
                    }
                }
                self.emit(Progress::Connection {
                    address: addr.clone(),
                    state,
                    error,
                    failed_attempts: failed_dials,
                })
                .await;
            }
        }
    }

    /// Bytes every destination acknowledged, on average.
    async fn tick(&mut self, last: bool) {
        if self.progress.is_none() {
            return;
        }
        if !self.ticker.due(last) {
            return;
        }
        let done = self.acked.iter().sum::<u64>() / self.n_dest.max(1);
        self.emit(Progress::Bytes {
            done_bytes: done,
            total_bytes: self.tally.as_ref().and_then(Tally::total),
            files_done: self.files_done,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        })
        .await;
    }

    /// Entries that could not be read, in order.
    fn source_failures(&self) -> Vec<(String, String)> {
        let mut failed: Vec<(u64, &Tracked)> = self
            .files
            .iter()
            .filter(|(_, t)| t.source_error.is_some())
            .map(|(&f, t)| (f, t))
            .collect();
        failed.sort_unstable_by_key(|&(f, _)| f);
        failed
            .into_iter()
            .filter_map(|(_, t)| Some((t.report.path.clone(), t.source_error.clone()?)))
            .collect()
    }

    /// With [`TransferOptions::file_reports`], every entry's report in order: those done
    /// everywhere and those that were not. Otherwise none.
    fn into_file_reports(self) -> Vec<FileReport> {
        let Some(mut kept) = self.kept else {
            return Vec::new();
        };
        kept.extend(self.files.into_iter().map(|(f, t)| (f, t.report)));
        kept.sort_unstable_by_key(|&(f, _)| f);
        kept.into_iter().map(|(_, report)| report).collect()
    }
}

//! What a transfer knows of its files while it runs: which are in flight, what each
//! destination confirmed, the progress events, and the per-file reports at the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::{FileReport, TransferOptions};
use crate::client::dispatch::{DestEvent, Note};
use crate::pipeline::Event;
use crate::progress::{ConnectionState, Progress, Ticker};
use crate::source::walk::{Entry, Tally};
use crate::source::{Input, SourceError};

struct Tracked {
    report: FileReport,
    source_error: Option<String>,
    /// A large file read from a path, until every destination confirmed it: what a redo
    /// pass reads again.
    entry: Option<Arc<Entry>>,
}

pub(super) struct Tracker {
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
    pub(super) read_bytes: u64,
    acked: Vec<u64>,
    files_done: u64,
    n_dest: u64,
    /// How long an unreachable destination is retried, for messages.
    retry_for: std::time::Duration,
    /// How many destinations confirmed each file; the file is done when all did.
    done_count: HashMap<u64, u64>,
    /// Files larger than this are sent in chunks and may be resumed.
    chunk_len: u64,
    /// The destinations, for messages.
    addresses: Vec<String>,
}

impl Tracker {
    pub(super) fn new(
        progress: Option<mpsc::Sender<Progress>>,
        tally: Option<Tally>,
        started: Instant,
        options: &TransferOptions,
        addresses: Vec<String>,
    ) -> Self {
        Tracker {
            progress,
            tally,
            ticker: Ticker::new(options.pipeline.progress_interval),
            started,
            files: HashMap::new(),
            kept: options.file_reports.then(Vec::new),
            read_bytes: 0,
            acked: vec![0; addresses.len()],
            files_done: 0,
            n_dest: addresses.len() as u64,
            retry_for: options.retry_for,
            done_count: HashMap::new(),
            chunk_len: options.pipeline.chunk_size.bytes() as u64,
            addresses,
        }
    }

    pub(super) async fn emit(&self, event: Progress) {
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

    /// The path of entry `file`, for messages; empty once it is forgotten.
    pub(super) fn path(&self, file: u64) -> String {
        self.files
            .get(&file)
            .map(|t| t.report.path.clone())
            .unwrap_or_default()
    }

    /// A large file's entry, if it is still kept for a redo pass.
    pub(super) fn entry(&self, file: u64) -> Option<Arc<Entry>> {
        self.files.get(&file)?.entry.clone()
    }

    /// Returns what to fan out, if anything.
    pub(super) async fn on_event(&mut self, event: Event<Entry>) -> Option<DestEvent> {
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
            // Every destination refused it, and each said why.
            Event::FileFailed {
                file,
                error: SourceError::Skipped { .. },
            } => Some(DestEvent::Abort { file }),
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

    pub(super) async fn on_note(&mut self, dest: usize, note: Note) {
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
                        retry_for_s = self.retry_for.as_secs(),
                        "cannot connect; is `tidegate serve` running there?"
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

    /// When a byte count held back by the rate limit falls due.
    pub(super) fn tick_owed(&self) -> Option<std::time::Instant> {
        self.progress.as_ref().and(self.ticker.owed())
    }

    /// Bytes every destination acknowledged, on average.
    pub(super) async fn tick(&mut self, last: bool) {
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
    pub(super) fn source_failures(&self) -> Vec<(String, String)> {
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
    pub(super) fn into_file_reports(self) -> Vec<FileReport> {
        let Some(mut kept) = self.kept else {
            return Vec::new();
        };
        kept.extend(self.files.into_iter().map(|(f, t)| (f, t.report)));
        kept.sort_unstable_by_key(|&(f, _)| f);
        kept.into_iter().map(|(_, report)| report).collect()
    }
}

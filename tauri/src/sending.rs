//! A `send` job: the library's [`Progress`] stream turned into [`TransferEvent`]s at most ten
//! a second, the live counts `transfers()` reads, and the final report with its error.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tauri::ipc::Channel;
use tidegate::{ConnectionState, Progress, Report, TransferHandle};
use tokio::sync::mpsc;

use crate::args::EVENT_INTERVAL;
use crate::error::{destination_kind, Error, ErrorKind};
use crate::events::{
    DestinationResult, DestinationState, Failure, FileSent, TransferEvent, TransferReport,
};
use crate::jobs::Live;

/// What the next progress event says.
#[derive(Default)]
struct Tally {
    done_bytes: u64,
    total_bytes: Option<u64>,
    files_done: u64,
    files_failed: u64,
    current_file: Option<String>,
    /// Destinations not connected now.
    down: BTreeMap<String, DestinationState>,
}

/// Runs until the transfer ends; its last event is `finished`.
pub(crate) async fn drive(
    handle: TransferHandle,
    mut progress: mpsc::Receiver<Progress>,
    channel: Channel<TransferEvent>,
    live: Arc<Live>,
) {
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut last_sent: Option<Instant> = None;
    let mut dirty = false;
    loop {
        let due = last_sent.map_or(started, |t| t + EVENT_INTERVAL);
        tokio::select! {
            event = progress.recv() => {
                let Some(event) = event else { break };
                dirty |= tally.take(event);
                live.done_bytes.store(tally.done_bytes, Ordering::Relaxed);
                if let Some(total) = tally.total_bytes {
                    live.total_bytes.store(total, Ordering::Relaxed);
                }
            }
            () = tokio::time::sleep_until(due.into()), if dirty => {}
        }
        if dirty && Instant::now() >= due {
            let _ = channel.send(tally.event(started));
            last_sent = Some(Instant::now());
            dirty = false;
        }
    }
    let finished = match handle.wait().await {
        Ok(report) => finished(report),
        Err(e) => TransferEvent::Finished {
            report: empty_report(),
            error: Some(Error::new(
                ErrorKind::Io,
                format!("the transfer stopped: {e}"),
            )),
        },
    };
    let _ = channel.send(finished);
}

impl Tally {
    /// Takes an event in; true when it changes what the next progress event says.
    fn take(&mut self, event: Progress) -> bool {
        match event {
            Progress::Bytes {
                done_bytes,
                total_bytes,
                files_done,
                ..
            } => {
                self.done_bytes = done_bytes;
                self.total_bytes = total_bytes;
                self.files_done = files_done;
                true
            }
            Progress::FileStarted { path, .. } => {
                self.current_file = Some(path);
                false
            }
            Progress::FileFailed { .. } => {
                self.files_failed += 1;
                true
            }
            Progress::Connection {
                address,
                state,
                error,
                ..
            } => {
                let state = match state {
                    ConnectionState::Connected => None,
                    ConnectionState::Unreachable => Some("unreachable"),
                    ConnectionState::Dropped => Some("dropped"),
                    _ => Some("unknown"),
                };
                match state {
                    None => {
                        self.down.remove(&address);
                    }
                    Some(state) => {
                        let d = DestinationState {
                            address: address.clone(),
                            state,
                            error,
                        };
                        self.down.insert(address, d);
                    }
                }
                true
            }
            _ => false,
        }
    }

    fn event(&self, started: Instant) -> TransferEvent {
        let elapsed = started.elapsed();
        let rate = (self.done_bytes as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
        let eta_seconds = self
            .total_bytes
            .filter(|_| rate > 0)
            .map(|total| total.saturating_sub(self.done_bytes).div_ceil(rate));
        TransferEvent::Progress {
            done_bytes: self.done_bytes,
            total_bytes: self.total_bytes,
            files_done: self.files_done,
            files_failed: self.files_failed,
            bytes_per_second: rate,
            eta_seconds,
            elapsed_ms: elapsed.as_millis() as u64,
            current_file: self.current_file.clone(),
            destinations: self.down.values().cloned().collect(),
        }
    }
}

fn failures(list: Vec<(String, String)>) -> Vec<Failure> {
    list.into_iter()
        .map(|(path, error)| Failure { path, error })
        .collect()
}

/// The `finished` event: the report, and the error that sums up what went wrong.
pub(crate) fn finished(report: Report) -> TransferEvent {
    let mut error = None;
    if report.cancelled {
        error = Some(Error::new(
            ErrorKind::Cancelled,
            "the transfer was cancelled",
        ));
    }
    let destinations: Vec<DestinationResult> = report
        .destinations
        .into_iter()
        .map(|d| {
            let dest_error = d
                .error
                .map(|message| Error::new(destination_kind(d.failure), message));
            if error.is_none() {
                error = dest_error.clone().or_else(|| {
                    d.failed.first().map(|(path, why)| {
                        let more = d.failed.len() - 1;
                        let others = if more > 0 {
                            format!(" (and {more} more)")
                        } else {
                            String::new()
                        };
                        Error::new(
                            ErrorKind::Io,
                            format!("{}: {path}: {why}{others}", d.address),
                        )
                    })
                });
            }
            DestinationResult {
                address: d.address,
                files_done: d.files_done,
                failed: failures(d.failed),
                bytes: d.bytes,
                resumed: d.resumed,
                resent: d.resent,
                reconnects: d.reconnects,
                restarts: d.restarts,
                error: dest_error,
            }
        })
        .collect();
    if error.is_none() {
        error = report
            .source_errors
            .first()
            .map(|(path, why)| Error::new(ErrorKind::Io, format!("cannot read {path}: {why}")));
    }
    let success = error.is_none();
    TransferEvent::Finished {
        report: TransferReport {
            success,
            cancelled: report.cancelled,
            bytes: report.bytes,
            elapsed_ms: report.elapsed_ms,
            source_errors: failures(report.source_errors),
            destinations,
            files: report
                .files
                .into_iter()
                .map(|f| FileSent {
                    path: f.path,
                    bytes: f.bytes,
                    blake3: f.blake3,
                })
                .collect(),
        },
        error,
    }
}

fn empty_report() -> TransferReport {
    TransferReport {
        success: false,
        cancelled: false,
        bytes: 0,
        elapsed_ms: 0,
        source_errors: Vec::new(),
        destinations: Vec::new(),
        files: Vec::new(),
    }
}

//! What a job tells JavaScript through its `Channel`: camelCase serde types, tagged by
//! `event`. Byte counts and activity are sent at most ten times a second per job (never once
//! per chunk or per file); a job's last event carries its report.

use serde::Serialize;

use crate::error::Error;

/// A destination's connection state, as the latest event knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationState {
    /// The address as given.
    pub address: String,
    /// `connected`, `unreachable` (retrying) or `dropped` (redialling).
    pub state: &'static str,
    /// Why, when not connected.
    pub error: Option<String>,
}

/// Events of a `send`.
#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum TransferEvent {
    /// The transfer started.
    Started {
        /// Its id, for `cancel`.
        id: u64,
        /// The sources as given.
        sources: Vec<String>,
        /// The destinations as given.
        destinations: Vec<String>,
    },
    /// Bytes so far (at most ten a second).
    Progress {
        /// Bytes read, hashed and sent.
        done_bytes: u64,
        /// All bytes, once counted.
        total_bytes: Option<u64>,
        /// Files finished.
        files_done: u64,
        /// Files that failed so far.
        files_failed: u64,
        /// Average rate since the start.
        bytes_per_second: u64,
        /// Seconds left at that rate, once the total is known.
        eta_seconds: Option<u64>,
        /// Milliseconds since the start.
        elapsed_ms: u64,
        /// The file read last.
        current_file: Option<String>,
        /// Destinations that are not connected right now.
        destinations: Vec<DestinationState>,
    },
    /// The end: always the last event.
    Finished {
        /// What was done.
        report: TransferReport,
        /// Why it did not fully succeed, if it did not.
        error: Option<Error>,
    },
}

/// One path and why it failed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The path.
    pub path: String,
    /// Why.
    pub error: String,
}

/// One file that was sent.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSent {
    /// Relative path at the destination.
    pub path: String,
    /// Bytes.
    pub bytes: u64,
    /// BLAKE3 root in hex (empty for directories and links).
    pub blake3: String,
}

/// One destination's result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationResult {
    /// The address as given.
    pub address: String,
    /// Entries confirmed durable.
    pub files_done: u64,
    /// Entries that failed.
    pub failed: Vec<Failure>,
    /// Bytes sent and acknowledged.
    pub bytes: u64,
    /// Bytes the receiver had already from an interrupted transfer.
    pub resumed: u64,
    /// Bytes sent more than once.
    pub resent: u64,
    /// Connections redialled.
    pub reconnects: u64,
    /// Times the receiver restarted under the transfer.
    pub restarts: u64,
    /// Why the destination failed as a whole.
    pub error: Option<Error>,
}

/// A finished transfer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferReport {
    /// Every entry reached every destination.
    pub success: bool,
    /// Cancelled before the end.
    pub cancelled: bool,
    /// Bytes read from the sources.
    pub bytes: u64,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Entries that could not be read.
    pub source_errors: Vec<Failure>,
    /// Per destination.
    pub destinations: Vec<DestinationResult>,
    /// Every file, with the `fileReports` option.
    pub files: Vec<FileSent>,
}

/// Events of a `hash`.
#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum HashEvent {
    /// The job started.
    Started {
        /// Its id, for `cancel`.
        id: u64,
    },
    /// Bytes hashed so far (at most ten a second).
    Progress {
        /// Bytes hashed.
        done_bytes: u64,
        /// All bytes, when known.
        total_bytes: Option<u64>,
        /// Files finished.
        files_done: u64,
        /// Milliseconds since the start.
        elapsed_ms: u64,
    },
    /// The end: always the last event.
    Finished {
        /// One entry per path reached, in order.
        files: Vec<HashedFile>,
        /// Cancelled before the end.
        cancelled: bool,
    },
}

/// One hashed path.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HashedFile {
    /// The path as given.
    pub path: String,
    /// Bytes hashed.
    pub bytes: u64,
    /// BLAKE3 root in hex, when it could be read.
    pub blake3: Option<String>,
    /// Why not.
    pub error: Option<Error>,
}

/// Events of a receiver started with `serveStart`.
#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "event",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServeEvent {
    /// What happened since the last event (at most ten a second).
    Activity {
        /// Authenticated connections open now.
        connections: u64,
        /// Senders that connected since the last event (at most 32 listed).
        connected: Vec<String>,
        /// Connections refused since the last event (at most 32 listed), with why.
        refused: Vec<Refusal>,
        /// Files put in place since the last event (at most 32 listed).
        received: Vec<ReceivedFile>,
        /// Files received since the receiver started.
        files_total: u64,
        /// Bytes of those files.
        bytes_total: u64,
        /// Events not listed above because there were too many.
        unlisted: u64,
    },
    /// The receiver stopped: always the last event.
    Stopped {
        /// Why, if it did not stop on `serveStop`.
        error: Option<Error>,
    },
}

/// A connection a receiver refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// Where it came from.
    pub peer: String,
    /// Why (a wrong key, another protocol version).
    pub reason: String,
}

/// One file a receiver put in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedFile {
    /// Its path relative to the served directory.
    pub path: String,
    /// Its length.
    pub bytes: u64,
}

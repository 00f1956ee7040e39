//! One destination: turns the pipeline's events into protocol requests, stripes them over
//! the destination's connections, and tracks every file until the server says it is durable.
//!
//! Ordering rules it enforces: a large file's chunks go out only after the server answered
//! `FileReady` (the partial file exists), its `FileEnd` only after every chunk was
//! acknowledged. Small files, directories and links need no round trip. Requests from a
//! dropped connection come back here and are sent again first; the server treats repeats as
//! no-ops.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use super::connection::{self, DialOptions, Expect, Job, Reply};
use crate::pipeline::chunk::Chunk;
use crate::progress::ConnectionState;
use crate::protocol::{ErrorCode, Frame, Meta};
use crate::source::walk::{Entry, EntryKind};

/// What the fan-out sends to each destination, in pipeline order.
#[derive(Debug, Clone)]
pub(crate) enum DestEvent {
    /// A file was opened; `size` is its length when opened.
    Start {
        file: u64,
        entry: Arc<Entry>,
        size: u64,
    },
    /// A hashed chunk, shared by all destinations.
    Chunk(Arc<Chunk>),
    /// A file was read completely.
    End { file: u64, root: [u8; 32] },
    /// A file could not be read; abandon it.
    Abort { file: u64 },
    /// A directory or link.
    Entry { file: u64, entry: Arc<Entry> },
}

/// How a destination fared.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Entries confirmed durable (a count: nothing per file stays once it is done).
    pub(crate) files_done: u64,
    pub(crate) files_failed: Vec<(u64, String)>,
    pub(crate) bytes_acked: u64,
    /// Chunk bytes the server already had from an interrupted transfer: not sent.
    pub(crate) bytes_resumed: u64,
    pub(crate) reconnects: u64,
    /// Resumed files that failed the root hash check: what the server had from the
    /// interrupted transfer no longer matches the source. The server dropped its partial
    /// file, so sending them again sends them whole (see `transfer/fanout.rs`, the redo pass).
    pub(crate) redo: Vec<u64>,
    /// Set when the destination as a whole failed.
    pub(crate) fatal: Option<String>,
}

enum FileState {
    Small {
        meta: Meta,
        data: Option<Arc<Chunk>>,
    },
    Large {
        ready: bool,
        /// Chunks `0..have` the server already has (resumed): not sent.
        have: u64,
        waiting: Vec<Arc<Chunk>>,
        outstanding: u64,
        root: Option<[u8; 32]>,
    },
    /// A small file sent, not yet acknowledged (not yet in the server's batch).
    SmallSent { root: [u8; 32] },
    /// Everything sent; waiting for `FileDone`. The root lets us ask again. `batched`: the
    /// server confirms it only when it flushes its small-file batch (on `Finish` at the
    /// latest); others are confirmed on their own.
    Sent { root: [u8; 32], batched: bool },
}

/// Progress a destination reports to the transfer.
#[derive(Debug)]
pub(crate) enum Note {
    Acked {
        bytes: u64,
    },
    Done {
        file: u64,
    },
    Failed {
        file: u64,
        message: String,
    },
    /// The destination became unreachable, reachable again, or dropped a connection (what
    /// that connection had not confirmed is sent again); see [`ConnectionState`].
    Connection {
        state: ConnectionState,
        /// Why, for `Unreachable` and `Dropped`.
        error: Option<String>,
        /// For `Connected`: attempts that failed since `Unreachable`.
        failed_dials: u64,
    },
}

/// Whether the destination can be reached, for telling the user once, not per attempt.
#[derive(Debug, Default)]
struct Reach {
    /// Connections up now.
    up: usize,
    /// `Unreachable` was said and not yet answered by `Connected`.
    warned: bool,
    /// Failed attempts since it was said.
    failed_dials: u64,
}

pub(crate) struct Dispatch {
    pub(crate) params: DialOptions,
    pub(crate) streams: usize,
    pub(crate) chunk_len: u32,
    pub(crate) input: mpsc::Receiver<DestEvent>,
    /// Where notes go, tagged with `dest`: one queue for all destinations, read by the
    /// transfer.
    pub(crate) notes: mpsc::Sender<(usize, Note)>,
    pub(crate) dest: usize,
    pub(crate) cancel: CancellationToken,
}

/// Queue between the dispatcher and its connections: a few frames per connection.
const JOBS_PER_STREAM: usize = 4;
/// Jobs the dispatcher may hold before it stops taking input; memory is bounded by the
/// budget anyway, this keeps the queue short so resends go out promptly.
const MAX_PENDING: usize = 256;

fn meta_of(entry: &Entry, size: u64) -> Meta {
    Meta {
        path: entry.rel.clone(),
        size,
        mode: entry.mode,
        mtime_ns: entry.mtime_ns,
    }
}

impl Dispatch {
    /// Tells the transfer; if it is gone, the transfer is ending and nobody needs to know.
    async fn note(&self, note: Note) {
        let _ = self.notes.send((self.dest, note)).await;
    }

    pub(crate) async fn run(mut self) -> Outcome {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(JOBS_PER_STREAM * self.streams.max(1));
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (reply_tx, mut replies) = mpsc::channel::<Reply>(64);
        let conn_cancel = self.cancel.child_token();
        let mut conns = tokio::task::JoinSet::new();
        for _ in 0..self.streams.max(1) {
            conns.spawn(connection::run(
                self.params.clone(),
                Arc::clone(&jobs_rx),
                reply_tx.clone(),
                conn_cancel.clone(),
            ));
        }
        drop(reply_tx);
        let mut live = self.streams.max(1);
        let mut reach = Reach::default();
        // One waiter on the token for the whole run, not one per event (an owned clone: the
        // loop borrows `self` mutably).
        let cancel = self.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let mut out = Outcome::default();
        let mut files: HashMap<u64, FileState> = HashMap::new();
        // Files whose `FileReady` said some chunks were already there, with the bytes not
        // sent because of it.
        let mut resumed_files: HashMap<u64, u64> = HashMap::new();
        let mut to_send: VecDeque<Job> = VecDeque::new();
        let mut input_open = true;
        let mut finish_queued = false;
        let mut finish_rounds = 0u32;
        loop {
            // Finish once only files waiting for the server's batch flush remain.
            let only_batched = files
                .values()
                .all(|f| matches!(f, FileState::Sent { batched: true, .. }));
            if !input_open && only_batched && to_send.is_empty() && !finish_queued {
                to_send.push_back(Job {
                    frame: Frame::Finish,
                    hold: None,
                    expect: Expect::Finished,
                });
                finish_queued = true;
            }
            tokio::select! {
                biased;
                () = &mut cancelled => {
                    out.fatal = Some("cancelled".into());
                    break;
                }
                reply = replies.recv() => {
                    let Some(reply) = reply else { break };
                    match reply {
                        Reply::Ack { file, bytes, .. } => {
                            out.bytes_acked += bytes;
                            self.note(Note::Acked { bytes }).await;
                            if let Some(FileState::SmallSent { root }) = files.get(&file) {
                                let root = *root;
                                files.insert(file, FileState::Sent { root, batched: true });
                            } else if let Some(FileState::Large { outstanding, root, ready, .. }) = files.get_mut(&file) {
                                *outstanding = outstanding.saturating_sub(1);
                                if *outstanding == 0 && *ready {
                                    if let Some(root) = *root {
                                        to_send.push_back(file_end(file, root));
                                        files.insert(file, FileState::Sent { root, batched: false });
                                    }
                                }
                            }
                        }
                        Reply::Ready { file, have: resumed } => {
                            if let Some(FileState::Large { ready, have, waiting, outstanding, root }) = files.get_mut(&file) {
                                if !*ready {
                                    *ready = true;
                                    *have = resumed;
                                    for chunk in waiting.drain(..) {
                                        if chunk.index < resumed {
                                            let bytes = chunk.data.len() as u64;
                                            out.bytes_resumed += bytes;
                                            *resumed_files.entry(file).or_default() += bytes;
                                            self.note(Note::Acked { bytes }).await;
                                        } else {
                                            *outstanding += 1;
                                            to_send.push_back(data_job(chunk));
                                        }
                                    }
                                    // Every chunk read so far was there already, and maybe
                                    // the whole file.
                                    if let (0, Some(root)) = (*outstanding, *root) {
                                        to_send.push_back(file_end(file, root));
                                        files.insert(file, FileState::Sent { root, batched: false });
                                    }
                                }
                            }
                        }
                        Reply::Done(file) => {
                            resumed_files.remove(&file);
                            if files.remove(&file).is_some() {
                                out.files_done += 1;
                                self.note(Note::Done { file }).await;
                            }
                        }
                        Reply::Failed { file, code, message } => {
                            let resumed = resumed_files.remove(&file);
                            if files.remove(&file).is_some() {
                                to_send.retain(|j| !job_is_for(j, file));
                                if let (Some(bytes), true) = (resumed, code == ErrorCode::Hash as u16) {
                                    // Those bytes will be sent after all.
                                    out.bytes_resumed = out.bytes_resumed.saturating_sub(bytes);
                                    tracing::warn!(addr = %self.params.addr, file, reason = %message, "resumed file did not verify; it will be sent again whole");
                                    out.redo.push(file);
                                } else {
                                    self.note(Note::Failed { file, message: message.clone() }).await;
                                    out.files_failed.push((file, message));
                                }
                            }
                        }
                        Reply::Finished => {
                            finish_rounds += 1;
                            if files.is_empty() {
                                break; // everything confirmed; connections are cancelled below
                            }
                            if finish_rounds >= 3 {
                                for (file, _) in files.drain() {
                                    out.files_failed.push((file, "the receiver never confirmed this file".into()));
                                }
                                break;
                            }
                            // Files whose `FileDone` was lost with a connection: ask again
                            // (the server answers a repeated end with `FileDone`).
                            for (&file, state) in &files {
                                if let FileState::Sent { root, .. } = state {
                                    to_send.push_back(file_end(file, *root));
                                }
                            }
                            finish_queued = false;
                        }
                        Reply::Up => {
                            reach.up += 1;
                            if reach.warned {
                                reach.warned = false;
                                let failed_dials = std::mem::take(&mut reach.failed_dials);
                                self.note(Note::Connection { state: ConnectionState::Connected, error: None, failed_dials }).await;
                            }
                        }
                        Reply::Down { mut unacked, error, was_up } => {
                            if was_up {
                                reach.up = reach.up.saturating_sub(1);
                                out.reconnects += 1;
                                self.note(Note::Connection { state: ConnectionState::Dropped, error: Some(error), failed_dials: 0 }).await;
                            } else {
                                // One warning while nothing gets through, not one per attempt
                                // of every stream.
                                reach.failed_dials += 1;
                                if reach.up == 0 && !reach.warned {
                                    reach.warned = true;
                                    self.note(Note::Connection { state: ConnectionState::Unreachable, error: Some(error), failed_dials: 0 }).await;
                                }
                            }
                            // Resend first, in their original order.
                            while let Some(job) = unacked.pop() {
                                to_send.push_front(job);
                            }
                        }
                        Reply::Dead { error } => {
                            live -= 1;
                            if live == 0 {
                                out.fatal = Some(format!("{}: {error}", self.params.addr));
                                break;
                            }
                        }
                    }
                }
                permit = jobs_tx.reserve(), if !to_send.is_empty() => {
                    if let (Ok(permit), Some(job)) = (permit, to_send.pop_front()) {
                        permit.send(job);
                    }
                }
                event = self.input.recv(), if input_open && to_send.len() < MAX_PENDING => {
                    let Some(event) = event else {
                        input_open = false;
                        continue;
                    };
                    if let Some((file, bytes)) = self.on_event(event, &mut files, &mut to_send) {
                        out.bytes_resumed += bytes;
                        *resumed_files.entry(file).or_default() += bytes;
                        self.note(Note::Acked { bytes }).await;
                    }
                }
            }
        }
        // Closing the queue lets connections drain and exit.
        drop(jobs_tx);
        if out.fatal.is_some() {
            conn_cancel.cancel();
            for (file, _) in files.drain() {
                out.files_failed
                    .push((file, out.fatal.clone().unwrap_or_default()));
            }
        }
        // Everything was confirmed (or the destination failed): nothing left is worth
        // waiting for, not even answers to repeated questions.
        conn_cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        out
    }

    /// Turns one pipeline event into requests. Returns the file and bytes of a chunk not sent
    /// because the server already has it.
    fn on_event(
        &self,
        event: DestEvent,
        files: &mut HashMap<u64, FileState>,
        to_send: &mut VecDeque<Job>,
    ) -> Option<(u64, u64)> {
        match event {
            DestEvent::Start { file, entry, size } => {
                let meta = meta_of(&entry, size);
                if size <= u64::from(self.chunk_len) {
                    files.insert(file, FileState::Small { meta, data: None });
                } else {
                    to_send.push_back(Job {
                        frame: Frame::FileBegin {
                            file,
                            meta,
                            chunk_len: self.chunk_len,
                        },
                        hold: None,
                        expect: Expect::Ready(file),
                    });
                    files.insert(
                        file,
                        FileState::Large {
                            ready: false,
                            have: 0,
                            waiting: Vec::new(),
                            outstanding: 0,
                            root: None,
                        },
                    );
                }
            }
            DestEvent::Chunk(chunk) => match files.get_mut(&chunk.file) {
                Some(FileState::Small { data, .. }) => *data = Some(chunk),
                Some(FileState::Large {
                    ready: true, have, ..
                }) if chunk.index < *have => return Some((chunk.file, chunk.data.len() as u64)),
                Some(FileState::Large {
                    ready: true,
                    outstanding,
                    ..
                }) => {
                    *outstanding += 1;
                    to_send.push_back(data_job(chunk));
                }
                Some(FileState::Large { waiting, .. }) => waiting.push(chunk),
                _ => {}
            },
            DestEvent::End { file, root } => match files.remove(&file) {
                Some(FileState::Small { mut meta, data }) => {
                    let payload = data.as_ref().map_or_else(Bytes::new, |c| c.data.clone());
                    meta.size = payload.len() as u64;
                    to_send.push_back(Job {
                        frame: Frame::SmallFile {
                            file,
                            meta,
                            root,
                            payload,
                        },
                        hold: data,
                        expect: Expect::Ack { file, index: 0 },
                    });
                    files.insert(file, FileState::SmallSent { root });
                }
                Some(FileState::Large {
                    ready,
                    have,
                    waiting,
                    outstanding,
                    ..
                }) => {
                    if ready && outstanding == 0 {
                        to_send.push_back(file_end(file, root));
                        files.insert(
                            file,
                            FileState::Sent {
                                root,
                                batched: false,
                            },
                        );
                    } else {
                        files.insert(
                            file,
                            FileState::Large {
                                ready,
                                have,
                                waiting,
                                outstanding,
                                root: Some(root),
                            },
                        );
                    }
                }
                other => {
                    if let Some(state) = other {
                        files.insert(file, state);
                    }
                }
            },
            DestEvent::Abort { file } => {
                if let Some(state) = files.remove(&file) {
                    to_send.retain(|j| !job_is_for(j, file));
                    if matches!(state, FileState::Large { .. }) {
                        to_send.push_back(Job {
                            frame: Frame::Error {
                                file,
                                code: ErrorCode::Io as u16,
                                message: b"source file failed".to_vec(),
                            },
                            hold: None,
                            expect: Expect::Nothing,
                        });
                    }
                }
            }
            DestEvent::Entry { file, entry } => {
                let meta = meta_of(&entry, 0);
                let frame = match &entry.kind {
                    EntryKind::Symlink(target) => Frame::Symlink {
                        file,
                        meta,
                        target: target.clone(),
                    },
                    _ => Frame::Dir { file, meta },
                };
                to_send.push_back(Job {
                    frame,
                    hold: None,
                    expect: Expect::Done(file),
                });
                // Confirmed with the server's small-file batch. A repeated end for an entry is
                // answered with `FileDone` once it is durable.
                files.insert(
                    file,
                    FileState::Sent {
                        root: [0; 32],
                        batched: true,
                    },
                );
            }
        }
        None
    }
}

fn data_job(chunk: Arc<Chunk>) -> Job {
    let (file, index) = (chunk.file, chunk.index);
    Job {
        frame: Frame::Data {
            file,
            index,
            cv: chunk.digest.chaining_value.unwrap_or([0; 32]),
            payload: chunk.data.clone(),
        },
        hold: Some(chunk),
        expect: Expect::Ack { file, index },
    }
}

fn file_end(file: u64, root: [u8; 32]) -> Job {
    Job {
        frame: Frame::FileEnd { file, root },
        hold: None,
        expect: Expect::Done(file),
    }
}

fn job_is_for(job: &Job, file: u64) -> bool {
    match job.expect {
        Expect::Ack { file: f, .. } | Expect::Ready(f) | Expect::Done(f) => f == file,
        _ => false,
    }
}

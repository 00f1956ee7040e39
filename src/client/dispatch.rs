//! One destination: turns the pipeline's events into protocol requests, stripes them over
//! the destination's connections, and tracks every file until the server says it is durable.
//!
//! Ordering rules it enforces: a large file's chunks go out only after the server answered
//! `FileReady` (the partial file exists), its `FileEnd` only after every chunk was
//! acknowledged. Small files, directories and links need no round trip. Requests from a
//! dropped connection come back here and are sent again first; the server treats repeats as
//! no-ops.

//! One destination: feeds the pipeline's events to its ledger (`files.rs`), stripes the
//! ledger's requests over the destination's connections, hands their answers back to it, and
//! runs the re-reader (`reread.rs`) for what a receiver lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use super::connection::{self, DialOptions, Expect, Job, Reply};
use super::files::{FileNote, Files};
use super::reread::{self, Reread};
use crate::pipeline::budget::Budget;
use crate::progress::ConnectionState;
use crate::protocol::Frame;
use crate::transfer::DestinationFailure;

pub(crate) use super::files::DestEvent;

/// How a destination fared.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Entries confirmed durable (a count: nothing per file stays once it is done).
    pub(crate) files_done: u64,
    pub(crate) files_failed: Vec<(u64, String)>,
    pub(crate) bytes_acked: u64,
    /// Chunk bytes the server already had from an interrupted transfer: not sent.
    pub(crate) bytes_resumed: u64,
    /// Chunk bytes sent more than once: unanswered when a connection dropped, or read again
    /// for a receiver that lost them.
    pub(crate) bytes_resent: u64,
    pub(crate) reconnects: u64,
    /// Times the receiver lost the session's state (it restarted) and the transfer went on.
    pub(crate) restarts: u64,
    /// Files whose root did not verify at the receiver: sent again whole in a session of
    /// their own (see `transfer/fanout.rs`, the redo pass).
    pub(crate) redo: Vec<u64>,
    /// Set when the destination as a whole failed.
    pub(crate) fatal: Option<String>,
    /// What kind of failure `fatal` is.
    pub(crate) failure: Option<DestinationFailure>,
    /// What the first connection negotiated.
    pub(crate) tls: Option<crate::tls::Negotiated>,
    /// Files not sent because the destination had them already (an object store's resume).
    pub(crate) already_there: u64,
    /// What the destination could not store and said so once (empty directories in an
    /// object store).
    pub(crate) notes: Vec<String>,
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
    /// The transfer's memory budget, which chunks read again also count against.
    pub(crate) budget: Budget,
}

/// Queue between the dispatcher and its connections: a few frames per connection.
const JOBS_PER_STREAM: usize = 4;
/// Jobs the dispatcher may hold before it stops taking input; memory is bounded by the
/// budget anyway, this keeps the queue short so resends go out promptly.
const MAX_PENDING: usize = 256;
/// Times a receiver may lose the session's state within one transfer: past that, something
/// other than restarts is at work (two receivers behind one address, say).
const MAX_RESTARTS: u64 = 64;

impl Dispatch {
    /// Tells the transfer; if it is gone, the transfer is ending and nobody needs to know.
    async fn note(&self, note: Note) {
        let _ = self.notes.send((self.dest, note)).await;
    }

    /// Passes the ledger's notes on; `spare` is an empty buffer swapped with the ledger's, so
    /// that neither is given up and allocated again for every answer.
    async fn pass_notes(&self, files: &mut Files, spare: &mut Vec<FileNote>) {
        if files.notes.is_empty() {
            return;
        }
        std::mem::swap(&mut files.notes, spare);
        for note in spare.drain(..) {
            let note = match note {
                FileNote::Acked { bytes } => Note::Acked { bytes },
                FileNote::Done { file } => Note::Done { file },
                FileNote::Failed { file, message } => Note::Failed { file, message },
            };
            self.note(note).await;
        }
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
        // The re-reader idles until a receiver loses something.
        let (reread_tx, reread_rx) = mpsc::channel(4);
        let (reread_done_tx, mut reread_done) = mpsc::channel::<Reread>(8);
        let rereader = tokio::spawn(reread::run(reread_rx, reread_done_tx, self.budget.clone()));
        let mut live = self.streams.max(1);
        let mut reach = Reach::default();
        // One waiter on the token for the whole run, not one per event (an owned clone: the
        // loop borrows `self` mutably).
        let cancel = self.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let mut out = Outcome::default();
        let mut files = Files::new(self.chunk_len, conn_cancel.child_token());
        let mut spare_notes = Vec::new();
        let mut input_open = true;
        let mut finish_queued = false;
        let mut finish_rounds = 0u32;
        loop {
            // Finish once only files waiting for the server's batch flush remain.
            if !input_open && files.only_batched() && files.to_send.is_empty() && !finish_queued {
                files
                    .to_send
                    .push_back(Job::new(Frame::Finish, None, Expect::Finished));
                finish_queued = true;
            }
            tokio::select! {
                biased;
                () = &mut cancelled => {
                    out.fatal = Some("cancelled".into());
                    out.failure = Some(DestinationFailure::Cancelled);
                    break;
                }
                reply = replies.recv() => {
                    let Some(reply) = reply else { break };
                    match reply {
                        Reply::Ack { file, index, bytes, again, incarnation } => {
                            files.on_ack(file, index, bytes, again, incarnation);
                        }
                        Reply::Ready { file, have, incarnation } => files.on_ready(file, have, incarnation),
                        Reply::Done(file) => files.on_done(file),
                        Reply::Failed { file, code, message } => files.on_failed(file, code, message),
                        Reply::Missing { file, job, incarnation } => files.on_missing(file, job, incarnation),
                        Reply::Finished { incarnation } => {
                            if !files.speaks_for(incarnation) {
                                continue; // the state it finished is gone
                            }
                            finish_rounds += 1;
                            if files.is_empty() {
                                break; // everything confirmed; connections are cancelled below
                            }
                            if finish_rounds >= 3 {
                                files.fail_all("the receiver never confirmed this file");
                                break;
                            }
                            // Entries whose `FileDone` was lost with a connection: ask again.
                            files.ask_again();
                            finish_queued = false;
                        }
                        Reply::Up { incarnation, tls } => {
                            reach.up += 1;
                            out.tls.get_or_insert(tls);
                            if reach.warned {
                                reach.warned = false;
                                let failed_dials = std::mem::take(&mut reach.failed_dials);
                                self.note(Note::Connection { state: ConnectionState::Connected, error: None, failed_dials }).await;
                            }
                            if files.on_up(incarnation) {
                                tracing::info!(addr = %self.params.addr, "the receiver lost this transfer's state (it restarted?); sending again what it lacks");
                                finish_queued = false;
                                finish_rounds = 0;
                                if files.counts.restarts > MAX_RESTARTS {
                                    out.fatal = Some(format!("{}: the receiver lost this transfer's state {} times", self.params.addr, files.counts.restarts));
                                    out.failure = Some(DestinationFailure::Other);
                                    break;
                                }
                            }
                        }
                        Reply::Down { unacked, error, was_up } => {
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
                            if unacked.iter().any(|j| j.expect == Expect::Finished) {
                                finish_queued = false;
                            }
                            // Resent first, in their original order.
                            files.requeue(unacked);
                        }
                        Reply::Dead { error, failure } => {
                            live -= 1;
                            // A refused key or an unknown version is the destination's, not
                            // one connection's: the others would only end the same way, or,
                            // once the receiver locks this address out, as unreachable.
                            if live == 0 || failure != DestinationFailure::Unreachable {
                                out.fatal = Some(format!("{}: {error}", self.params.addr));
                                out.failure = Some(failure);
                                break;
                            }
                        }
                    }
                }
                permit = jobs_tx.reserve(), if !files.to_send.is_empty() => {
                    if let (Ok(permit), Some(job)) = (permit, files.to_send.pop_front()) {
                        permit.send(job);
                    }
                }
                permit = reread_tx.reserve(), if !files.rereads.is_empty() => {
                    if let (Ok(permit), Some(request)) = (permit, files.rereads.pop_front()) {
                        permit.send(request);
                    }
                }
                result = reread_done.recv() => {
                    if let Some(result) = result {
                        files.on_reread(result);
                    }
                }
                event = self.input.recv(), if input_open && files.to_send.len() < MAX_PENDING => {
                    let Some(event) = event else {
                        input_open = false;
                        continue;
                    };
                    files.on_event(event);
                }
            }
            self.pass_notes(&mut files, &mut spare_notes).await;
        }
        // Closing the queue lets connections drain and exit.
        drop(jobs_tx);
        rereader.abort();
        if let Some(fatal) = &out.fatal {
            conn_cancel.cancel();
            files.fail_all(fatal);
        }
        // Everything was confirmed (or the destination failed): nothing left is worth
        // waiting for, not even answers to repeated questions.
        conn_cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        let counts = files.counts;
        out.files_done = counts.files_done;
        out.files_failed = counts.files_failed;
        out.bytes_acked = counts.bytes_acked;
        out.bytes_resumed = counts.bytes_resumed;
        out.bytes_resent = counts.bytes_resent;
        out.restarts = counts.restarts;
        out.redo = counts.redo;
        out
    }
}

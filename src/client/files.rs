//! Every entry a destination has not yet confirmed durable: what was sent, what the receiver
//! acknowledged, and what to send again when the receiver lost it. Sans-IO: events and
//! replies come in, jobs (frames to send), re-read requests and notes go out, so that the
//! rules are tested without a socket.
//!
//! Ordering rules: a large file's chunks go out only after the receiver answered
//! `FileReady` (the partial file exists), its `FileEnd` only after every chunk was
//! acknowledged. Small files, directories and links need no round trip.
//!
//! Losses and their repair:
//! - A dropped connection gives back the jobs it had not had answered; they are sent again
//!   from memory (the receiver treats repeats as no-ops).
//! - A receiver whose `Welcome` names another incarnation than before lost the session's
//!   state (a restart, or a session it dropped). Every large file in flight is begun again,
//!   and its `FileReady` says which chunks the receiver still has (its journal); the chunks
//!   it lacks that are no longer in memory are read again from the source (`reread.rs`).
//!   Small files, directories and links not yet confirmed durable are sent again, small
//!   files read again.
//! - An answer `Missing` (the receiver does not know the file, or lacks some of its chunks)
//!   to a request sent after the file's latest `FileReady` means the same for that file.
//!   Answers to requests from before it are late and only put the request back.
//! - An acknowledgement from an incarnation left behind is for data that is gone: that chunk
//!   or small file is read again.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::connection::{Again, Expect, Job};
use super::reread::{Request, Reread, What};
use crate::pipeline::chunk::Chunk;
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

/// Progress a destination reports to the transfer (see `dispatch.rs` for the connection
/// notes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileNote {
    Acked { bytes: u64 },
    Done { file: u64 },
    Failed { file: u64, message: String },
}

/// Begins of one file, past which the receiver is taken to be unable to keep it.
const MAX_BEGINS: u32 = 16;

enum FileState {
    /// A small file being read.
    Small {
        entry: Arc<Entry>,
        data: Option<Arc<Chunk>>,
    },
    /// Its `SmallFile` is out and not acknowledged: the job holds the bytes.
    SmallSent {
        entry: Arc<Entry>,
        sent: Sent,
    },
    /// Being read again for a receiver that lost it.
    SmallReread {
        entry: Arc<Entry>,
        sent: Sent,
    },
    /// A small file, directory or link in the receiver's batch, confirmed with its flush.
    Batched {
        entry: Arc<Entry>,
        sent: Sent,
    },
    Large(Box<Large>),
    /// A large file's `FileEnd` is out: waiting for `FileDone`.
    Ending {
        entry: Arc<Entry>,
        size: u64,
        root: [u8; 32],
        /// Bytes not sent because the receiver had them (see `Large::resumed`).
        resumed: u64,
    },
}

/// What a small file was sent as (a directory or link: zeros).
#[derive(Debug, Clone, Copy)]
struct Sent {
    root: [u8; 32],
    size: u64,
}

struct Large {
    entry: Arc<Entry>,
    size: u64,
    /// `FileReady` came for the latest begin.
    ready: bool,
    /// Chunks `0..have` were at the receiver at that `FileReady`.
    have: u64,
    /// Chunks the pipeline gave so far: `0..next`.
    next: u64,
    /// Chunks in memory not yet acknowledged by the receiver (held by jobs, `waiting`, or
    /// the connections). Bounded by the memory budget.
    pending: Pending,
    /// Chunks held until `FileReady`, and whether each went out before.
    waiting: Vec<(Arc<Chunk>, Again)>,
    /// Chunks the receiver lacks and memory no longer holds: read again once ready.
    lost: Vec<Range<u64>>,
    /// Chunks asked of the re-reader and not yet back.
    rereading: u64,
    /// The running re-read, cancelled when the file is begun again or ends.
    reread: Option<CancellationToken>,
    root: Option<[u8; 32]>,
    /// The epoch of the latest begin: jobs stamped with an older one were queued before it.
    begun: u64,
    begins: u32,
    /// Bytes not sent because the receiver had them from an interrupted transfer.
    resumed: u64,
}

/// Counters of a destination's outcome kept here.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) files_done: u64,
    pub(crate) files_failed: Vec<(u64, String)>,
    pub(crate) bytes_acked: u64,
    pub(crate) bytes_resumed: u64,
    pub(crate) bytes_resent: u64,
    /// Times the receiver's state was lost (a new incarnation).
    pub(crate) restarts: u64,
    /// Files to read again whole and send in a session of their own: their root did not
    /// verify (see `transfer/fanout.rs`, the redo pass).
    pub(crate) redo: Vec<u64>,
}

/// The ledger of one destination.
pub(crate) struct Files {
    chunk_len: u32,
    map: HashMap<u64, FileState>,
    /// Jobs to send, in order.
    pub(crate) to_send: VecDeque<Job>,
    /// Requests for the re-reader.
    pub(crate) rereads: VecDeque<Request>,
    /// Notes for the transfer.
    pub(crate) notes: Vec<FileNote>,
    pub(crate) counts: Counts,
    /// Bumped at every begin and change of incarnation; stamped on jobs.
    epoch: u64,
    /// The epoch of the latest change of incarnation: entries other than large files were
    /// sent again then, so an answer to an older request about one is late.
    switched_at: u64,
    /// The receiver's state the ledger speaks of.
    incarnation: Option<u64>,
    cancel: CancellationToken,
}

fn meta_of(entry: &Entry, size: u64) -> Meta {
    Meta {
        path: entry.rel.clone(),
        size,
        mode: entry.mode,
        mtime_ns: entry.mtime_ns,
    }
}

/// Chunk indices, sorted: a vector rather than a tree, so that the steady stream of inserts
/// (mostly at the end) and removals allocates nothing once it has grown to the window.
#[derive(Debug, Default)]
struct Pending(Vec<u64>);

impl Pending {
    fn insert(&mut self, index: u64) {
        if self.0.last().is_none_or(|&last| last < index) {
            self.0.push(index);
        } else if let Err(at) = self.0.binary_search(&index) {
            self.0.insert(at, index);
        }
    }

    fn remove(&mut self, index: u64) {
        if let Ok(at) = self.0.binary_search(&index) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `[0, next)` without `pending`, as ranges.
fn complement(next: u64, pending: &Pending) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut from = 0;
    for &i in pending.0.iter().take_while(|&&i| i < next) {
        if i > from {
            out.push(from..i);
        }
        from = i + 1;
    }
    if from < next {
        out.push(from..next);
    }
    out
}

/// `ranges` from `have` on.
fn trim(ranges: &mut Vec<Range<u64>>, have: u64) {
    ranges.retain_mut(|r| {
        r.start = r.start.max(have);
        r.start < r.end
    });
}

impl Files {
    /// A ledger for chunks of `chunk_len`; `cancel` is the parent of re-read tokens.
    pub(crate) fn new(chunk_len: u32, cancel: CancellationToken) -> Self {
        Files {
            chunk_len,
            map: HashMap::new(),
            to_send: VecDeque::new(),
            rereads: VecDeque::new(),
            notes: Vec::new(),
            counts: Counts::default(),
            epoch: 0,
            switched_at: 0,
            incarnation: None,
            cancel,
        }
    }

    /// Nothing is waiting for anything but the receiver's batch flush.
    pub(crate) fn only_batched(&self) -> bool {
        self.map
            .values()
            .all(|f| matches!(f, FileState::Batched { .. }))
    }

    /// Whether answers from `incarnation` speak for the state this ledger knows.
    pub(crate) fn speaks_for(&self, incarnation: u64) -> bool {
        self.incarnation == Some(incarnation)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every entry not confirmed, failed with `why`.
    pub(crate) fn fail_all(&mut self, why: &str) {
        for (file, state) in self.map.drain() {
            if let FileState::Large(large) = state {
                if let Some(token) = large.reread {
                    token.cancel();
                }
            }
            self.counts.files_failed.push((file, why.to_owned()));
        }
    }

    /// Asks again, at `Finish`, for entries whose `FileDone` may have been lost with a
    /// connection (a repeated end is answered `FileDone` once durable).
    pub(crate) fn ask_again(&mut self) {
        for (&file, state) in &self.map {
            match state {
                FileState::Batched {
                    sent: Sent { root, .. },
                    ..
                }
                | FileState::Ending { root, .. } => {
                    self.to_send.push_back(file_end(file, *root, self.epoch));
                }
                _ => {}
            }
        }
    }

    /// One pipeline event. Events for a file no longer here (failed) are dropped.
    pub(crate) fn on_event(&mut self, event: DestEvent) {
        match event {
            DestEvent::Start { file, entry, size } => {
                if size <= u64::from(self.chunk_len) {
                    self.map
                        .insert(file, FileState::Small { entry, data: None });
                } else {
                    self.epoch += 1;
                    let large = Large {
                        entry,
                        size,
                        ready: false,
                        have: 0,
                        next: 0,
                        pending: Pending::default(),
                        waiting: Vec::new(),
                        lost: Vec::new(),
                        rereading: 0,
                        reread: None,
                        root: None,
                        begun: self.epoch,
                        begins: 1,
                        resumed: 0,
                    };
                    self.to_send
                        .push_back(begin_job(file, &large, self.chunk_len));
                    self.map.insert(file, FileState::Large(Box::new(large)));
                }
            }
            DestEvent::Chunk(chunk) => match self.map.get_mut(&chunk.file) {
                Some(FileState::Small { data, .. }) => *data = Some(chunk),
                Some(FileState::Large(large)) => {
                    large.next = large.next.max(chunk.index + 1);
                    if large.ready && chunk.index < large.have {
                        let bytes = chunk.data.len() as u64;
                        large.resumed += bytes;
                        self.counts.bytes_resumed += bytes;
                        self.notes.push(FileNote::Acked { bytes });
                    } else {
                        large.pending.insert(chunk.index);
                        if large.ready {
                            self.to_send
                                .push_back(data_job(chunk, large.begun, Again::No));
                        } else {
                            large.waiting.push((chunk, Again::No));
                        }
                    }
                }
                _ => {}
            },
            DestEvent::End { file, root } => match self.map.remove(&file) {
                Some(FileState::Small { entry, data }) => {
                    let size = data.as_ref().map_or(0, |c| c.data.len() as u64);
                    let sent = Sent { root, size };
                    let mut job = small_job(file, &entry, sent, data, Again::No);
                    job.epoch = self.epoch;
                    self.to_send.push_back(job);
                    self.map.insert(file, FileState::SmallSent { entry, sent });
                }
                Some(FileState::Large(mut large)) => {
                    large.root = Some(root);
                    self.map.insert(file, FileState::Large(large));
                    self.maybe_end(file);
                }
                Some(other) => {
                    self.map.insert(file, other);
                }
                None => {}
            },
            DestEvent::Abort { file } => {
                if let Some(state) = self.map.remove(&file) {
                    self.to_send.retain(|j| j.file() != Some(file));
                    if let FileState::Large(large) = state {
                        if let Some(token) = large.reread {
                            token.cancel();
                        }
                        self.to_send.push_back(Job::new(
                            Frame::Error {
                                file,
                                code: ErrorCode::Io as u16,
                                message: b"source file failed".to_vec(),
                            },
                            None,
                            Expect::Nothing,
                        ));
                    }
                }
            }
            DestEvent::Entry { file, entry } => {
                let mut job = entry_job(file, &entry);
                job.epoch = self.epoch;
                self.to_send.push_back(job);
                // Confirmed with the receiver's small-file batch.
                let sent = Sent {
                    root: [0; 32],
                    size: 0,
                };
                self.map.insert(file, FileState::Batched { entry, sent });
            }
        }
    }

    /// The receiver acknowledged a chunk or a small file (see [`super::connection::Reply`]).
    pub(crate) fn on_ack(
        &mut self,
        file: u64,
        index: u64,
        bytes: u64,
        again: Again,
        incarnation: u64,
    ) {
        if again != Again::Reread {
            self.counts.bytes_acked += bytes;
            self.notes.push(FileNote::Acked { bytes });
        }
        if again != Again::No {
            self.counts.bytes_resent += bytes;
        }
        let gone = self.incarnation != Some(incarnation);
        match self.map.get_mut(&file) {
            Some(FileState::SmallSent { entry, sent }) => {
                let (entry, sent) = (Arc::clone(entry), *sent);
                if gone {
                    self.reread_small(file, entry, sent);
                } else {
                    self.map.insert(file, FileState::Batched { entry, sent });
                }
            }
            Some(FileState::Large(large)) => {
                large.pending.remove(index);
                if gone {
                    // Acknowledged by a receiver state that is gone: read again.
                    large.lost.push(index..index + 1);
                    self.reread_lost(file);
                } else {
                    self.maybe_end(file);
                }
            }
            _ => {}
        }
    }

    /// `FileReady`: chunks `0..have` are at the receiver.
    pub(crate) fn on_ready(&mut self, file: u64, have: u64, incarnation: u64) {
        if self.incarnation != Some(incarnation) {
            return; // for a begin sent to a state that is gone; a new one is out
        }
        let Some(FileState::Large(large)) = self.map.get_mut(&file) else {
            return;
        };
        if large.ready {
            return; // a repeated begin's answer
        }
        large.ready = true;
        large.have = have;
        trim(&mut large.lost, have);
        for (chunk, again) in std::mem::take(&mut large.waiting) {
            if chunk.index < have {
                large.pending.remove(chunk.index);
                let bytes = chunk.data.len() as u64;
                large.resumed += bytes;
                self.counts.bytes_resumed += bytes;
                self.notes.push(FileNote::Acked { bytes });
            } else {
                self.to_send.push_back(data_job(chunk, large.begun, again));
            }
        }
        self.reread_lost(file);
        self.maybe_end(file);
    }

    /// `FileDone`: durable at the receiver, whichever incarnation said so.
    pub(crate) fn on_done(&mut self, file: u64) {
        if let Some(state) = self.map.remove(&file) {
            if let FileState::Large(large) = state {
                if let Some(token) = large.reread {
                    token.cancel();
                }
            }
            self.counts.files_done += 1;
            self.notes.push(FileNote::Done { file });
        }
    }

    /// A per-file error other than `Missing`.
    pub(crate) fn on_failed(&mut self, file: u64, code: u16, message: String) {
        let Some(state) = self.map.remove(&file) else {
            return;
        };
        self.to_send.retain(|j| j.file() != Some(file));
        let resumed = match state {
            FileState::Large(large) => {
                if let Some(token) = large.reread {
                    token.cancel();
                }
                large.resumed
            }
            FileState::Ending { resumed, .. } => resumed,
            _ => 0,
        };
        if code == ErrorCode::Hash as u16 {
            // What reaches the receiver did not hash to the source's root (data resumed from
            // a partial file that no longer matches, or damaged on the way): sent again whole,
            // once, after the rest.
            self.counts.bytes_resumed = self.counts.bytes_resumed.saturating_sub(resumed);
            tracing::warn!(file, reason = %message, "file did not verify; it will be sent again whole");
            self.counts.redo.push(file);
        } else {
            self.notes.push(FileNote::Failed {
                file,
                message: message.clone(),
            });
            self.counts.files_failed.push((file, message));
        }
    }

    /// `Missing`: the receiver lacks `file`, answering `job`.
    pub(crate) fn on_missing(&mut self, file: u64, job: Option<Job>, incarnation: u64) {
        let current = self.incarnation == Some(incarnation);
        let fresh = job.as_ref().is_none_or(|j| self.is_fresh(file, j));
        if current && fresh {
            self.lost(file, true);
        }
        if let Some(job) = job {
            self.requeue(vec![job]);
        }
    }

    /// The receiver no longer has what it had of `file`: a large file is begun again
    /// (`counted`: toward [`MAX_BEGINS`]), an entry in its batch is sent again. Entries not
    /// yet sent, or whose request is still out, need nothing.
    fn lost(&mut self, file: u64, counted: bool) {
        match self.map.remove(&file) {
            Some(FileState::Large(large)) => {
                self.map.insert(file, FileState::Large(large));
                self.begin_again(file, counted);
            }
            Some(FileState::Ending {
                entry,
                size,
                root,
                resumed,
            }) => self.insert_lost_large(file, entry, size, root, resumed),
            Some(FileState::Batched { entry, sent }) => self.send_entry_again(file, entry, sent),
            Some(other) => {
                self.map.insert(file, other);
            }
            None => {}
        }
    }

    /// Whether `job` was queued after its file's latest begin was answered.
    fn is_fresh(&self, file: u64, job: &Job) -> bool {
        match self.map.get(&file) {
            Some(FileState::Large(large)) => large.ready && job.epoch >= large.begun,
            _ => job.epoch >= self.switched_at,
        }
    }

    /// A connection is up, talking to `incarnation`. Returns whether the receiver lost the
    /// session's state (another incarnation than before).
    pub(crate) fn on_up(&mut self, incarnation: u64) -> bool {
        match self.incarnation {
            None => {
                self.incarnation = Some(incarnation);
                false
            }
            Some(known) if known == incarnation => false,
            Some(_) => {
                self.incarnation = Some(incarnation);
                self.counts.restarts += 1;
                self.epoch += 1;
                self.switched_at = self.epoch;
                let files: Vec<u64> = self.map.keys().copied().collect();
                for file in files {
                    self.lost(file, false);
                }
                // Requests queued for the old state: a begin again replaced each; ends are
                // queued again once their file completes.
                let queued = std::mem::take(&mut self.to_send);
                self.requeue_in_order(queued, false);
                true
            }
        }
    }

    /// Jobs a connection gave back unanswered (it dropped), in their original order: sent
    /// again first, or held if their file is being begun again.
    pub(crate) fn requeue(&mut self, jobs: Vec<Job>) {
        self.requeue_in_order(jobs, true);
    }

    fn requeue_in_order(&mut self, jobs: impl IntoIterator<Item = Job>, front: bool) {
        let mut kept = VecDeque::new();
        for mut job in jobs {
            if front && job.again == Again::No {
                job.again = Again::Unanswered;
            }
            let file = job.file();
            let keep = match (&job.frame, file.and_then(|f| self.map.get_mut(&f))) {
                (Frame::Data { .. }, Some(FileState::Large(large))) => {
                    if large.ready {
                        job.epoch = large.begun;
                        true
                    } else {
                        if let Some(chunk) = job.hold.take() {
                            large.waiting.push((chunk, job.again));
                        }
                        false
                    }
                }
                (Frame::SmallFile { .. }, Some(FileState::SmallSent { .. })) => true,
                (Frame::FileBegin { .. }, Some(FileState::Large(large))) => {
                    !large.ready && job.epoch == large.begun
                }
                (
                    Frame::FileEnd { .. },
                    Some(FileState::Ending { .. } | FileState::Batched { .. }),
                ) => job.epoch >= self.switched_at,
                (Frame::Dir { .. } | Frame::Symlink { .. }, Some(FileState::Batched { .. })) => {
                    true
                }
                (Frame::Error { .. }, _) => true,
                _ => false,
            };
            if keep {
                kept.push_back(job);
            }
        }
        if front {
            while let Some(job) = kept.pop_back() {
                self.to_send.push_front(job);
            }
        } else {
            self.to_send.extend(kept);
        }
    }

    /// A result of the re-reader.
    pub(crate) fn on_reread(&mut self, result: Reread) {
        match result {
            Reread::Chunk { epoch, chunk } => {
                let Some(FileState::Large(large)) = self.map.get_mut(&chunk.file) else {
                    return;
                };
                if large.begun != epoch {
                    return; // begun again since: asked for again if still needed
                }
                large.rereading = large.rereading.saturating_sub(1);
                large.pending.insert(chunk.index);
                if large.ready {
                    self.to_send
                        .push_back(data_job(chunk, large.begun, Again::Reread));
                } else {
                    large.waiting.push((chunk, Again::Reread));
                }
            }
            // A small file's content does not depend on the receiver: whenever it comes, it
            // is sent.
            Reread::Whole { chunk, .. } => {
                let file = chunk.file;
                if let Some(FileState::SmallReread { entry, sent }) = self.map.remove(&file) {
                    let mut job = small_job(file, &entry, sent, Some(chunk), Again::Reread);
                    job.epoch = self.epoch;
                    self.to_send.push_back(job);
                    self.map.insert(file, FileState::SmallSent { entry, sent });
                } else if let Some(other) = self.map.remove(&file) {
                    self.map.insert(file, other);
                }
            }
            Reread::Failed { file, epoch, error } => {
                let current = match self.map.get(&file) {
                    Some(FileState::Large(large)) => large.begun == epoch,
                    Some(FileState::SmallReread { .. }) => true,
                    _ => false,
                };
                if current {
                    let message =
                        format!("the receiver lost it, and it cannot be read again: {error}");
                    self.on_failed(file, ErrorCode::Io as u16, message);
                }
            }
        }
    }

    /// Begins `file` (a large file in the map) again: what the receiver lacks is learnt from
    /// its `FileReady`. `counted`: toward [`MAX_BEGINS`] (a loss within one incarnation).
    fn begin_again(&mut self, file: u64, counted: bool) {
        let begins = match self.map.get(&file) {
            Some(FileState::Large(large)) => large.begins,
            _ => return,
        };
        if counted && begins >= MAX_BEGINS {
            let message = format!("the receiver lost this file {begins} times; giving up on it");
            self.on_failed(file, ErrorCode::Io as u16, message);
            return;
        }
        self.epoch += 1;
        // Chunks queued for the old begin wait for the new one; its requests are dropped.
        let mut held = Vec::new();
        self.to_send.retain_mut(|job| {
            let stale = job.file() == Some(file)
                && matches!(
                    job.frame,
                    Frame::Data { .. } | Frame::FileEnd { .. } | Frame::FileBegin { .. }
                );
            if let (true, Some(chunk)) = (stale, job.hold.take()) {
                held.push((chunk, job.again));
            }
            !stale
        });
        let Some(FileState::Large(large)) = self.map.get_mut(&file) else {
            return;
        };
        large.waiting.extend(held);
        large.begins += 1;
        large.ready = false;
        large.begun = self.epoch;
        large.lost = complement(large.next, &large.pending);
        large.rereading = 0;
        if let Some(token) = large.reread.take() {
            token.cancel();
        }
        let begin = begin_job(file, large, self.chunk_len);
        self.to_send.push_front(begin);
    }

    /// A large file whose end was out when the receiver lost it: begun again with every chunk
    /// to be read again (but those its `FileReady` says it has).
    fn insert_lost_large(
        &mut self,
        file: u64,
        entry: Arc<Entry>,
        size: u64,
        root: [u8; 32],
        resumed: u64,
    ) {
        let chunks = size.div_ceil(u64::from(self.chunk_len));
        let large = Large {
            entry,
            size,
            ready: true,
            have: 0,
            next: chunks,
            pending: Pending::default(),
            waiting: Vec::new(),
            lost: Vec::new(),
            rereading: 0,
            reread: None,
            root: Some(root),
            begun: self.epoch,
            begins: 1,
            resumed,
        };
        self.map.insert(file, FileState::Large(Box::new(large)));
        self.begin_again(file, false);
    }

    /// A small file, directory or link the receiver lost before making it durable.
    fn send_entry_again(&mut self, file: u64, entry: Arc<Entry>, sent: Sent) {
        if entry.kind == EntryKind::File {
            self.reread_small(file, entry, sent);
        } else {
            let mut job = entry_job(file, &entry);
            job.epoch = self.epoch;
            self.to_send.push_back(job);
            self.map.insert(file, FileState::Batched { entry, sent });
        }
    }

    fn reread_small(&mut self, file: u64, entry: Arc<Entry>, sent: Sent) {
        self.rereads.push_back(Request {
            file,
            epoch: self.epoch,
            entry: Arc::clone(&entry),
            size: sent.size,
            chunk_len: u64::from(self.chunk_len),
            what: What::Whole { root: sent.root },
            cancel: self.cancel.child_token(),
        });
        self.map
            .insert(file, FileState::SmallReread { entry, sent });
    }

    /// Asks the re-reader for the chunks `file` lacks, once its begin was answered.
    fn reread_lost(&mut self, file: u64) {
        let chunk_len = u64::from(self.chunk_len);
        let Some(FileState::Large(large)) = self.map.get_mut(&file) else {
            return;
        };
        if !large.ready {
            return;
        }
        trim(&mut large.lost, large.have);
        if large.lost.is_empty() {
            return;
        }
        let ranges = std::mem::take(&mut large.lost);
        large.rereading += ranges.iter().map(|r| r.end - r.start).sum::<u64>();
        let token = large
            .reread
            .get_or_insert_with(|| self.cancel.child_token())
            .clone();
        self.rereads.push_back(Request {
            file,
            epoch: large.begun,
            entry: Arc::clone(&large.entry),
            size: large.size,
            chunk_len,
            what: What::Chunks(ranges),
            cancel: token,
        });
    }

    /// Sends a large file's end once the receiver has every chunk.
    fn maybe_end(&mut self, file: u64) {
        let Some(FileState::Large(large)) = self.map.get(&file) else {
            return;
        };
        let complete = large.ready
            && large.pending.is_empty()
            && large.lost.is_empty()
            && large.rereading == 0;
        let (Some(root), true) = (large.root, complete) else {
            return;
        };
        let (entry, size, resumed) = (Arc::clone(&large.entry), large.size, large.resumed);
        self.to_send.push_back(file_end(file, root, large.begun));
        self.map.insert(
            file,
            FileState::Ending {
                entry,
                size,
                root,
                resumed,
            },
        );
    }
}

fn begin_job(file: u64, large: &Large, chunk_len: u32) -> Job {
    let mut job = Job::new(
        Frame::FileBegin {
            file,
            meta: meta_of(&large.entry, large.size),
            chunk_len,
        },
        None,
        Expect::Ready(file),
    );
    job.epoch = large.begun;
    job
}

fn data_job(chunk: Arc<Chunk>, epoch: u64, again: Again) -> Job {
    let (file, index) = (chunk.file, chunk.index);
    let mut job = Job::new(
        Frame::Data {
            file,
            index,
            cv: chunk.digest.chaining_value.unwrap_or([0; 32]),
            payload: chunk.data.clone(),
        },
        Some(chunk),
        Expect::Ack { file, index },
    );
    job.epoch = epoch;
    job.again = again;
    job
}

fn small_job(file: u64, entry: &Entry, sent: Sent, data: Option<Arc<Chunk>>, again: Again) -> Job {
    let payload = data.as_ref().map_or_else(Bytes::new, |c| c.data.clone());
    let mut job = Job::new(
        Frame::SmallFile {
            file,
            meta: meta_of(entry, sent.size),
            root: sent.root,
            payload,
        },
        data,
        Expect::Ack { file, index: 0 },
    );
    job.again = again;
    job
}

fn entry_job(file: u64, entry: &Entry) -> Job {
    let meta = meta_of(entry, 0);
    let frame = match &entry.kind {
        EntryKind::Symlink(target) => Frame::Symlink {
            file,
            meta,
            target: target.clone(),
        },
        _ => Frame::Dir { file, meta },
    };
    Job::new(frame, None, Expect::Done(file))
}

fn file_end(file: u64, root: [u8; 32], epoch: u64) -> Job {
    let mut job = Job::new(Frame::FileEnd { file, root }, None, Expect::Done(file));
    job.epoch = epoch;
    job
}

#[cfg(test)]
mod tests {
    //! The ledger driven with events and answers, no socket: what goes out when.

    use super::*;
    use crate::pipeline::budget::Budget;
    use crate::pipeline::hash::digest;
    use crate::source::Input;

    const LEN: u32 = 16 * 1024;

    fn entry(rel: &str, size: u64, kind: EntryKind) -> Arc<Entry> {
        Arc::new(Entry {
            input: Input::Path(rel.into()),
            rel: rel.as_bytes().to_vec(),
            kind,
            size,
            mode: 0o644,
            mtime_ns: 0,
        })
    }

    fn chunk(budget: &Budget, file: u64, index: u64) -> Arc<Chunk> {
        let data = Bytes::from(vec![index as u8; LEN as usize]);
        let offset = index * u64::from(LEN);
        Arc::new(Chunk {
            file,
            index,
            offset,
            digest: digest(offset, &data),
            data,
            permit: budget.try_acquire(LEN as usize).unwrap(),
            release: false,
        })
    }

    /// Takes what is queued, as a connection would.
    fn take(files: &mut Files) -> Vec<Job> {
        files.to_send.drain(..).collect()
    }

    fn kinds(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| match &j.frame {
                Frame::FileBegin { .. } => "begin".to_string(),
                Frame::Data { index, .. } => format!("data {index} {:?}", j.again),
                Frame::FileEnd { .. } => "end".to_string(),
                Frame::SmallFile { .. } => format!("small {:?}", j.again),
                Frame::Dir { .. } => "dir".to_string(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn chunks_asked(files: &mut Files) -> Vec<Vec<Range<u64>>> {
        files
            .rereads
            .drain(..)
            .map(|r| match r.what {
                What::Chunks(ranges) => ranges,
                What::Whole { .. } => Vec::new(),
            })
            .collect()
    }

    /// A large file of 8 chunks begun at incarnation 1, chunks `0..sent` given and sent.
    fn large_in_flight(budget: &Budget, sent: u64) -> (Files, Vec<Job>) {
        let mut files = Files::new(LEN, CancellationToken::new());
        assert!(!files.on_up(1));
        files.on_event(DestEvent::Start {
            file: 1,
            entry: entry("big", 8 * u64::from(LEN), EntryKind::File),
            size: 8 * u64::from(LEN),
        });
        assert_eq!(kinds(&take(&mut files)), ["begin"]);
        files.on_ready(1, 0, 1);
        for index in 0..sent {
            files.on_event(DestEvent::Chunk(chunk(budget, 1, index)));
        }
        let jobs = take(&mut files);
        assert_eq!(jobs.len() as u64, sent);
        (files, jobs)
    }

    #[test]
    fn ranges_left_out() {
        let mut pending = Pending::default();
        for i in [7, 2, 3, 3] {
            pending.insert(i);
        }
        assert_eq!(pending.0, [2, 3, 7]);
        assert_eq!(complement(9, &pending), [0..2, 4..7, 8..9]);
        assert_eq!(complement(3, &pending), vec![Range { start: 0, end: 2 }]);
        pending.remove(3);
        pending.remove(4);
        assert_eq!(pending.0, [2, 7]);
        let mut ranges = vec![0..2, 4..7, 8..9];
        trim(&mut ranges, 5);
        assert_eq!(ranges, [5..7, 8..9]);
    }

    #[test]
    fn a_restarted_receiver_gets_a_new_begin_and_only_the_chunks_it_lost() {
        let budget = Budget::new(1 << 20);
        let (mut files, jobs) = large_in_flight(&budget, 6);
        let mut jobs = jobs.into_iter();
        // Chunks 0..4 acknowledged; 4 and 5 unanswered when the receiver went down.
        for job in jobs.by_ref().take(4) {
            let Expect::Ack { index, .. } = job.expect else {
                panic!()
            };
            files.on_ack(1, index, u64::from(LEN), Again::No, 1);
        }
        files.requeue(jobs.collect());

        // The receiver comes back as another incarnation; its journal had chunks 0..2.
        assert!(files.on_up(2));
        assert_eq!(files.counts.restarts, 1);
        assert_eq!(
            kinds(&take(&mut files)),
            ["begin"],
            "chunks wait for the begin"
        );
        files.on_ready(1, 2, 2);
        assert_eq!(
            kinds(&take(&mut files)),
            ["data 4 Unanswered", "data 5 Unanswered"]
        );
        assert_eq!(
            chunks_asked(&mut files),
            [vec![Range { start: 2, end: 4 }]],
            "read again: 2 and 3"
        );

        // The re-read chunks go out; the rest of the file follows; the end waits for all.
        let epoch = files.epoch;
        for index in 2..4 {
            files.on_reread(Reread::Chunk {
                epoch,
                chunk: chunk(&budget, 1, index),
            });
        }
        for index in 6..8 {
            files.on_event(DestEvent::Chunk(chunk(&budget, 1, index)));
        }
        files.on_event(DestEvent::End {
            file: 1,
            root: [9; 32],
        });
        let jobs = take(&mut files);
        assert_eq!(
            kinds(&jobs),
            ["data 2 Reread", "data 3 Reread", "data 6 No", "data 7 No"]
        );
        for index in [2, 3, 4, 5, 6, 7] {
            assert!(files.to_send.is_empty(), "no end before chunk {index}");
            let again = match index {
                2 | 3 => Again::Reread,
                4 | 5 => Again::Unanswered,
                _ => Again::No,
            };
            files.on_ack(1, index, u64::from(LEN), again, 2);
        }
        assert_eq!(kinds(&take(&mut files)), ["end"]);
        files.on_done(1);
        assert!(files.is_empty());
        let c = &files.counts;
        assert_eq!(
            c.bytes_resent,
            4 * u64::from(LEN),
            "2 read again, 2 unanswered"
        );
        assert_eq!(c.bytes_acked, 8 * u64::from(LEN), "each chunk counted once");
        drop(jobs); // as the connections do once answered
        assert_eq!(budget.in_flight_bytes(), 0, "no chunk memory kept");
    }

    #[test]
    fn an_ack_from_a_state_that_is_gone_reads_that_chunk_again() {
        let budget = Budget::new(1 << 20);
        let (mut files, jobs) = large_in_flight(&budget, 3);
        assert!(files.on_up(2));
        assert_eq!(kinds(&take(&mut files)), ["begin"]);
        // An answer from the old receiver still arriving: chunk 1 is gone with it. Chunks 0
        // and 2 are still held by their jobs.
        let _held = jobs;
        files.on_ack(1, 1, u64::from(LEN), Again::No, 1);
        files.on_ready(1, 0, 2);
        assert_eq!(chunks_asked(&mut files), [vec![Range { start: 1, end: 2 }]]);
    }

    #[test]
    fn missing_after_the_begin_was_answered_begins_again_a_late_one_only_resends() {
        let budget = Budget::new(1 << 20);
        let (mut files, jobs) = large_in_flight(&budget, 2);
        let mut jobs = jobs.into_iter();
        // A late answer (the job was queued before the latest begin): sent again as is.
        let mut stale = jobs.next().unwrap();
        stale.epoch = 0;
        files.on_missing(1, Some(stale), 1);
        assert_eq!(
            kinds(&files.to_send.make_contiguous()[..]),
            ["data 0 Unanswered"]
        );
        let _in_flight = take(&mut files);
        // An answer to a chunk sent after `FileReady`: the receiver lost the file. Chunk 0
        // is still held (in flight), so nothing needs reading again.
        files.on_missing(1, jobs.next(), 1);
        assert_eq!(kinds(&take(&mut files)), ["begin"]);
        files.on_ready(1, 0, 1);
        assert_eq!(kinds(&take(&mut files)), ["data 1 Unanswered"]);
        assert!(chunks_asked(&mut files).is_empty());
    }

    #[test]
    fn a_file_lost_again_and_again_fails() {
        let budget = Budget::new(1 << 20);
        let (mut files, jobs) = large_in_flight(&budget, 1);
        let mut job = jobs.into_iter().next();
        for _ in 0..MAX_BEGINS {
            files.on_missing(1, job.take(), 1);
            take(&mut files);
            files.on_ready(1, 0, 1);
            job = take(&mut files).into_iter().next();
        }
        assert!(files.is_empty());
        assert_eq!(files.counts.files_failed.len(), 1);
        assert!(files.counts.files_failed[0].1.contains("lost this file"));
    }

    #[test]
    fn small_files_and_directories_not_yet_durable_are_sent_again() {
        let budget = Budget::new(1 << 20);
        let mut files = Files::new(LEN, CancellationToken::new());
        files.on_up(1);
        files.on_event(DestEvent::Entry {
            file: 1,
            entry: entry("d", 0, EntryKind::Dir),
        });
        files.on_event(DestEvent::Start {
            file: 2,
            entry: entry("d/s", 100, EntryKind::File),
            size: 100,
        });
        files.on_event(DestEvent::Chunk(chunk(&budget, 2, 0)));
        files.on_event(DestEvent::End {
            file: 2,
            root: [5; 32],
        });
        assert_eq!(kinds(&take(&mut files)), ["dir", "small No"]);
        files.on_ack(2, 0, 100, Again::No, 1);
        assert!(files.only_batched());
        assert!(files.on_up(2));
        assert_eq!(kinds(&take(&mut files)), ["dir"]);
        let request = files.rereads.pop_front().unwrap();
        assert!(matches!(request.what, What::Whole { root } if root == [5; 32]));
        assert_eq!(request.size, u64::from(LEN), "the size it was sent with");
        files.on_reread(Reread::Whole {
            chunk: chunk(&budget, 2, 0),
        });
        assert_eq!(kinds(&take(&mut files)), ["small Reread"]);
        files.on_done(1);
        files.on_done(2);
        assert!(files.is_empty());
    }
}

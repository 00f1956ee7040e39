//! Files of more than one chunk: `FileBegin` opens (or resumes) a partial file with its
//! journal, each `Data` frame is verified against its chaining value and written at its
//! offset, and `FileEnd` checks the root, makes the file durable and renames it into place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use super::place::PlaceError;
use super::{error_frame, Context, Session};
use crate::pipeline::hash::digest;
use crate::protocol::{ErrorCode, Frame, Meta};
use crate::server::journal::{self, Identity, Journal};
use crate::server::verified::{Recorded, Verified};
use crate::server::writer::PartialFile;

/// A file of more than one chunk being received.
#[derive(Debug)]
pub(super) struct LargeFile {
    pub(super) partial: PartialFile,
    size: u64,
    chunk_len: u64,
    mtime_ns: i64,
    /// Its resume journal; `None` when another transfer held the target's (then the partial
    /// file is private to this session and not resumable).
    journal: Option<Journal>,
    /// Verified chunks, folded into the root as they complete (memory bounded by the
    /// sender's in-flight window, not by the file's size).
    verified: Mutex<Verified>,
    /// Held while a chunk is written.
    writing: Mutex<()>,
    /// What of it has not arrived yet, counted against the receiver's limits.
    unfinished: Unfinished,
}

/// Bytes of a large file announced and not yet received, counted in the server's total
/// ([`Context::unfinished`]) from its begin until the file is dropped, whichever way it ends.
#[derive(Debug)]
pub(super) struct Unfinished {
    total: Arc<AtomicU64>,
    left: AtomicU64,
}

impl Unfinished {
    /// Counts `bytes` more in `total`; returns the reservation and the total with it.
    fn reserve(total: &Arc<AtomicU64>, bytes: u64) -> (Self, u64) {
        let before = total.fetch_add(bytes, Ordering::AcqRel);
        let reserved = Unfinished {
            total: Arc::clone(total),
            left: AtomicU64::new(bytes),
        };
        (reserved, before.saturating_add(bytes))
    }

    /// `bytes` of the file arrived (or were there already).
    fn received(&self, bytes: u64) {
        let taken = self
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                Some(left.saturating_sub(bytes))
            })
            .map_or(0, |before| before.min(bytes));
        self.total.fetch_sub(taken, Ordering::AcqRel);
    }

    pub(super) fn left(&self) -> u64 {
        self.left.load(Ordering::Acquire)
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.total.fetch_sub(*self.left.get_mut(), Ordering::AcqRel);
    }
}

impl LargeFile {
    fn identity(&self) -> Identity {
        Identity {
            size: self.size,
            chunk_len: self.chunk_len,
            mtime_ns: self.mtime_ns,
        }
    }

    /// Chunks `0..have` are verified (all of them resumed from an earlier transfer, for a
    /// file just begun).
    pub(super) fn have(&self) -> u64 {
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next()
    }

    /// Deletes the partial file and its journal: the data is wrong or the sender gave up.
    pub(super) fn abandon(&self) {
        self.partial.abandon();
        if let Some(journal) = &self.journal {
            journal.remove();
        }
    }

    /// Keeps what is verified for a later transfer (the sender went away). Blocking.
    pub(super) fn suspend(&self) {
        match &self.journal {
            Some(journal) => journal.suspend(&self.partial),
            None => self.partial.abandon(),
        }
    }
}

/// `FileBegin`: opens the file's partial file (resuming what its journal says is verified)
/// and answers `FileReady` with how many leading chunks the receiver already has.
pub(super) async fn begin(
    file: u64,
    meta: Meta,
    chunk_len: u32,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
) -> Frame {
    let opts = &ctx.options;
    {
        let s = session.lock();
        if s.done.contains(file) {
            return Frame::FileDone { file };
        }
        if let Some(large) = s.large.get(&file) {
            return Frame::FileReady {
                file,
                have: large.have(),
            };
        }
    }
    if !chunk_len.is_power_of_two() || chunk_len < 16 * 1024 || chunk_len > opts.max_chunk_len {
        return error_frame(
            file,
            ErrorCode::Limit,
            format!(
                "chunk size {chunk_len} not accepted: this receiver takes powers of two from 16 KiB \
                 to {} bytes (lower send's --chunk-size, or raise serve's --max-chunk)",
                opts.max_chunk_len
            ),
        );
    }
    if meta.size > opts.max_file_size {
        return error_frame(
            file,
            ErrorCode::Limit,
            format!(
                "file of {} bytes exceeds the limit of {} bytes",
                meta.size, opts.max_file_size
            ),
        );
    }
    let chunks = meta.size.div_ceil(u64::from(chunk_len));
    if chunks < 2 {
        return error_frame(
            file,
            ErrorCode::Protocol,
            "a file of one chunk must be sent as a small file",
        );
    }
    let reserved = match admit(file, meta.size, ctx, session) {
        Ok(reserved) => reserved,
        Err(refused) => return refused,
    };
    let (size, mode, mtime_ns) = (meta.size, meta.mode, meta.mtime_ns);
    let id = Identity {
        size,
        chunk_len: u64::from(chunk_len),
        mtime_ns,
    };
    let large = match open_large(ctx, session, file, meta.path, id, mode, reserved).await {
        Ok(large) => large,
        Err(e) => return e.frame(file),
    };
    let ours = session
        .lock()
        .large
        .get(&file)
        .is_some_and(|l| Arc::ptr_eq(l, &large));
    let large = if ours {
        large
    } else {
        match fits(file, large, ctx).await {
            Ok(large) => large,
            Err(refused) => return refused,
        }
    };
    // A repeated begin that raced this one may have got there first: keep that one, and
    // drop this one's partial file if it made its own.
    let (kept, extra) = {
        let mut s = session.lock();
        let kept = Arc::clone(s.large.entry(file).or_insert_with(|| Arc::clone(&large)));
        (kept, large)
    };
    if !Arc::ptr_eq(&kept, &extra) && kept.partial.path() != extra.partial.path() {
        extra.abandon();
    }
    session.progressed();
    Frame::FileReady {
        file,
        have: kept.have(),
    }
}

/// Checks a new large file of `size` bytes against the receiver's limits: files open in the
/// session, bytes unfinished in the session and overall, and free space. Returns its bytes'
/// reservation in the overall count, or the refusal to answer.
fn admit(
    file: u64,
    size: u64,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
) -> Result<Unfinished, Frame> {
    let opts = &ctx.options;
    let refuse = |why: String| Err(error_frame(file, ErrorCode::Limit, why));
    let (open, left) = {
        let s = session.lock();
        let left: u64 = s.large.values().map(|l| l.unfinished.left()).sum();
        (s.large.len(), left)
    };
    if open >= opts.max_open_files {
        return refuse(format!(
            "this transfer has {open} large files open on the receiver, its limit (serve's \
             --max-open-files raises it)"
        ));
    }
    if left.saturating_add(size) > opts.max_session_unfinished_bytes {
        return refuse(format!(
            "this transfer would have more than {} bytes of files begun and not yet sent \
             (serve's --max-session-unfinished raises the limit)",
            opts.max_session_unfinished_bytes
        ));
    }
    let (reserved, total) = Unfinished::reserve(&ctx.unfinished, size);
    if total > opts.max_unfinished_bytes {
        return refuse(format!(
            "the receiver would have more than {} bytes of files begun and not yet received \
             (serve's --max-unfinished raises the limit)",
            opts.max_unfinished_bytes
        ));
    }
    Ok(reserved)
}

/// Whether what `large` still lacks fits in the free space, with everything promised to the
/// other files being received; if not, it is put aside (what a resumed file has is kept for a
/// later transfer) and the refusal is returned.
async fn fits(
    file: u64,
    large: Arc<LargeFile>,
    ctx: &Arc<Context>,
) -> Result<Arc<LargeFile>, Frame> {
    let left = large.unfinished.left();
    let others = ctx.unfinished.load(Ordering::Acquire).saturating_sub(left);
    let Err(e) = ctx.space.admit(others, left) else {
        return Ok(large);
    };
    let _ = tokio::task::spawn_blocking(move || {
        if large.have() == 0 {
            large.abandon();
        } else {
            large.suspend();
        }
    })
    .await;
    Err(error_frame(file, ErrorCode::Limit, e))
}

/// A chunk of a large file: verified against its chaining value, written at its offset,
/// noted in the journal, acknowledged.
pub(super) async fn data(
    file: u64,
    index: u64,
    cv: [u8; 32],
    payload: Bytes,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
) -> Vec<Frame> {
    let large = session.lock().large.get(&file).cloned();
    let Some(large) = large else {
        if session.lock().done.contains(file) {
            return vec![Frame::Ack { file, index }];
        }
        // Not a failure: the sender begins the file again (this receiver may have restarted
        // since, or dropped the session).
        return vec![error_frame(
            file,
            ErrorCode::Missing,
            "data for a file this receiver has not begun (in this session)",
        )];
    };
    let offset = index
        .checked_mul(large.chunk_len)
        .filter(|&o| o < large.size);
    let Some(offset) = offset else {
        return vec![fail_large(
            session,
            file,
            ErrorCode::Protocol,
            "chunk index out of range",
        )];
    };
    let expected = (large.size - offset).min(large.chunk_len);
    if payload.len() as u64 != expected {
        return vec![fail_large(
            session,
            file,
            ErrorCode::Protocol,
            "chunk has the wrong length",
        )];
    }
    {
        let v = large
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if v.has(index) {
            // A resend of a chunk already verified and written.
            return vec![Frame::Ack { file, index }];
        }
        if !v.accepts(index) {
            drop(v);
            return vec![fail_large(
                session,
                file,
                ErrorCode::Limit,
                format!("chunk {index} is too far ahead of the first missing one"),
            )];
        }
    }
    let writing = Arc::clone(&large);
    let outcome = ctx
        .pool
        .run(move || {
            if digest(offset, &payload).chaining_value != Some(cv) {
                return Err(None::<std::io::Error>);
            }
            // One writer per file at a time: the kernel serialises buffered writes to
            // a file anyway, and a second writer would spin on its lock, burning the
            // core the sender or the hashing needs, instead of sleeping.
            let _one = writing
                .writing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            writing.partial.write_at(offset, &payload).map_err(Some)?;
            writing
                .partial
                .start_writeback(offset, payload.len() as u64);
            Ok(())
        })
        .await;
    match outcome {
        Ok(()) => {
            let recorded = large
                .verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(index, cv);
            match recorded {
                Recorded::New => {
                    session.progressed();
                    large.unfinished.received(expected);
                    if let Err(e) = journal_chunk(&large, index, cv, expected).await {
                        return vec![fail_large(session, file, ErrorCode::Io, e)];
                    }
                    vec![Frame::Ack { file, index }]
                }
                Recorded::Repeat => vec![Frame::Ack { file, index }],
                Recorded::TooFarAhead => vec![fail_large(
                    session,
                    file,
                    ErrorCode::Limit,
                    "chunk too far ahead",
                )],
            }
        }
        Err(None) => vec![fail_large(
            session,
            file,
            ErrorCode::Hash,
            format!("chunk {index} failed BLAKE3 verification"),
        )],
        Err(Some(e)) => vec![fail_large(session, file, ErrorCode::Io, e)],
    }
}

/// The end of a large file: answered once its root is verified and it is in place.
pub(super) async fn end(
    file: u64,
    root: [u8; 32],
    ctx: &Arc<Context>,
    session: &Arc<Session>,
) -> Vec<Frame> {
    let large = {
        let mut s = session.lock();
        if s.done.contains(file) {
            return vec![Frame::FileDone { file }];
        }
        if s.committing.contains(&file) || s.batch.contains(file) {
            // Answered with `FileDone` when its commit or flush completes.
            return Vec::new();
        }
        let Some(large) = s.large.get(&file) else {
            return vec![error_frame(
                file,
                ErrorCode::Missing,
                "end of a file this receiver has not begun (in this session)",
            )];
        };
        // An end sent before this receiver had every chunk (one the sender wrongly took as
        // delivered, say, acknowledged by a receiver that restarted since): the file is kept,
        // and the sender begins it again to learn what is there.
        let have = large.have();
        if have < large.size.div_ceil(large.chunk_len) {
            return vec![error_frame(
                file,
                ErrorCode::Missing,
                format!("end of a file whose chunk {have} this receiver does not have"),
            )];
        }
        let large = s.large.remove(&file);
        if large.is_some() {
            s.committing.insert(file);
        }
        large
    };
    let Some(large) = large else {
        return Vec::new();
    };
    let told = ctx
        .events
        .on()
        .then(|| (large.partial.target().to_path_buf(), large.size));
    let reply = end_large(file, root, large, &ctx.root).await;
    let mut s = session.lock();
    s.committing.remove(&file);
    if matches!(reply, Frame::FileDone { .. }) {
        session.progressed();
        s.done.insert(file);
        if let Some((target, bytes)) = told {
            ctx.events.received(&ctx.options.root, &target, bytes);
        }
    }
    vec![reply]
}

/// The client gave up on a file (its source failed): drop what we have of it.
pub(super) fn abandon(file: u64, session: &Arc<Session>) {
    let large = session.lock().large.remove(&file);
    if let Some(large) = large {
        large.abandon();
    }
}

/// Verifies a large file's root from its chunks' chaining values, then makes it durable and
/// renames it into place.
async fn end_large(
    file: u64,
    root: [u8; 32],
    large: Arc<LargeFile>,
    served: &Arc<crate::server::beneath::Root>,
) -> Frame {
    let Some(large) = released(large).await else {
        return error_frame(
            file,
            ErrorCode::Io,
            format!(
                "file ended while a chunk was still being written {}s later",
                RELEASE_WAIT.as_secs()
            ),
        );
    };
    let LargeFile {
        partial,
        journal,
        verified,
        ..
    } = large;
    let forget_journal = move || {
        if let Some(journal) = &journal {
            journal.remove();
        }
    };
    let built = verified
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .finish();
    if built != Some(blake3::Hash::from_bytes(root)) {
        partial.abandon();
        forget_journal();
        let why = if built.is_some() {
            "root hash mismatch"
        } else {
            "file ended with chunks missing"
        };
        return error_frame(file, ErrorCode::Hash, why);
    }
    let served = Arc::clone(served);
    let committed = tokio::task::spawn_blocking(move || {
        let target = partial.target().to_path_buf();
        let finished = partial.finish(true);
        // Committed or failed, the journal has served: a failed file is sent whole again.
        forget_journal();
        let finished = finished?;
        if let Err(e) = finished.put_in_place() {
            finished.abandon();
            return Err(e);
        }
        crate::server::writer::sync_dir(&served, target.parent().unwrap_or(&target))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match committed {
        Ok(()) => Frame::FileDone { file },
        Err(e) => error_frame(file, ErrorCode::Io, e),
    }
}

/// How long a file's end waits for the last chunk handler to let go of it, and how often
/// it looks.
const RELEASE_WAIT: Duration = Duration::from_secs(60);
const RELEASE_POLL: Duration = Duration::from_millis(10);

/// The file once no chunk handler holds it any more, or `None` (the file abandoned) when one
/// still does after [`RELEASE_WAIT`]. A holder is a handler of a connection that was cut
/// while it wrote a chunk the sender has since resent on another connection and seen
/// acknowledged: it is a write and a journal note away from letting go, and the file must
/// not be renamed into place under it.
async fn released(mut large: Arc<LargeFile>) -> Option<LargeFile> {
    let mut waited = Duration::ZERO;
    loop {
        match Arc::try_unwrap(large) {
            Ok(large) => return Some(large),
            Err(shared) if waited >= RELEASE_WAIT => {
                let _ = tokio::task::spawn_blocking(move || shared.abandon()).await;
                return None;
            }
            Err(shared) => large = shared,
        }
        tokio::time::sleep(RELEASE_POLL).await;
        waited += RELEASE_POLL;
    }
}

/// How often, and how far apart, a large file looks again for the session that holds its
/// journal to turn out gone: 5 s in all.
const TAKEOVER_TRIES: u32 = 100;
const TAKEOVER_POLL: Duration = Duration::from_millis(50);

/// Opens a large file's partial file: resumable, with what its journal says is already
/// verified; or taken over from a session whose sender went away; or, when another transfer
/// is writing the same target, a partial file of this session's own.
async fn open_large(
    ctx: &Arc<Context>,
    session: &Arc<Session>,
    file: u64,
    path: Vec<u8>,
    id: Identity,
    mode: u32,
    reserved: Unfinished,
) -> Result<Arc<LargeFile>, PlaceError> {
    let mut reserved = Some(reserved);
    let mut large = |partial, journal, verified: Verified| {
        let unfinished = reserved
            .take()
            .unwrap_or_else(|| Unfinished::reserve(&ctx.unfinished, id.size).0);
        // Chunks resumed from an earlier transfer are there already.
        unfinished.received(verified.next().saturating_mul(id.chunk_len));
        LargeFile {
            partial,
            size: id.size,
            chunk_len: id.chunk_len,
            mtime_ns: id.mtime_ns,
            journal,
            verified: Mutex::new(verified),
            writing: Mutex::new(()),
            unfinished,
        }
    };
    let mut tries = 0;
    loop {
        let root = Arc::clone(&ctx.root);
        let opened = ctx
            .place_blocking(path.clone(), move |target| {
                Ok(journal::open(&root, target.clone(), id, mode, id.mtime_ns)?.ok_or(target))
            })
            .await?;
        let target = match opened {
            Ok(r) => return Ok(Arc::new(large(r.partial, Some(r.journal), r.verified))),
            Err(target) => target,
        };
        // Held: by a session whose sender went away (take it over: the same file resumes
        // where it stopped, another one starts over), or by a live transfer. A sender killed
        // a moment ago may still count as live until its connections notice (one may be
        // busy writing a chunk): wait a little for that.
        let partial = crate::server::names::resumable_path(&target);
        match ctx.take_lingering(session, &partial) {
            Some(old) if old.identity() == id => return Ok(old),
            Some(old) => {
                let _ = tokio::task::spawn_blocking(move || old.abandon()).await;
            }
            None => {
                // A repeated `FileBegin` of this session racing the first one: that one
                // holds it.
                let mine = session.lock().large.get(&file).cloned();
                if let Some(large) = mine {
                    return Ok(large);
                }
                if tries < TAKEOVER_TRIES {
                    tries += 1;
                    tokio::time::sleep(TAKEOVER_POLL).await;
                    continue;
                }
                tracing::warn!(
                    path = %target.display(),
                    "another transfer is writing this file; receiving it without a resume journal"
                );
                break;
            }
        }
    }
    let tag = session.partial_tag();
    let mtime_ns = id.mtime_ns;
    let root = Arc::clone(&ctx.root);
    let partial = ctx
        .place_blocking(path, move |target| {
            PartialFile::create(&root, target, Some(id.size), mode, mtime_ns, &tag)
        })
        .await?;
    Ok(Arc::new(large(
        partial,
        None,
        Verified::new(id.size.div_ceil(id.chunk_len)),
    )))
}

/// Notes a verified chunk in its file's journal, flushing the file and appending the notes
/// when the journal says so (see [`journal::Noted`]); the chunk is acknowledged after.
async fn journal_chunk(
    large: &Arc<LargeFile>,
    index: u64,
    cv: [u8; 32],
    len: u64,
) -> std::io::Result<()> {
    let Some(journal) = &large.journal else {
        return Ok(());
    };
    if journal.note(index, &cv, len) == journal::Noted::Ack {
        return Ok(());
    }
    let large = Arc::clone(large);
    tokio::task::spawn_blocking(move || match &large.journal {
        Some(journal) => journal.flush(&large.partial),
        None => Ok(()),
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Drops what the session has of a large file, and says why to the client.
fn fail_large(
    session: &Arc<Session>,
    file: u64,
    code: ErrorCode,
    why: impl std::fmt::Display,
) -> Frame {
    abandon(file, session);
    error_frame(file, code, why)
}

//! One connection of a session: the handshake, then each frame checked against limits and
//! the session's state, and answered.
//!
//! A session (one transfer, identified by the id in `Hello`) may have many connections, and
//! connections may drop and come back: the session's state (files being received, files
//! done, the small-file batch) lives in [`Session`], shared by its connections, and every
//! request is idempotent so that a client can resend whatever was not answered.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::durability::{Batch, Flusher};
use super::inline::InlineGate;
use super::journal::{self, Identity, Journal};
use super::paths;
use super::staging::Staging;
use super::verified::{Recorded, Verified};
use super::writer::{make_dir, make_symlink, system_time, PartialFile};
use super::ServerOptions;
use crate::pipeline::hash::{digest, HashPool};
use crate::protocol::codec::LEN_PREFIX;
use crate::protocol::handshake::{random, ServerHandshake, ServerStep};
use crate::protocol::{ErrorCode, Frame, Meta};
use crate::transport::{FrameReader, FrameWriter, LinkError};

/// A file of more than one chunk being received.
#[derive(Debug)]
struct Large {
    partial: PartialFile,
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
}

impl Large {
    fn identity(&self) -> Identity {
        Identity {
            size: self.size,
            chunk_len: self.chunk_len,
            mtime_ns: self.mtime_ns,
        }
    }

    /// Chunks `0..have` are verified (all of them resumed from an earlier transfer, for a
    /// file just begun).
    fn have(&self) -> u64 {
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next()
    }

    /// Deletes the partial file and its journal: the data is wrong or the sender gave up.
    fn abandon(&self) {
        self.partial.abandon();
        if let Some(journal) = &self.journal {
            journal.remove();
        }
    }

    /// Keeps what is verified for a later transfer (the sender went away). Blocking.
    fn suspend(&self) {
        match &self.journal {
            Some(journal) => journal.suspend(&self.partial),
            None => self.partial.abandon(),
        }
    }
}

/// State shared by a session's connections.
#[derive(Debug, Default)]
pub(crate) struct Inner {
    large: HashMap<u64, Arc<Large>>,
    /// Large files between their `FileEnd` and their rename: a repeated end waits.
    committing: HashSet<u64>,
    /// Entries finished (see `done.rs`): a repeated request for one is answered at once.
    done: super::done::Done,
    batch: Batch,
    /// Directories to stamp with their mtime once everything inside is written.
    dirs: Vec<(PathBuf, u32, i64)>,
    pub(crate) connections: usize,
    pub(crate) last_active: Option<Instant>,
    pub(crate) finished: bool,
}

/// One transfer's state on the server.
#[derive(Debug)]
pub(crate) struct Session {
    tag: String,
    inner: Mutex<Inner>,
}

impl Inner {
    /// No file, directory or batch in progress and none finished: nothing to resume.
    fn holds_nothing(&self) -> bool {
        self.large.is_empty()
            && self.committing.is_empty()
            && self.done.is_empty()
            && self.batch.is_empty()
            && self.dirs.is_empty()
    }
}

impl Session {
    pub(crate) fn new(id: [u8; 16]) -> Self {
        let tag = id.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Session {
            tag,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends a session that will never finish: small files not yet flushed are deleted
    /// (they are sent whole anyway), large files are kept with their journals for a later
    /// transfer to resume. Blocking (flushes journals).
    pub(crate) fn suspend(&self) {
        let (large, batch) = {
            let mut inner = self.lock();
            let large: Vec<_> = inner.large.drain().map(|(_, l)| l).collect();
            (large, inner.batch.take())
        };
        for large in large {
            large.suspend();
        }
        batch.abandon();
    }
}

/// What a connection needs from its server.
pub(crate) struct Context {
    pub(crate) options: ServerOptions,
    pub(crate) pool: HashPool,
    pub(crate) sessions: Mutex<HashMap<[u8; 16], Arc<Session>>>,
    /// Checks and creates paths from the network (see [`Context::place`]).
    pub(crate) layout: Layout,
    /// Where small files are written (see `inline.rs`).
    pub(crate) inline: InlineGate,
    /// How small files wait for their flush (see `staging.rs`).
    pub(crate) staging: Staging,
    /// Flushes small files' batches (see `durability.rs`).
    pub(crate) flusher: Flusher,
}

/// Serialises changes to the shape of the served tree, and remembers the directories already
/// made or checked, so that the many files of one directory do not each check and create
/// their parents again.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    /// Shared while a file or directory is placed, exclusive while a symlink is.
    lock: RwLock<()>,
    /// Real directories inside the root, made or checked under `lock`. Cleared whenever a
    /// symlink is made, and when it grows past `MAX_KNOWN_DIRS`.
    known: Mutex<HashSet<PathBuf>>,
}

/// Directories remembered at most; then the set starts over.
const MAX_KNOWN_DIRS: usize = 16_384;

impl Layout {
    fn knows(&self, dir: &std::path::Path) -> bool {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(dir)
    }

    fn remember(&self, dir: &std::path::Path) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= MAX_KNOWN_DIRS {
            known.clear();
            known.shrink_to(0);
        }
        known.insert(dir.to_path_buf());
    }

    fn forget(&self, dir: &std::path::Path) {
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(dir);
    }

    fn forget_all(&self) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known.clear();
        known.shrink_to(0);
    }
}

/// Why a path from the network could not be created.
#[derive(Debug)]
pub(crate) enum PlaceError {
    Path(paths::PathError),
    Io(std::io::Error),
}

impl PlaceError {
    fn frame(self, file: u64) -> Frame {
        match self {
            PlaceError::Path(e) => error_frame(file, ErrorCode::BadPath, e),
            PlaceError::Io(e) => error_frame(file, ErrorCode::Io, e),
        }
    }
}

impl Context {
    /// Checks `raw` (see [`paths::resolve`]), makes its missing parent directories, and runs
    /// `create` on the checked path, all under the layout lock: shared for files and directories,
    /// exclusive for symlinks (`exclusive`). Blocking.
    ///
    /// `resolve` finds no symlink among the existing ancestors, and the missing ones are made as
    /// real directories; without the lock, a symlink made by another connection in between (at
    /// an ancestor that did not exist yet) would be followed out of the served directory. Only
    /// symlinks can turn a path that was safe into one that is not (no request deletes or renames
    /// a directory, and a symlink cannot replace one), so files and directories never wait for
    /// each other, and a parent once checked stays good until the next symlink.
    fn place<T>(
        &self,
        raw: &[u8],
        exclusive: bool,
        mut create: impl FnMut(PathBuf) -> std::io::Result<T>,
    ) -> Result<T, PlaceError> {
        let (layout, root) = (&self.layout, self.options.root.as_path());
        let (_shared, _exclusive);
        if exclusive {
            _exclusive = layout.lock.write().unwrap_or_else(PoisonError::into_inner);
        } else {
            _shared = layout.lock.read().unwrap_or_else(PoisonError::into_inner);
        }
        let target = paths::lexical(root, raw).map_err(PlaceError::Path)?;
        let parent = target.parent().unwrap_or(root);
        let prepare = || -> Result<(), PlaceError> {
            if parent != root {
                paths::check_ancestors(root, &target, raw).map_err(PlaceError::Path)?;
                std::fs::create_dir_all(parent).map_err(PlaceError::Io)?;
                layout.remember(parent);
            }
            Ok(())
        };
        let known = parent != root && layout.knows(parent);
        if !known {
            prepare()?;
        }
        let made = match create(target.clone()) {
            // A remembered directory that someone removed since: check and make it again.
            Err(e) if known && e.kind() == std::io::ErrorKind::NotFound => {
                layout.forget(parent);
                prepare()?;
                create(target)
            }
            other => other,
        }
        .map_err(PlaceError::Io);
        if exclusive {
            layout.forget_all();
        }
        made
    }

    /// [`Context::place`] on the blocking pool.
    async fn place_blocking<T: Send + 'static>(
        self: &Arc<Self>,
        raw: Vec<u8>,
        exclusive: bool,
        create: impl FnMut(PathBuf) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, PlaceError> {
        let ctx = Arc::clone(self);
        tokio::task::spawn_blocking(move || ctx.place(&raw, exclusive, create))
            .await
            .unwrap_or_else(|e| Err(PlaceError::Io(std::io::Error::other(e))))
    }
}

impl Context {
    /// The session `id` (created if new), with this connection counted in it. Counting under
    /// the map's lock means [`Context::forget`] never drops a session a connection is joining.
    fn attach(&self, id: [u8; 16]) -> Arc<Session> {
        let mut map = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let s = map.entry(id).or_insert_with(|| Arc::new(Session::new(id)));
        {
            let mut inner = s.lock();
            inner.connections += 1;
            inner.last_active = Some(Instant::now());
        }
        Arc::clone(s)
    }

    /// Takes the large file whose partial file is `partial` from a session other than `ours`
    /// that has no connection left (its sender went away), so that a new transfer of the same
    /// target can resume it instead of waiting for that session to expire.
    fn take_lingering(&self, ours: &Arc<Session>, partial: &std::path::Path) -> Option<Arc<Large>> {
        let map = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        for s in map.values().filter(|s| !Arc::ptr_eq(s, ours)) {
            let mut inner = s.lock();
            if inner.connections != 0 {
                continue;
            }
            let found = inner
                .large
                .iter()
                .find(|(_, l)| l.partial.path() == partial)
                .map(|(&f, _)| f);
            if let Some(f) = found {
                return inner.large.remove(&f);
            }
        }
        None
    }

    /// Counts a connection out of its session. A session left with nothing to resume
    /// (finished, or never began anything) is dropped with its last connection instead of
    /// being kept for `session_linger`: a client that comes back (say, its `Finished` was
    /// lost) gets a fresh session, and every request is idempotent.
    fn detach(&self, id: [u8; 16], session: &Arc<Session>) {
        let mut map = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let forget = {
            let mut s = session.lock();
            s.connections -= 1;
            s.last_active = Some(Instant::now());
            s.connections == 0 && (s.finished || s.holds_nothing())
        };
        if forget && map.get(&id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            map.remove(&id);
            shrink_sessions(&mut map);
        }
    }
}

/// Gives back the session map's spare room once it is mostly empty, so that a burst of
/// sessions (say, many clients resuming at once) does not hold its peak for good.
pub(crate) fn shrink_sessions(map: &mut HashMap<[u8; 16], Arc<Session>>) {
    if map.len() <= map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("handshake: {0}")]
    Handshake(#[from] crate::protocol::handshake::HandshakeError),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("server shutting down")]
    Shutdown,
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError::Link(LinkError::Io(e))
    }
}

fn error_frame(file: u64, code: ErrorCode, message: impl std::fmt::Display) -> Frame {
    Frame::Error {
        file,
        code: code as u16,
        message: message.to_string().into_bytes(),
    }
}

/// Serves one connection until it closes, fails, or the server shuts down.
pub(crate) async fn serve<R, W>(
    rd: R,
    wr: W,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let opts = &ctx.options;
    let max_frame = max_buffered(opts);
    // Until authenticated, a peer may only send small frames.
    let mut reader = FrameReader::new(rd, 256);
    let mut writer = FrameWriter::new(wr);
    let mut hs = ServerHandshake::new(opts.key.clone(), random()?);
    let deadline = opts.handshake_timeout;
    let session_id = loop {
        let Some(frame) = reader.next_within(deadline).await? else {
            return Ok(());
        };
        match hs.handle(&frame) {
            Ok(ServerStep::Reply(reply)) => writer.send(&reply).await?,
            Ok(ServerStep::Done(welcome, accepted)) => {
                writer.send(&welcome).await?;
                break accepted.session;
            }
            Err(e) => {
                let code = if matches!(e, crate::protocol::handshake::HandshakeError::BadKey) {
                    ErrorCode::Auth
                } else {
                    ErrorCode::Protocol
                };
                let _ = writer.send(&error_frame(u64::MAX, code, &e)).await;
                return Err(e.into());
            }
        }
    };
    reader.set_max_frame_len(max_frame);
    let session = ctx.attach(session_id);
    let result = frames(&mut reader, &mut writer, &ctx, &session, &shutdown).await;
    ctx.detach(session_id, &session);
    if let Err(ConnError::Link(LinkError::Decode(e))) = &result {
        let _ = writer
            .send(&error_frame(u64::MAX, ErrorCode::Protocol, e))
            .await;
    }
    if matches!(result, Err(ConnError::Shutdown)) {
        let _ = writer
            .send(&error_frame(
                u64::MAX,
                ErrorCode::Shutdown,
                "server shutting down",
            ))
            .await;
    }
    result
}

async fn frames<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
    shutdown: &CancellationToken,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let idle = ctx.options.idle_timeout;
    loop {
        // Frames already received are answered at once, and their replies (mostly
        // acknowledgements of a dozen bytes) go out together when the reader has to wait.
        let frame = match reader.next_buffered()? {
            Some(frame) => Some(frame),
            None => {
                writer.flush().await?;
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Err(ConnError::Shutdown),
                    frame = reader.next_within(idle) => frame?,
                }
            }
        };
        let Some(frame) = frame else {
            return Ok(());
        };
        session.lock().last_active = Some(Instant::now());
        for reply in handle(frame, ctx, session).await? {
            writer.queue(&reply).await?;
        }
    }
}

/// Answers one frame. Per-file problems become `Error` frames for that file; only protocol
/// violations end the connection.
pub(super) async fn handle(
    frame: Frame,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
) -> Result<Vec<Frame>, ConnError> {
    let opts = &ctx.options;
    match frame {
        Frame::FileBegin {
            file,
            meta,
            chunk_len,
        } => Ok(vec![begin(file, meta, chunk_len, ctx, session).await]),
        Frame::Data {
            file,
            index,
            cv,
            payload,
        } => {
            let large = session.lock().large.get(&file).cloned();
            let Some(large) = large else {
                if session.lock().done.contains(file) {
                    return Ok(vec![Frame::Ack { file, index }]);
                }
                return Ok(vec![error_frame(
                    file,
                    ErrorCode::Protocol,
                    "data for a file that was not begun",
                )]);
            };
            let offset = index
                .checked_mul(large.chunk_len)
                .filter(|&o| o < large.size);
            let Some(offset) = offset else {
                return Ok(vec![fail_large(
                    session,
                    file,
                    ErrorCode::Protocol,
                    "chunk index out of range",
                )]);
            };
            let expected = (large.size - offset).min(large.chunk_len);
            if payload.len() as u64 != expected {
                return Ok(vec![fail_large(
                    session,
                    file,
                    ErrorCode::Protocol,
                    "chunk has the wrong length",
                )]);
            }
            {
                let v = large
                    .verified
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if v.has(index) {
                    // A resend of a chunk already verified and written.
                    return Ok(vec![Frame::Ack { file, index }]);
                }
                if !v.accepts(index) {
                    drop(v);
                    return Ok(vec![fail_large(
                        session,
                        file,
                        ErrorCode::Limit,
                        format!("chunk {index} is too far ahead of the first missing one"),
                    )]);
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
                            if let Err(e) = journal_chunk(&large, index, cv, expected).await {
                                return Ok(vec![fail_large(session, file, ErrorCode::Io, e)]);
                            }
                            Ok(vec![Frame::Ack { file, index }])
                        }
                        Recorded::Repeat => Ok(vec![Frame::Ack { file, index }]),
                        Recorded::TooFarAhead => Ok(vec![fail_large(
                            session,
                            file,
                            ErrorCode::Limit,
                            "chunk too far ahead",
                        )]),
                    }
                }
                Err(None) => Ok(vec![fail_large(
                    session,
                    file,
                    ErrorCode::Hash,
                    format!("chunk {index} failed BLAKE3 verification"),
                )]),
                Err(Some(e)) => Ok(vec![fail_large(session, file, ErrorCode::Io, e)]),
            }
        }
        Frame::FileEnd { file, root } => {
            let large = {
                let mut s = session.lock();
                if s.done.contains(file) {
                    return Ok(vec![Frame::FileDone { file }]);
                }
                if s.committing.contains(&file) || s.batch.contains(file) {
                    // Answered with `FileDone` when its commit or flush completes.
                    return Ok(Vec::new());
                }
                let large = s.large.remove(&file);
                if large.is_some() {
                    s.committing.insert(file);
                }
                large
            };
            let Some(large) = large else {
                return Ok(vec![error_frame(
                    file,
                    ErrorCode::Protocol,
                    "end of a file that was not begun",
                )]);
            };
            let reply = end_large(file, root, large).await;
            let mut s = session.lock();
            s.committing.remove(&file);
            if matches!(reply, Frame::FileDone { .. }) {
                s.done.insert(file);
            }
            Ok(vec![reply])
        }
        Frame::SmallFile {
            file,
            meta,
            root: root_hash,
            payload,
        } => {
            {
                let s = session.lock();
                if s.done.contains(file) {
                    return Ok(vec![
                        Frame::Ack { file, index: 0 },
                        Frame::FileDone { file },
                    ]);
                }
                if s.batch.contains(file) {
                    return Ok(vec![Frame::Ack { file, index: 0 }]);
                }
            }
            if meta.size > opts.max_file_size {
                return Ok(vec![error_frame(file, ErrorCode::Limit, "file too large")]);
            }
            let tag = session.tag.clone();
            let bytes = payload.len() as u64;
            let placing = Arc::clone(ctx);
            // Not on the hashing pool: most of this is creating and writing the file, and the
            // hash of a small file takes microseconds. On this task while the filesystem is
            // fast, else on the blocking pool (see `inline.rs`).
            let written = ctx
                .inline
                .run(move || {
                    if blake3::hash(&payload) != blake3::Hash::from_bytes(root_hash) {
                        return Err(None);
                    }
                    let partial = placing
                        .place(&meta.path, false, |target| {
                            PartialFile::create_small(
                                target,
                                meta.mode,
                                meta.mtime_ns,
                                &tag,
                                &placing.staging,
                            )
                        })
                        .map_err(Some)?;
                    let written = partial.write_at(0, &payload);
                    match written.and(Ok(())) {
                        Ok(()) => partial.finish(false).map_err(|e| Some(PlaceError::Io(e))),
                        Err(e) => {
                            partial.abandon();
                            Err(Some(PlaceError::Io(e)))
                        }
                    }
                })
                .await
                .unwrap_or_else(|e| Err(Some(PlaceError::Io(e))));
            match written {
                Ok(finished) => {
                    let full = {
                        let mut s = session.lock();
                        s.batch.push(file, finished, bytes);
                        s.batch.is_full(opts.batch_files, opts.batch_bytes)
                    };
                    let mut replies = vec![Frame::Ack { file, index: 0 }];
                    if full {
                        replies.extend(flush(ctx, session).await);
                    }
                    Ok(replies)
                }
                Err(None) => Ok(vec![error_frame(
                    file,
                    ErrorCode::Hash,
                    "file failed BLAKE3 verification",
                )]),
                Err(Some(e)) => Ok(vec![e.frame(file)]),
            }
        }
        // A directory or symlink is confirmed with the small-file batch, once its parent
        // directory is durable: confirmed at once, it could be lost with the machine after
        // the sender had stopped asking for it.
        Frame::Dir { file, meta } => {
            if let Some(replies) = made_before(session, file) {
                return Ok(replies);
            }
            let (mode, mtime_ns) = (meta.mode, meta.mtime_ns);
            let made = ctx
                .place_blocking(meta.path, false, move |target| {
                    make_dir(&target, mode | 0o700).map(|()| target)
                })
                .await;
            match made {
                Ok(target) => {
                    session.lock().dirs.push((target.clone(), mode, mtime_ns));
                    Ok(batch_made(ctx, session, file, target).await)
                }
                Err(e) => Ok(vec![e.frame(file)]),
            }
        }
        Frame::Symlink { file, meta, target } => {
            if let Some(replies) = made_before(session, file) {
                return Ok(replies);
            }
            let tag = session.tag.clone();
            let made = ctx
                .place_blocking(meta.path, true, move |path| {
                    make_symlink(&path, &target, &tag).map(|()| path)
                })
                .await;
            match made {
                Ok(path) => Ok(batch_made(ctx, session, file, path).await),
                Err(e) => Ok(vec![e.frame(file)]),
            }
        }
        Frame::Error { file, .. } => {
            // The client gave up on a file (its source failed): drop what we have of it.
            let large = session.lock().large.remove(&file);
            if let Some(large) = large {
                large.abandon();
            }
            Ok(Vec::new())
        }
        Frame::Finish => {
            let mut replies = flush(ctx, session).await;
            let dirs = std::mem::take(&mut session.lock().dirs);
            // Deepest first, so stamping a parent is not undone by work in a child.
            let stamping = Arc::clone(ctx);
            let stamped = tokio::task::spawn_blocking(move || {
                let mut dirs = dirs;
                dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
                for (dir, mode, mtime) in &dirs {
                    // Checked to be a real directory when made; never follow a symlink
                    // that may have replaced it since.
                    if let Ok(f) = super::writer::open_dir_nofollow(dir) {
                        let _ = f.set_modified(system_time(*mtime));
                        let _ = f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                            mode & 0o7777,
                        ));
                    }
                }
                // One flush for all of them (one journal commit on ext4), not one each.
                if dirs.is_empty() {
                    Ok(())
                } else {
                    stamping
                        .flusher
                        .flush_dirs(dirs.iter().map(|(dir, _, _)| dir.as_path()))
                }
            })
            .await;
            match stamped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "flushing directory times failed"),
                Err(e) => tracing::warn!(error = %e, "stamping directory times failed"),
            }
            session.lock().finished = true;
            replies.push(Frame::Finished);
            Ok(replies)
        }
        Frame::Hello { .. } | Frame::Auth { .. } => {
            Err(ConnError::Protocol("handshake frame after the handshake"))
        }
        _ => Err(ConnError::Protocol("a frame only a server sends")),
    }
}

/// Verifies a large file's root from its chunks' chaining values, then makes it durable and
/// renames it into place.
async fn end_large(file: u64, root: [u8; 32], large: Arc<Large>) -> Frame {
    let large = match Arc::try_unwrap(large) {
        Ok(large) => large,
        Err(shared) => {
            shared.abandon();
            return error_frame(
                file,
                ErrorCode::Protocol,
                "file ended while chunks are still being written",
            );
        }
    };
    let Large {
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
        super::writer::sync_dir(target.parent().unwrap_or(&target))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    match committed {
        Ok(()) => Frame::FileDone { file },
        Err(e) => error_frame(file, ErrorCode::Io, e),
    }
}

async fn begin(
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
            format!("chunk size {chunk_len} not accepted"),
        );
    }
    if meta.size > opts.max_file_size {
        return error_frame(
            file,
            ErrorCode::Limit,
            format!("file of {} bytes exceeds the limit", meta.size),
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
    let (size, mode, mtime_ns) = (meta.size, meta.mode, meta.mtime_ns);
    let id = Identity {
        size,
        chunk_len: u64::from(chunk_len),
        mtime_ns,
    };
    let large = match open_large(ctx, session, file, meta.path, id, mode).await {
        Ok(large) => large,
        Err(e) => return e.frame(file),
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
    Frame::FileReady {
        file,
        have: kept.have(),
    }
}

/// How long a large file waits for a session that holds its journal to turn out gone.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

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
) -> Result<Arc<Large>, PlaceError> {
    let large = |partial, journal, verified| Large {
        partial,
        size: id.size,
        chunk_len: id.chunk_len,
        mtime_ns: id.mtime_ns,
        journal,
        verified: Mutex::new(verified),
        writing: Mutex::new(()),
    };
    let deadline = Instant::now() + TAKEOVER_WAIT;
    loop {
        let opened = ctx
            .place_blocking(path.clone(), false, move |target| {
                Ok(journal::open(target.clone(), id, mode, id.mtime_ns)?.ok_or(target))
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
        let partial = super::names::resumable_path(&target);
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
                if Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
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
    let tag = session.tag.clone();
    let mtime_ns = id.mtime_ns;
    let partial = ctx
        .place_blocking(path, false, move |target| {
            PartialFile::create(target, Some(id.size), mode, mtime_ns, &tag)
        })
        .await?;
    Ok(Arc::new(large(
        partial,
        None,
        Verified::new(id.size.div_ceil(id.chunk_len)),
    )))
}

/// Notes a verified chunk in its file's journal, and every [`journal::FLUSH_EVERY`] bytes
/// flushes the file and appends the notes.
async fn journal_chunk(
    large: &Arc<Large>,
    index: u64,
    cv: [u8; 32],
    len: u64,
) -> std::io::Result<()> {
    let Some(journal) = &large.journal else {
        return Ok(());
    };
    if !journal.note(index, &cv, len) {
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

fn fail_large(
    session: &Arc<Session>,
    file: u64,
    code: ErrorCode,
    why: impl std::fmt::Display,
) -> Frame {
    let large = session.lock().large.remove(&file);
    if let Some(large) = large {
        large.abandon();
    }
    error_frame(file, code, why)
}

/// The answer to a directory or symlink this session already made: `FileDone` once durable,
/// nothing while it waits in the batch (`FileDone` comes with it). `None`: not made yet.
fn made_before(session: &Arc<Session>, file: u64) -> Option<Vec<Frame>> {
    let s = session.lock();
    if s.done.contains(file) {
        Some(vec![Frame::FileDone { file }])
    } else if s.batch.contains(file) {
        Some(Vec::new())
    } else {
        None
    }
}

/// Puts a directory or symlink just made at `path` in the batch, committing the batch if
/// that filled it.
async fn batch_made(
    ctx: &Arc<Context>,
    session: &Arc<Session>,
    file: u64,
    path: std::path::PathBuf,
) -> Vec<Frame> {
    let full = {
        let mut s = session.lock();
        s.batch.push_made(file, path);
        s.batch
            .is_full(ctx.options.batch_files, ctx.options.batch_bytes)
    };
    if full {
        flush(ctx, session).await
    } else {
        Vec::new()
    }
}

/// Commits the session's small-file batch; answers `FileDone` or `Error` for each file.
async fn flush(ctx: &Arc<Context>, session: &Arc<Session>) -> Vec<Frame> {
    let batch = session.lock().batch.take();
    if batch.is_empty() {
        return Vec::new();
    }
    let committing = Arc::clone(ctx);
    let committed = tokio::task::spawn_blocking(move || {
        batch.commit(&committing.options.root, &committing.flusher)
    })
    .await;
    let Ok((done, failed)) = committed else {
        return vec![error_frame(
            u64::MAX,
            ErrorCode::Io,
            "flushing small files failed",
        )];
    };
    let mut s = session.lock();
    let mut replies = Vec::with_capacity(done.len() + failed.len());
    for file in done {
        s.done.insert(file);
        replies.push(Frame::FileDone { file });
    }
    for (file, e) in failed {
        replies.push(error_frame(file, ErrorCode::Io, e));
    }
    replies
}

/// Bytes a connection may buffer: one frame of the largest chunk plus its header.
pub(crate) fn max_buffered(opts: &ServerOptions) -> usize {
    opts.max_chunk_len as usize + 64 * 1024 + LEN_PREFIX
}

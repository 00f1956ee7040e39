//! A session: one transfer, identified by the id in `Hello`, with its state shared by all its
//! connections, and the dispatch of each request to its handler.
//!
//! A session may have many connections, and connections may drop and come back: the
//! session's state (files being received, files done, the small-file batch) lives in
//! [`Session`], and every request is idempotent so that a client can resend whatever was not
//! answered. The handlers take no socket and read no clock, so they are tested here with
//! frames in and frames out.
//!
//! - `connection.rs`: one connection: the handshake, then frames read, handled and answered.
//! - `place.rs`: creating checked paths from the network inside the served directory.
//! - `large.rs`: files of more than one chunk: begin, data, end, resume.
//! - `small.rs`: small files, directories and symlinks, confirmed with the batch's flush.
//! - `finish.rs`: the end of a transfer: the last flush and the directories' times.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::admission::{canonical, Admission, Refused};
use super::durability::{Batch, Flusher};
use super::inline::InlineGate;
use super::space::Space;
use super::staging::Staging;
use super::ServerOptions;
use crate::pipeline::hash::HashPool;
use crate::protocol::codec::LEN_PREFIX;
use crate::protocol::handshake::random;
use crate::protocol::{ErrorCode, Frame};
use crate::wire::LinkError;

mod connection;
mod finish;
mod large;
mod place;
mod small;

use crate::server::beneath::Root;
pub(crate) use connection::{serve, Conn};
use large::LargeFile;

/// State shared by a session's connections.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    large: HashMap<u64, Arc<LargeFile>>,
    /// Large files between their `FileEnd` and their rename: a repeated end waits.
    committing: HashSet<u64>,
    /// Entries finished (see `delivered.rs`): a repeated request for one is answered at once.
    done: crate::server::delivered::Delivered,
    batch: Batch,
    /// Directories to stamp with their mtime once everything inside is written, and the mode
    /// of those this transfer made (`None`: it was there before, and keeps its own). One
    /// record per path however often it is sent.
    dirs: HashMap<PathBuf, (Option<u32>, i64)>,
    /// What `dirs` costs, as counted against `max_dir_bytes`.
    dir_bytes: u64,
    pub(crate) connections: usize,
    pub(crate) last_active: Option<Instant>,
    pub(crate) finished: bool,
}

/// One transfer's state on the server.
#[derive(Debug)]
pub(crate) struct Session {
    /// The id its sender chose.
    pub(crate) id: [u8; 16],
    /// The address that began it, for the per-address session limit.
    owner: Option<IpAddr>,
    /// Counts what its connections got done (see [`Session::progressed`]).
    progress: AtomicU64,
    /// Random, so that nobody can put anything in a partial file's place beforehand; with
    /// `partials`, one name per partial file (see [`Session::partial_tag`]).
    tag: String,
    partials: AtomicU64,
    /// This state's id, announced in `Welcome`: a sender that sees it change knows the state
    /// it built up was lost (a restart, or a session dropped after `session_linger`).
    pub(crate) incarnation: u64,
    inner: Mutex<SessionState>,
}

impl SessionState {
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
    pub(crate) fn new(id: [u8; 16], incarnation: u64, owner: Option<IpAddr>) -> Self {
        let tag = random::<8>()
            .unwrap_or_else(|_| fallback_seed())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Session {
            id,
            owner,
            progress: AtomicU64::new(0),
            tag,
            partials: AtomicU64::new(0),
            incarnation,
            inner: Mutex::new(SessionState::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that a request did something new: a chunk or a small file written, a file
    /// begun or put in place, a directory or link made, the transfer finished. A connection
    /// whose session sees none of this for `idle_timeout` is closed, however many frames it
    /// sends (repeats and refusals change nothing).
    pub(super) fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// A tag no partial file had before: the session's random tag and a count. Partial files
    /// are created with `O_EXCL`, so a name taken (by a local user guessing it, say) fails
    /// that file instead of being written through.
    pub(super) fn partial_tag(&self) -> String {
        let n = self.partials.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.tag)
    }

    pub(super) fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
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
    /// The served directory, through which every path from the network is made (see
    /// `place.rs` and `beneath.rs`).
    pub(crate) root: Arc<Root>,
    /// Where small files are written (see `inline.rs`).
    pub(crate) inline: InlineGate,
    /// How small files wait for their flush (see `staging.rs`).
    pub(crate) staging: Staging,
    /// Flushes small files' batches (see `durability.rs`).
    pub(crate) flusher: Flusher,
    /// What a subscriber is told (see `events.rs`).
    pub(crate) events: crate::server::events::Events,
    /// Handshakes, connection slots and per-address counts (see `admission.rs`).
    pub(crate) admission: Arc<Admission>,
    /// Failed authentications per address (see `strikes.rs`).
    pub(crate) strikes: crate::server::strikes::Strikes,
    /// The TLS identity made when the server was bound.
    pub(crate) tls: crate::tls::ServerTls,
    /// Bytes announced by the large files being received and not yet received, over every
    /// session (see `large.rs`).
    pub(crate) unfinished: Arc<AtomicU64>,
    /// Free space, and the reserve new files leave (see `space.rs`).
    pub(crate) space: Space,
    /// Incarnations of this server's sessions: a random start, so that another process (a
    /// restart) gives other ones, then one more per session made.
    incarnations: AtomicU64,
}

impl Context {
    /// A receiver's shared state for `options`, with its small-file staging and flusher.
    pub(crate) fn new(
        options: ServerOptions,
        root: Arc<Root>,
        staging: Staging,
        flusher: Flusher,
        tls: crate::tls::ServerTls,
    ) -> Self {
        let admission = Arc::new(Admission::new(
            options.max_handshakes,
            options.max_connections,
            options.max_connections_per_address,
        ));
        Context {
            admission,
            strikes: crate::server::strikes::Strikes::new(
                options.auth_free_failures,
                options.auth_lockout,
            ),
            tls,
            unfinished: Arc::new(AtomicU64::new(0)),
            space: Space::new(&options.root, options.min_free_bytes),
            options,
            pool: HashPool::default(),
            sessions: Mutex::new(HashMap::new()),
            root,
            inline: InlineGate::default(),
            staging,
            flusher,
            events: crate::server::events::Events::default(),
            incarnations: AtomicU64::new(u64::from_le_bytes(
                random().unwrap_or_else(|_| fallback_seed()),
            )),
        }
    }
}

/// A start for incarnations when the kernel's random source fails: the time and the process
/// id, different for a restarted server all the same.
fn fallback_seed() -> [u8; 8] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes()
}

impl Context {
    /// The session `id` (created if new), with this connection counted in it. Counting under
    /// the map's lock means [`Context::forget`] never drops a session a connection is joining.
    /// A new session is refused past `max_sessions`, or `max_sessions_per_address` begun from
    /// `peer`'s address.
    fn attach(
        &self,
        id: [u8; 16],
        now: Instant,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<Session>, Refused> {
        let mut map = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let owner = peer.map(|p| canonical(p.ip()));
        if !map.contains_key(&id) {
            let limit = self.options.max_sessions;
            if map.len() >= limit {
                return Err(Refused::Sessions { limit });
            }
            if let Some(ip) = owner {
                let limit = self.options.max_sessions_per_address;
                if map.values().filter(|s| s.owner == Some(ip)).count() >= limit {
                    return Err(Refused::AddressSessions { ip, limit });
                }
            }
        }
        let s = map.entry(id).or_insert_with(|| {
            let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed);
            Arc::new(Session::new(id, incarnation, owner))
        });
        {
            let mut inner = s.lock();
            inner.connections += 1;
            inner.last_active = Some(now);
        }
        Ok(Arc::clone(s))
    }

    /// Takes the large file whose partial file is `partial` from a session other than `ours`
    /// that has no connection left (its sender went away), so that a new transfer of the same
    /// target can resume it instead of waiting for that session to expire.
    fn take_lingering(
        &self,
        ours: &Arc<Session>,
        partial: &std::path::Path,
    ) -> Option<Arc<LargeFile>> {
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
    fn detach(&self, id: [u8; 16], session: &Arc<Session>, now: Instant) {
        let mut map = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let forget = {
            let mut s = session.lock();
            s.connections -= 1;
            s.last_active = Some(now);
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
    #[error("refused: {0}")]
    Refused(#[from] Refused),
    #[error("refused: {0}")]
    Locked(String),
    #[error("closed in its handshake to make room for newer connections")]
    PushedOut,
    #[error("no progress for {0:?}")]
    Stalled(std::time::Duration),
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> Self {
        ConnError::Link(LinkError::Io(e))
    }
}

pub(super) fn error_frame(file: u64, code: ErrorCode, message: impl std::fmt::Display) -> Frame {
    Frame::Error {
        file,
        code: code as u16,
        message: message.to_string().into_bytes(),
    }
}

/// Answers one frame. Per-file problems become `Error` frames for that file; only protocol
/// violations end the connection.
pub(super) async fn handle(
    frame: Frame,
    ctx: &Arc<Context>,
    session: &Arc<Session>,
) -> Result<Vec<Frame>, ConnError> {
    match frame {
        Frame::FileBegin {
            file,
            meta,
            chunk_len,
        } => Ok(vec![
            large::begin(file, meta, chunk_len, ctx, session).await,
        ]),
        Frame::Data {
            file,
            index,
            cv,
            payload,
        } => Ok(large::data(file, index, cv, payload, ctx, session).await),
        Frame::FileEnd { file, root } => Ok(large::end(file, root, ctx, session).await),
        Frame::SmallFile {
            file,
            meta,
            root,
            payload,
        } => Ok(small::file(file, meta, root, payload, ctx, session).await),
        Frame::Dir { file, meta } => Ok(small::dir(file, meta, ctx, session).await),
        Frame::Symlink { file, meta, target } => {
            Ok(small::symlink(file, meta, target, ctx, session).await)
        }
        Frame::Error { file, .. } => {
            large::abandon(file, session);
            Ok(Vec::new())
        }
        Frame::Finish => Ok(finish::finish(ctx, session).await),
        Frame::Hello { .. } | Frame::Confirm { .. } => {
            Err(ConnError::Protocol("handshake frame after the handshake"))
        }
        _ => Err(ConnError::Protocol("a frame only a server sends")),
    }
}

/// Bytes a connection may buffer: one frame of the largest chunk plus its header.
pub(crate) fn max_buffered(opts: &ServerOptions) -> usize {
    opts.max_chunk_len as usize + 64 * 1024 + LEN_PREFIX
}

#[cfg(test)]
mod tests {
    //! The handlers driven with frames in and frames out: no socket, no wall clock (a wait
    //! is seen on a paused clock).

    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::pipeline::hash::digest;
    use crate::protocol::Meta;

    const CHUNK: usize = 16 * 1024;

    struct Receiver {
        dir: tempfile::TempDir,
        ctx: Arc<Context>,
        session: Arc<Session>,
    }

    impl Receiver {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("served");
            std::fs::create_dir(&root).unwrap();
            let staging = Staging::probe(&root, 16);
            let flusher = Flusher::open(&root).unwrap();
            let served = Root::open(&root).unwrap();
            let ctx = Arc::new(Context::new(
                ServerOptions::new(&root),
                served,
                staging,
                flusher,
                crate::tls::ServerTls::reused(),
            ));
            Receiver {
                dir,
                ctx,
                session: Arc::new(Session::new([7; 16], 1, None)),
            }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("served")
        }

        async fn send(&self, frame: Frame) -> Vec<Frame> {
            handle(frame, &self.ctx, &self.session).await.unwrap()
        }
    }

    fn meta(path: &str, size: usize) -> Meta {
        Meta {
            path: path.as_bytes().to_vec(),
            size: size as u64,
            mode: 0o640,
            mtime_ns: 1_700_000_000_000_000_000,
        }
    }

    fn code(frame: &Frame) -> Option<u16> {
        match frame {
            Frame::Error { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// The begin of `file`, a file called `big` of `len` bytes, in chunks of [`CHUNK`].
    fn begin(file: u64, len: usize) -> Frame {
        Frame::FileBegin {
            file,
            meta: meta("big", len),
            chunk_len: CHUNK as u32,
        }
    }

    /// Chunk `index` of `file`, whose content is `body`, as its sender sends it.
    fn chunk(file: u64, body: &[u8], index: usize) -> Frame {
        let offset = index * CHUNK;
        let part = &body[offset..body.len().min(offset + CHUNK)];
        Frame::Data {
            file,
            index: index as u64,
            cv: digest(offset as u64, part).chaining_value.unwrap(),
            payload: Bytes::copy_from_slice(part),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_file_is_confirmed_only_with_its_batch() {
        let r = Receiver::new();
        let body = data(5000);
        let small = Frame::SmallFile {
            file: 3,
            meta: meta("d/small", body.len()),
            root: *blake3::hash(&body).as_bytes(),
            payload: Bytes::from(body.clone()),
        };
        assert_eq!(
            r.send(small.clone()).await,
            [Frame::Ack { file: 3, index: 0 }]
        );
        assert!(
            !r.root().join("d/small").exists(),
            "visible before its flush"
        );
        assert_eq!(
            r.send(Frame::Finish).await,
            [Frame::FileDone { file: 3 }, Frame::Finished]
        );
        assert_eq!(std::fs::read(r.root().join("d/small")).unwrap(), body);
        // A resend after it was confirmed is answered from the session's record.
        assert_eq!(
            r.send(small).await,
            [
                Frame::Ack { file: 3, index: 0 },
                Frame::FileDone { file: 3 }
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_file_is_begun_written_verified_and_put_in_place() {
        let r = Receiver::new();
        let body = data(2 * CHUNK + 1000);
        assert_eq!(
            r.send(begin(0, body.len())).await,
            [Frame::FileReady { file: 0, have: 0 }]
        );
        for index in 0..body.len().div_ceil(CHUNK) {
            let frame = chunk(0, &body, index);
            let ack = Frame::Ack {
                file: 0,
                index: index as u64,
            };
            assert_eq!(r.send(frame.clone()).await, vec![ack.clone()]);
            // A resend of a verified chunk is acknowledged again, not written again.
            assert_eq!(r.send(frame).await, [ack]);
        }
        assert!(!r.root().join("big").exists(), "visible before its end");
        let end = Frame::FileEnd {
            file: 0,
            root: *blake3::hash(&body).as_bytes(),
        };
        assert_eq!(r.send(end.clone()).await, [Frame::FileDone { file: 0 }]);
        assert_eq!(std::fs::read(r.root().join("big")).unwrap(), body);
        assert_eq!(r.send(end).await, [Frame::FileDone { file: 0 }]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_that_fails_verification_fails_its_file_and_leaves_nothing() {
        let r = Receiver::new();
        let body = data(3 * CHUNK);
        r.send(begin(1, body.len())).await;
        let forged = Frame::Data {
            file: 1,
            index: 0,
            cv: [0xab; 32],
            payload: Bytes::copy_from_slice(&body[..CHUNK]),
        };
        let replies = r.send(forged).await;
        assert_eq!(
            replies.iter().map(code).collect::<Vec<_>>(),
            [Some(ErrorCode::Hash as u16)]
        );
        let left: Vec<_> = std::fs::read_dir(r.root()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_out_of_order_or_outside_the_root_are_refused_per_file() {
        let r = Receiver::new();
        let stray = Frame::Data {
            file: 9,
            index: 0,
            cv: [0; 32],
            payload: Bytes::from_static(b"x"),
        };
        // Data for a file this receiver never began: the sender is told to begin it again.
        let refused = r.send(stray).await;
        assert_eq!(
            refused.iter().map(code).collect::<Vec<_>>(),
            [Some(ErrorCode::Missing as u16)]
        );
        let escaping = Frame::SmallFile {
            file: 2,
            meta: meta("../outside", 1),
            root: *blake3::hash(b"x").as_bytes(),
            payload: Bytes::from_static(b"x"),
        };
        let refused = r.send(escaping).await;
        assert_eq!(
            refused.iter().map(code).collect::<Vec<_>>(),
            [Some(ErrorCode::BadPath as u16)]
        );
        assert!(!r.dir.path().join("outside").exists());
        // A handshake frame after the handshake ends the connection.
        let hello = handle(
            Frame::Hello {
                version: 3,
                session: [0; 16],
                pake: bytes::Bytes::new(),
            },
            &r.ctx,
            &r.session,
        )
        .await;
        assert!(matches!(hello, Err(ConnError::Protocol(_))), "{hello:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_end_before_every_chunk_keeps_the_file_and_asks_for_a_new_begin() {
        let r = Receiver::new();
        let body = data(3 * CHUNK);
        let begin = begin(1, body.len());
        r.send(begin.clone()).await;
        r.send(chunk(1, &body, 0)).await;
        r.send(chunk(1, &body, 2)).await;
        let root = *blake3::hash(&body).as_bytes();
        let early = r.send(Frame::FileEnd { file: 1, root }).await;
        assert_eq!(
            early.iter().map(code).collect::<Vec<_>>(),
            [Some(ErrorCode::Missing as u16)]
        );
        // Begun again: what it has is said, and the missing chunk completes the file.
        assert_eq!(r.send(begin).await, [Frame::FileReady { file: 1, have: 1 }]);
        r.send(chunk(1, &body, 1)).await;
        assert_eq!(
            r.send(Frame::FileEnd { file: 1, root }).await,
            [Frame::FileDone { file: 1 }]
        );
        assert_eq!(std::fs::read(r.root().join("big")).unwrap(), body);
    }

    /// File 4 begun and every chunk of it acknowledged; its body, and what a handler of a
    /// connection cut while it wrote one of those chunks (resent and acknowledged on another
    /// connection since) still holds.
    async fn every_chunk_acknowledged_one_still_held(r: &Receiver) -> (Vec<u8>, Arc<LargeFile>) {
        let body = data(3 * CHUNK);
        r.send(begin(4, body.len())).await;
        for index in 0..3 {
            r.send(chunk(4, &body, index)).await;
        }
        let writing = r.session.lock().large.get(&4).cloned().unwrap();
        (body, writing)
    }

    /// The end waits for the cut connection's handler instead of failing the file, and puts
    /// the file in place once it lets go. On a paused clock: the wait is seen, not timed.
    #[tokio::test(start_paused = true)]
    async fn an_end_waits_for_a_cut_connections_chunk_write_to_let_go() {
        let r = Receiver::new();
        let (body, writing) = every_chunk_acknowledged_one_still_held(&r).await;
        let root = *blake3::hash(&body).as_bytes();
        let end = r.send(Frame::FileEnd { file: 4, root });
        tokio::pin!(end);
        tokio::select! {
            replied = &mut end => panic!("answered while a chunk was being written: {replied:?}"),
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        assert!(!r.root().join("big").exists(), "in place under a writer");
        drop(writing);
        assert_eq!(end.await, [Frame::FileDone { file: 4 }]);
        assert_eq!(std::fs::read(r.root().join("big")).unwrap(), body);
    }

    /// A handler that never lets go: the file fails after a bounded wait, and nothing of it
    /// is put in place or left behind.
    #[tokio::test(start_paused = true)]
    async fn an_end_gives_up_on_a_chunk_write_that_never_lets_go() {
        let r = Receiver::new();
        let (body, _writing) = every_chunk_acknowledged_one_still_held(&r).await;
        let root = *blake3::hash(&body).as_bytes();
        let replies = r.send(Frame::FileEnd { file: 4, root }).await;
        assert_eq!(
            replies.iter().map(code).collect::<Vec<_>>(),
            [Some(ErrorCode::Io as u16)]
        );
        let left: Vec<_> = std::fs::read_dir(r.root()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

//! The properties the receiver's fuzz targets check, as plain functions, so that `cargo test`
//! on stable replays the committed corpora through exactly the same checks
//! (`tests/integration/fuzz_corpus.rs`). Not part of the supported API.
//!
//! - [`check_session`]: arbitrary frame sequences, after the handshake, into one session of a
//!   real receiver. It never panics, never writes, creates, chmods or stamps anything outside
//!   its directory (a symlink inside points out, as a bait), and once the session ends leaves
//!   no partial file except large files' kept for resuming, each with its journal.
//! - [`check_paths`]: whatever bytes a peer sends as a path, an accepted path is a plain
//!   descendant of the root that goes through no symlink.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};

use super::durability::Flusher;
use super::names::{JOURNAL_SUFFIX, PARTIAL_SUFFIX};
use super::paths;
use super::session::{self, Context, Session};
use super::staging::Staging;
use super::ServerOptions;
use crate::pipeline::hash::digest;
use crate::protocol::codec::decode;
use crate::protocol::fuzzing::FUZZ_MAX_FRAME;
use crate::protocol::Frame;

/// Largest chunk the fuzzed receiver accepts, so that a data frame fits the fuzz frame limit.
const FUZZ_MAX_CHUNK: u32 = 32 * 1024;

/// The directories one fuzzing process works in. `base` holds exactly `served` (the served
/// directory, reset before every input) and `outside` (which must stay untouched).
#[derive(Debug, Clone)]
pub struct Arena {
    base: PathBuf,
    served: PathBuf,
    outside: PathBuf,
}

impl Arena {
    /// Uses (and creates) `base/served` and `base/outside`. `base` should be otherwise empty
    /// and on a fast filesystem (the target uses `/dev/shm`, where a flush costs nothing).
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn new(base: &Path) -> io::Result<Arena> {
        std::fs::create_dir_all(base)?;
        let base = std::fs::canonicalize(base)?;
        Ok(Arena {
            served: base.join("served"),
            outside: base.join("outside"),
            base,
        })
    }

    /// Rebuilds the served directory: a subdirectory `sub`, and two symlinks that point out
    /// of it, `escape` (absolute) and `sub/up` (relative). Empties `outside` and stamps it.
    fn reset(&self) -> io::Result<()> {
        if self.served.exists() {
            std::fs::remove_dir_all(&self.served)?;
        }
        if self.outside.exists() {
            std::fs::remove_dir_all(&self.outside)?;
        }
        std::fs::create_dir_all(self.served.join("sub"))?;
        std::fs::create_dir(&self.outside)?;
        std::os::unix::fs::symlink(&self.outside, self.served.join("escape"))?;
        std::os::unix::fs::symlink("../../outside", self.served.join("sub/up"))?;
        std::fs::set_permissions(&self.outside, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&self.outside)?.set_modified(UNIX_EPOCH + Duration::from_secs(1))
    }

    /// Panics unless `base` holds only `served` and an untouched, empty `outside`.
    fn assert_contained(&self) {
        let mut names: Vec<_> = std::fs::read_dir(&self.base)
            .expect("list base")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["outside", "served"],
            "something was created beside the root"
        );
        let meta = std::fs::symlink_metadata(&self.outside).expect("outside");
        assert!(meta.is_dir(), "outside was replaced");
        assert_eq!(meta.mode() & 0o7777, 0o755, "outside's mode was changed");
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (1, 0),
            "outside's mtime was changed"
        );
        let inside = std::fs::read_dir(&self.outside)
            .expect("list outside")
            .count();
        assert_eq!(inside, 0, "a file was written outside the root");
    }
}

/// Files whose name marks them as partial, anywhere under `dir` (symlinks not followed).
/// Partial files and journals that should not be there: every partial file, except a
/// resumable one kept with its journal (an interrupted large file), and every journal
/// without its partial file. Symlinks a peer made under such names are not files of ours.
fn partial_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            partial_files(&path, out);
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        // Names need not be UTF-8: compare bytes.
        let name = entry.file_name();
        let name = name.as_bytes();
        let (partial, journal) = (PARTIAL_SUFFIX.as_bytes(), JOURNAL_SUFFIX.as_bytes());
        let partner = if let Some(stem) = name.strip_suffix(partial) {
            [stem, journal].concat()
        } else if let Some(stem) = name.strip_suffix(journal) {
            [stem, partial].concat()
        } else {
            continue;
        };
        let partner = std::ffi::OsStr::from_bytes(&partner);
        if !is_file(&path.with_file_name(partner)) {
            out.push(path);
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a fuzzing runtime")
    })
}

/// Serialises inputs: the arena is shared by every call in the process.
fn arena_lock() -> &'static Mutex<()> {
    static LOCK: Mutex<()> = Mutex::new(());
    &LOCK
}

/// Makes hashes in `frame` correct when the input asks for it, so that inputs reach past
/// verification into commit, rename and flush. `sent` remembers each file's chunks for the
/// root of its `FileEnd`, and `chunk_len` each begun file's chunk size.
fn fix_hashes(
    frame: &mut Frame,
    chunk_len: &mut HashMap<u64, u64>,
    sent: &mut HashMap<u64, BTreeMap<u64, bytes::Bytes>>,
) {
    match frame {
        Frame::FileBegin {
            file,
            chunk_len: len,
            ..
        } => {
            chunk_len.insert(*file, u64::from(*len));
        }
        Frame::Data {
            file,
            index,
            cv,
            payload,
        } => {
            // Only where a chaining value exists: a chunk size the receiver accepts (a whole
            // BLAKE3 subtree), a payload no longer than it, an offset that fits. Anything
            // else is left for the receiver to refuse, and `digest` would panic on it.
            let len = chunk_len.get(file).copied().unwrap_or(0);
            let offset = index.checked_mul(len);
            let subtree = crate::ChunkSize::new(len).is_ok()
                && !payload.is_empty()
                && payload.len() as u64 <= len;
            if let (true, Some(offset)) = (subtree, offset) {
                if let Some(good) = digest(offset, payload).chaining_value {
                    *cv = good;
                }
            }
            sent.entry(*file)
                .or_default()
                .insert(*index, payload.clone());
        }
        Frame::FileEnd { file, root } => {
            let mut whole = Vec::new();
            for (i, (index, payload)) in sent.get(file).into_iter().flatten().enumerate() {
                if *index != i as u64 {
                    break;
                }
                whole.extend_from_slice(payload);
            }
            *root = *blake3::hash(&whole).as_bytes();
        }
        Frame::SmallFile {
            meta,
            root,
            payload,
            ..
        } => {
            meta.size = payload.len() as u64;
            *root = *blake3::hash(payload).as_bytes();
        }
        _ => {}
    }
}

/// Property of the `session` fuzz target. The first byte holds flags (bit 0: make hashes
/// correct; bit 1: limits small enough to reach: 2 open large files, 64 KiB unfinished per
/// session and 96 KiB in all, 4 KiB of directory records); the rest is a sequence of encoded frames, handled in order by one session of a
/// receiver serving `arena`'s `served` directory, as one authenticated connection would.
///
/// # Panics
/// On a finding: something outside the served directory was created or changed, or a partial
/// file (other than a resumable one with its journal) or a lone journal survived the ended
/// session, the count of unfinished bytes went over its limit or did not return to zero, or
/// the receiver itself panicked.
pub fn check_session(arena: &Arena, data: &[u8]) {
    let _one = arena_lock().lock().unwrap_or_else(|e| e.into_inner());
    arena.reset().expect("reset the arena");
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut options = ServerOptions::new(&arena.served);
    options.max_chunk_len = FUZZ_MAX_CHUNK;
    options.max_file_size = 1 << 20;
    options.batch_files = 3;
    if flags & 2 == 2 {
        options.max_open_files = 2;
        options.max_session_unfinished_bytes = 64 << 10;
        options.max_unfinished_bytes = 96 << 10;
        options.max_dir_bytes = 4 << 10;
    }
    let most = options.max_unfinished_bytes;
    let staging = Staging::probe(&arena.served, 16);
    let flusher = Flusher::open(&arena.served).expect("the served directory");
    let root = super::beneath::Root::open(&arena.served).expect("the served directory");
    let ctx = Arc::new(Context::new(
        options,
        root,
        staging,
        flusher,
        crate::tls::ServerTls::reused(),
    ));
    let session = Arc::new(Session::new([0x5a; 16], 1, None));
    let mut buf = BytesMut::from(rest);
    let (mut chunk_len, mut sent) = (HashMap::new(), HashMap::new());
    runtime().block_on(async {
        while let Ok(Some(mut frame)) = decode(&mut buf, FUZZ_MAX_FRAME) {
            if flags & 1 == 1 {
                fix_hashes(&mut frame, &mut chunk_len, &mut sent);
            }
            if session::handle(frame, &ctx, &session).await.is_err() {
                break; // a protocol violation ends the connection
            }
            let unfinished = ctx.unfinished.load(std::sync::atomic::Ordering::Acquire);
            assert!(
                unfinished <= most,
                "{unfinished} bytes unfinished, over {most}"
            );
        }
    });
    session.suspend();
    let unfinished = ctx.unfinished.load(std::sync::atomic::Ordering::Acquire);
    assert_eq!(
        unfinished, 0,
        "unfinished bytes counted after the session ended"
    );
    arena.assert_contained();
    let mut left = Vec::new();
    partial_files(&arena.served, &mut left);
    assert!(left.is_empty(), "partial files survived: {left:?}");
}

/// Property of the `paths` fuzz target: `data` as a path from the wire, checked against
/// `arena`'s served directory (with its bait symlinks). An accepted path is the root plus
/// only plain components, one per `/`-separated part, and none of its existing ancestors is
/// a symlink.
///
/// # Panics
/// On a finding.
pub fn check_paths(arena: &Arena, data: &[u8]) {
    let _one = arena_lock().lock().unwrap_or_else(|e| e.into_inner());
    if !arena.served.join("sub").is_dir() {
        arena.reset().expect("reset the arena");
    }
    let root = &arena.served;
    let lexical = paths::lexical(root, data);
    if let Ok(path) = &lexical {
        let rel = path
            .strip_prefix(root)
            .expect("accepted path is under the root");
        let parts: Vec<_> = rel.components().collect();
        assert!(
            parts.iter().all(|c| matches!(c, Component::Normal(_))),
            "accepted path {path:?} has a non-plain component"
        );
        assert_eq!(parts.len(), data.split(|&b| b == b'/').count());
        assert!(!data.is_empty() && data[0] != b'/' && !data.contains(&0));
    }
    let served = super::beneath::Root::open(root).expect("the served directory");
    let reached = lexical.map(|path| served.reach_parent(&path).map(|()| path));
    if let Ok(Ok(path)) = &reached {
        let mut at = path.parent();
        while let Some(dir) = at.filter(|d| d.starts_with(root) && *d != root.as_path()) {
            let through = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
            assert!(
                !through,
                "accepted path {path:?} goes through symlink {dir:?}"
            );
            at = dir.parent();
        }
    }
}

/// Encodes `frames` after a flags byte: a seed for the `session` target.
pub fn session_input(fix_hashes: bool, frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(u8::from(fix_hashes));
    for frame in frames {
        crate::protocol::encode(frame, &mut out);
    }
    out.to_vec()
}

//! The receiving side: a [`Server`] accepts authenticated connections, groups them into
//! sessions, verifies every chunk and writes files into the served directory.
//!
//! - `listener.rs`: binding, accepting, session expiry, graceful shutdown.
//! - `admission.rs`: the handshake pool, connection slots, per-address connection counts.
//! - `beneath.rs`: reaching directories of the served tree without following a symlink.
//! - `session.rs`: one connection's frames, against its session's shared state.
//! - `writer.rs`: partial files, positioned writes, commit and rename.
//! - `durability.rs`: batched flushing of small files.
//! - [`events`]: what a subscriber is told while the server serves.
//! - `delivered.rs`: the entries a session has delivered, as ranges of their numbers.
//! - `staging.rs`: small files written unnamed until their batch is flushed.
//! - `inline.rs`: whether small files are written on the connection's task or the blocking pool.
//! - [`journal`]: resume journals of large files, beside their partial files.
//! - `space.rs`: free space on the served filesystem, and the reserve new files must leave.
//! - `probe.rs`: checking at start that the served directory can be written.
//! - `names.rs`: what partial files and journals beside a target are called.
//! - `leftovers.rs`: deleting partial files and journals no transfer came back for.
//! - `verified.rs`: which chunks of a large file are verified, folded into its root.
//! - [`paths`]: hostile path checks.
//! - [`fuzzing`]: the properties the receiver's fuzz targets check.

mod admission;
mod beneath;
mod delivered;
mod durability;
pub mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod inline;
pub(crate) mod journal;
mod leftovers;
mod listener;
mod names;
pub(crate) mod paths;
mod probe;
mod session;
mod space;
mod staging;
mod strikes;
#[cfg(test)]
mod testfs;
mod verified;
pub(crate) mod writer;

use std::path::PathBuf;
use std::time::Duration;

pub use events::ServerEvent;
pub use leftovers::MIN_EXPIRY as MIN_PARTIAL_EXPIRY;
pub use listener::{Server, ServerStatus};
pub use probe::{check_dir, DirError};

use crate::protocol::handshake::Key;

/// Free bytes for this process on the filesystem holding `path`, as new files are checked
/// against [`ServerOptions::min_free_bytes`].
///
/// # Errors
/// When `path` cannot be opened or `statvfs` fails.
pub fn free_space(path: &std::path::Path) -> std::io::Result<u64> {
    space::free_bytes(&std::fs::File::open(path)?)
}

/// Server settings. `ServerOptions::new(dir)` gives the documented defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The served directory; nothing is ever written outside it.
    pub root: PathBuf,
    /// The passphrase's key: only senders with the same passphrase get in (through a PAKE
    /// bound to the connection's TLS channel, see `docs/PROTOCOL.md`). Default: the
    /// anonymous key (the empty passphrase), which lets anyone in over an encrypted channel;
    /// `tidegate serve` never uses it unless told to (`--insecure-no-auth`).
    pub key: Key,
    /// Failed authentications an address may make before it is locked out. Default 3.
    pub auth_free_failures: u32,
    /// The first lockout of an address past `auth_free_failures`; each further failure
    /// doubles it, up to 15 minutes. While locked out, its connections are refused before
    /// they can guess. Default 1 s.
    pub auth_lockout: Duration,
    /// Authenticated connections served at once. One that finds every slot taken waits up
    /// to `handshake_timeout` for one, then is refused with a limit error (its sender tries
    /// again later). Default 64.
    pub max_connections: usize,
    /// Authenticated connections from one source address at once. Default 32.
    pub max_connections_per_address: usize,
    /// Connections still in their handshake. They take no connection slot; when this many
    /// wait, a new connection closes the one that has waited longest, so that idle or slow
    /// sockets never keep an authenticated sender out. Default 256.
    pub max_handshakes: usize,
    /// A connection that gets nothing done for this long is closed, whether it is silent or
    /// sends frames that change nothing (repeats, refused requests). Default 60 s.
    pub idle_timeout: Duration,
    /// The handshake must finish within this, from the connection's accept. Default 10 s.
    pub handshake_timeout: Duration,
    /// A reply that the peer does not read within this closes its connection (a peer that
    /// stops reading holds nothing for longer); it also bounds a graceful shutdown's wait for
    /// connections. Default 30 s.
    pub write_timeout: Duration,
    /// Transfers (sessions) held at once, including those waiting `session_linger` for their
    /// sender to come back; a new one past this is refused with a limit error. Default 256.
    pub max_sessions: usize,
    /// Sessions begun from one source address and held at once. Default 32.
    pub max_sessions_per_address: usize,
    /// Large files (of more than one chunk) one session may have open at once, each holding
    /// a partial file and its journal. Default 256.
    pub max_open_files: usize,
    /// Bytes of large files a session has announced and not yet sent. Default 16 TiB.
    pub max_session_unfinished_bytes: u64,
    /// Bytes of large files announced and not yet received, over all sessions. A new large
    /// file must also fit, with all of these, in the free space above `min_free_bytes`.
    /// Default 64 TiB.
    pub max_unfinished_bytes: u64,
    /// Free space (as `statvfs` gives it to this process) a new file must leave on the served
    /// directory's filesystem; a file that would go below it is refused with a limit error
    /// instead of filling the disk. Default 512 MiB.
    pub min_free_bytes: u64,
    /// Largest chunk a client may use. With `max_connections`, this bounds memory: each
    /// connection buffers at most one frame. Default 16 MiB.
    pub max_chunk_len: u32,
    /// Largest file accepted. Default 16 TiB.
    pub max_file_size: u64,
    /// A session with no connection for this long is dropped: its small files' partial files
    /// are deleted, its large files' partial files are kept with their resume journals for a
    /// later transfer (see `journal.rs`). Default 120 s.
    pub session_linger: Duration,
    /// Small files written but not yet flushed, before a flush is forced. Default 2048 (with
    /// `batch_bytes`, a batch of 4–64 KiB files is mostly bounded by its bytes).
    pub batch_files: usize,
    /// Bytes of small files written but not yet flushed, before a flush is forced.
    /// Default 64 MiB.
    pub batch_bytes: u64,
    /// Partial files and resume journals unchanged for this long are deleted: the served
    /// directory is swept when the server starts and then every quarter of this (between a
    /// minute and a day). `None` keeps them until a transfer of the same file comes back.
    /// Default 7 days; the command line accepts no less than [`MIN_PARTIAL_EXPIRY`] (an
    /// hour). Anything shorter than `idle_timeout` + `session_linger` may delete a live
    /// transfer's unlocked partial file, which then fails (nothing wrong is put in place).
    pub partial_expiry: Option<Duration>,
    /// Small files that may wait for their batch's flush as unnamed files, each holding an
    /// open descriptor until it is linked into place; the rest wait under partial names,
    /// which costs more (a directory entry made and removed again). `Some(0)` turns unnamed
    /// files off. Default `None`: half the process's soft descriptor limit (`RLIMIT_NOFILE`)
    /// when the server is bound; `tidegate serve` first raises that limit to the hard one.
    pub unnamed_files: Option<usize>,
    /// Accept symlinks whose target is absolute or climbs out of the served directory (as
    /// rsync's daemon without `--safe-links`). Default `false`: such links are refused with a
    /// bad-path error, since whoever follows one later (a local user, another program) would
    /// be led outside.
    pub links_anywhere: bool,
    /// Bytes a session may spend remembering its directories until `Finish` (each path's
    /// length plus 64), when their modes and times are applied; past it, `Dir` is refused
    /// with a limit error. A directory sent again counts once. Default 16 MiB: some 100,000
    /// directories with 100-byte paths.
    pub max_dir_bytes: u64,
}

impl ServerOptions {
    /// Defaults for serving `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ServerOptions {
            root: root.into(),
            key: Key::default(),
            auth_free_failures: 3,
            auth_lockout: Duration::from_secs(1),
            max_connections: 64,
            max_connections_per_address: 32,
            max_handshakes: 256,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_sessions: 256,
            max_sessions_per_address: 32,
            max_open_files: 256,
            max_session_unfinished_bytes: 16 << 40,
            max_unfinished_bytes: 64 << 40,
            min_free_bytes: 512 << 20,
            max_chunk_len: 16 * 1024 * 1024,
            max_file_size: 16 << 40,
            session_linger: Duration::from_secs(120),
            batch_files: 2048,
            batch_bytes: 64 * 1024 * 1024,
            partial_expiry: Some(Duration::from_secs(7 * 24 * 3600)),
            unnamed_files: None,
            links_anywhere: false,
            max_dir_bytes: 16 << 20,
        }
    }
}

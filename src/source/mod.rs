//! Where chunk bytes come from: opening inputs and cutting them into raw chunks.
//!
//! This file holds what every part shares: [`Input`] and [`SourceError`]. `FileSource`
//! (`file.rs`) picks the route for each input:
//! - regular files larger than [`SMALL_FILE_BYTES`] are read through mapped windows
//!   (`mmap.rs`), with the SIGBUS defence of `guard.rs`;
//! - small regular files, and files the kernel refuses to map, use positioned reads
//!   (`read.rs`);
//! - stdin, pipes, character devices and files that report a size of zero (`/proc` files)
//!   are read as streams into pooled buffers.
//!
//! `dir.rs` opens walked files relative to their directory; `walk/` expands sources into
//! entries. The source does not own the budget, hashing, or ordering; that is `pipeline`.

mod dir;
mod file;
mod guard;
mod mmap;
pub(crate) mod read;
pub mod walk;

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use dir::LastDir;
pub(crate) use file::{FileSource, RawChunk};
pub(crate) use mmap::release_pages;

/// Regular files up to this size are read with one positioned read instead of a mapping:
/// for them, `mmap` + `munmap` + page faults cost more than copying the bytes.
pub const SMALL_FILE_BYTES: u64 = 64 * 1024;

/// Something to read: a path, standard input, or a stream opened on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file, pipe or special file on disk.
    Path(PathBuf),
    /// The process's standard input (`-` on the command line).
    Stdin,
    /// A stream from elsewhere (an object in a store, say), read like stdin.
    Stream(StreamInput),
}

/// Opens a [`StreamInput`]'s bytes.
type Opener = dyn Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync;

/// A named stream, opened on the reading thread when the pipeline reaches it, so that only
/// the input being read holds a connection. Its reads may block; they run on that thread.
#[derive(Clone)]
pub struct StreamInput {
    name: PathBuf,
    open: Arc<Opener>,
}

impl StreamInput {
    /// A stream named `name` in messages and reports, whose bytes `open` provides.
    pub fn new(
        name: impl Into<String>,
        open: impl Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync + 'static,
    ) -> Self {
        StreamInput {
            name: PathBuf::from(name.into()),
            open: Arc::new(open),
        }
    }

    /// The name given to [`new`](Self::new).
    pub fn name(&self) -> &Path {
        &self.name
    }

    pub(crate) fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        (self.open)()
    }
}

impl fmt::Debug for StreamInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamInput")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Two stream inputs are equal when they are clones of one another.
impl PartialEq for StreamInput {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.open, &other.open)
    }
}

impl Eq for StreamInput {}

impl Input {
    /// `-` means stdin, anything else is a path.
    pub fn from_arg(arg: &str) -> Self {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::Path(PathBuf::from(arg))
        }
    }

    /// The path used in messages; `-` for stdin.
    pub fn display_path(&self) -> &Path {
        match self {
            Input::Path(p) => p,
            Input::Stdin => Path::new("-"),
            Input::Stream(s) => s.name(),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.display_path().display())
    }
}

/// Why an input could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The input could not be opened or inspected.
    #[error("{}: {source}", path.display())]
    Open {
        /// The input.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The input is a directory, where a file was expected.
    #[error("{}: is a directory", path.display())]
    IsDirectory {
        /// The input.
        path: PathBuf,
    },
    /// A read failed.
    #[error("{}: read failed at offset {offset}: {source}", path.display())]
    Read {
        /// The input.
        path: PathBuf,
        /// Where in the file the read started.
        offset: u64,
        /// What the OS said.
        source: io::Error,
    },
    /// The file became shorter while it was being read.
    #[error(
        "{}: file shrank while being read (was {expected_len} bytes, now {actual_len}; \
         data missing at offset {offset})",
        path.display()
    )]
    Truncated {
        /// The input.
        path: PathBuf,
        /// The first offset whose bytes were missing.
        offset: u64,
        /// The length when the file was opened.
        expected_len: u64,
        /// The length found afterwards.
        actual_len: u64,
    },
    /// The job was cancelled before this input was finished.
    #[error("{}: cancelled", path.display())]
    Cancelled {
        /// The input.
        path: PathBuf,
    },
    /// No longer read because nobody would take the rest (every destination of a transfer
    /// refused the file; their reasons are reported with them).
    #[error("{}: not read further: every destination refused it", path.display())]
    Skipped {
        /// The input.
        path: PathBuf,
    },
}

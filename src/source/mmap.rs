//! Reading a regular file through bounded memory-mapped windows.
//!
//! A file is never mapped whole: [`MappedReader`] maps one window at a time (a multiple of
//! the chunk size), advises the kernel that it will be read sequentially, and hands out
//! chunks that borrow the window through `Bytes::from_owner` without copying. The window is
//! unmapped when its last chunk has been cut and every chunk borrowed from it is dropped, so
//! resident memory is bounded by the chunks in flight plus one window.
//!
//! This file holds the crate's only `unsafe` mapping. Its defence against truncation lives
//! in `guard.rs`; the per-window checks that turn a poisoned window into an error live here
//! and in the hasher.

use std::fs::File;
use std::path::Path;

use bytes::Bytes;
use memmap2::{Advice, Mmap, MmapOptions};

use super::guard::{Registration, Watch};
use super::SourceError;

/// One mapped window of a file. Field order matters: the registration is dropped (and the
/// address range leaves the SIGBUS table) before the mapping is unmapped.
struct Window {
    _registration: Option<Registration>,
    map: Mmap,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// The window currently being cut into chunks.
struct Current {
    /// File offset of the window's first byte.
    start: u64,
    /// The whole window; chunks are `slice`s of it.
    bytes: Bytes,
    /// Poison flag of the window, if it is registered with the SIGBUS guard.
    watch: Option<Watch>,
}

/// Cuts a regular file into chunks backed by mapped windows.
pub(crate) struct MappedReader {
    file: File,
    /// Length of the file when it was opened; the reader never maps past it.
    len: u64,
    window_len: u64,
    current: Option<Current>,
}

/// A chunk cut from a mapped window.
pub(crate) struct MappedChunk {
    pub(crate) data: Bytes,
    /// The window's poison flag.
    pub(crate) watch: Option<Watch>,
    /// A part of a larger window, whose pages are worth releasing once consumed; a chunk
    /// that is its whole window is unmapped when dropped instead.
    pub(crate) release: bool,
}

/// Why a window could not be mapped. `Unsupported` makes the caller fall back to positioned
/// reads; `Source` is an error for the file.
pub(crate) enum MapFailure {
    /// The kernel or filesystem refused the mapping, or the guard could not register it.
    Unsupported,
    /// The file is no longer what it was (it shrank).
    Source(SourceError),
}

impl MappedReader {
    pub(crate) fn new(file: File, len: u64, window_len: u64) -> Self {
        MappedReader {
            file,
            len,
            window_len,
            current: None,
        }
    }

    /// The open file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Hands the file back, for the positioned-read fallback.
    pub(crate) fn into_file(self) -> File {
        self.file
    }

    /// Returns `len` bytes at `offset` (which must lie within the file as opened, and not
    /// cross a window boundary: chunk sizes divide the window length), mapping a new window
    /// when the offset has left the current one.
    ///
    /// The reader lets go of a window as soon as its last chunk is cut, so the window is
    /// unmapped when that chunk is dropped, not when the next window is mapped (which waits
    /// for budget).
    pub(crate) fn chunk(
        &mut self,
        path: &Path,
        offset: u64,
        len: usize,
    ) -> Result<MappedChunk, MapFailure> {
        let needs_window = match &self.current {
            Some(c) => offset < c.start || offset + len as u64 > c.start + c.bytes.len() as u64,
            None => true,
        };
        if needs_window {
            // Drop our hold on the old window first, so it can be unmapped as soon as its
            // chunks are gone.
            self.current = None;
            self.current = Some(self.map_window(path, offset)?);
        }
        let Some(current) = &self.current else {
            return Err(MapFailure::Unsupported);
        };
        // `offset - start` is below the window length, which is a usize, so this cannot
        // truncate.
        let at = (offset - current.start) as usize;
        let chunk = MappedChunk {
            data: current.bytes.slice(at..at + len),
            watch: current.watch,
            release: len < current.bytes.len(),
        };
        if at + len == current.bytes.len() {
            self.current = None;
        }
        Ok(chunk)
    }

    fn map_window(&self, path: &Path, start: u64) -> Result<Current, MapFailure> {
        // A cheap check per window: if the file already shrank, say so now rather than let
        // the hasher fault on the missing pages.
        let now = self
            .file
            .metadata()
            .map_err(|source| {
                MapFailure::Source(SourceError::Read {
                    path: path.to_path_buf(),
                    offset: start,
                    source,
                })
            })?
            .len();
        let window_len = self.window_len.min(self.len - start);
        if now < start + window_len {
            return Err(MapFailure::Source(SourceError::Truncated {
                path: path.to_path_buf(),
                offset: start,
                expected_len: self.len,
                actual_len: now,
            }));
        }
        let Ok(map_len) = usize::try_from(window_len) else {
            return Err(MapFailure::Unsupported);
        };
        // SAFETY: memmap2 requires that the mapped file is not modified or truncated while
        // mapped, which tidegate cannot promise for files it does not own. What it can
        // promise is that this never crashes the process or yields wrong data silently:
        // - the window is registered with the SIGBUS guard (below) before any chunk of it is
        //   handed out; a page that disappears through truncation is replaced by zeros and
        //   the window is marked poisoned, and every consumer checks the mark after reading
        //   and reports `SourceError::Truncated` instead of using the bytes;
        // - if the guard cannot register the window, it is unmapped at once and the file
        //   falls back to positioned reads;
        // - bytes rewritten in place (same length) by another process are read as whatever
        //   they are at the time, exactly as with `read(2)`; the receiver verifies every
        //   chunk against the hash computed from the very bytes that were sent.
        // The mapping is read-only and private to this reader.
        let map = unsafe {
            MmapOptions::new()
                .offset(start)
                .len(map_len)
                .map(&self.file)
        }
        .map_err(|e| {
            tracing::debug!(path = %path.display(), error = %e, "mmap failed, using reads");
            MapFailure::Unsupported
        })?;
        if let Err(e) = map.advise(Advice::Sequential) {
            tracing::debug!(path = %path.display(), error = %e, "madvise(SEQUENTIAL) failed");
        }
        let registration =
            Registration::new(map.as_ptr(), map.len()).ok_or(MapFailure::Unsupported)?;
        let watch = Some(registration.watch());
        let bytes = Bytes::from_owner(Window {
            _registration: Some(registration),
            map,
        });
        Ok(Current {
            start,
            bytes,
            watch,
        })
    }
}

/// Drops the resident pages behind `data`, a slice of a mapped window that nothing will read
/// again. The pages stay in the page cache; only this process's mapping of them goes, so RSS
/// follows the chunks in flight rather than the windows still mapped.
pub(crate) fn release_pages(data: &[u8]) {
    // Only whole pages inside the slice: chunk starts are page-aligned (chunk sizes are
    // multiples of 16 KiB and windows start at chunk offsets), a short tail page is kept.
    const PAGE: usize = 4096;
    let start = data.as_ptr() as usize;
    let aligned = start.next_multiple_of(PAGE);
    let end = (start + data.len()) & !(PAGE - 1);
    if end <= aligned {
        return;
    }
    // SAFETY: the range lies inside a live, read-only, file-backed shared mapping that this
    // process owns (the caller holds a `Bytes` borrowing it). MADV_DONTNEED on such a mapping
    // only unmaps the pages from this process: any later read (another `Bytes` of the same
    // window) faults the same file contents back in, so no data can change or be lost.
    unsafe {
        libc::madvise(
            aligned as *mut libc::c_void,
            end - aligned,
            libc::MADV_DONTNEED,
        );
    }
}

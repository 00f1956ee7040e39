//! Writing received files: partial files beside their targets, positioned writes into space
//! allocated as the data comes, and the commit (durable, metadata applied, atomic rename).
//!
//! A partial file is named `.<name>.<tag>.tidegate-partial` in the target's directory
//! (`.<name>.tidegate-partial` for a resumable large file, with its journal), so
//! the rename into place is atomic (same filesystem) and nobody ever sees a half-written file
//! under the final name. A small file is rather written unnamed where the filesystem allows
//! (`staging.rs`), and linked into place. Large files are flushed one by one at commit
//! (`fdatasync`); small files are committed in batches by `durability.rs`, which flushes many
//! at once.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::beneath::{Dir, Root};
use super::names::partial_path;
use super::staging::{Linker, Staging};

/// Largest single write. A 1 MiB `pwrite` makes the page cache allocate large folios, and on
/// this project's virtual machines (free page reporting) freshly allocated high-order pages are
/// slow to touch once the host has taken them back, which it does for memory freed by, say,
/// deleting a large file, so 64 KiB writes cost far less CPU there (docs/PERFORMANCE.md).
/// Smaller writes cost a few more system calls otherwise.
pub(crate) const WRITE_PIECE: usize = 64 * 1024;

/// A file being received.
#[derive(Debug)]
pub(crate) struct PartialFile {
    file: File,
    /// The served directory, through which every name below is reached (`beneath.rs`).
    root: Arc<Root>,
    partial: PathBuf,
    target: PathBuf,
    mode: u32,
    mtime_ns: i64,
    /// Set for an unnamed file (`staging.rs`): `partial` is then only the name it may take
    /// on its way to replacing an existing target.
    unnamed: Option<Linker>,
    /// Space allocated from the start of the file: it grows in [`ALLOCATE_STEP`]s ahead of
    /// the data, never to a size a peer merely announced.
    allocated: AtomicU64,
}

/// How far ahead of the data a large file's space is allocated at a time: few `fallocate`
/// calls for a file written in order.
pub(crate) const ALLOCATE_STEP: u64 = 64 << 20;

impl PartialFile {
    /// Creates the partial file; its directory must exist (the session's `place` makes it).
    /// With `size` (large files, written chunk by chunk, out of order), the file has that
    /// length at once and its space is allocated as the data comes ([`Self::write_at`]);
    /// small files written in one go pass `None`.
    pub(crate) fn create(
        root: &Arc<Root>,
        target: PathBuf,
        size: Option<u64>,
        mode: u32,
        mtime_ns: i64,
        tag: &str,
    ) -> io::Result<Self> {
        let partial = partial_path(&target, tag);
        let file = root.at(&partial, false, |d, name| {
            d.open(name, PRIVATE | libc::O_CREAT | libc::O_EXCL, 0o600)
        })?;
        if let Some(size) = size.filter(|&s| s > 0) {
            // A file that cannot fit fails now, and leaves nothing behind.
            fits(&file, size)
                .and_then(|()| file.set_len(size))
                .inspect_err(|_| remove(root, &partial))?;
        }
        Ok(PartialFile {
            file,
            root: Arc::clone(root),
            partial,
            target,
            mode,
            mtime_ns,
            unnamed: None,
            allocated: AtomicU64::new(0),
        })
    }

    /// Creates a small file, to be written in one go: unnamed in its target's directory when
    /// `staging` can, else as [`PartialFile::create`] does.
    pub(crate) fn create_small(
        root: &Arc<Root>,
        target: PathBuf,
        mode: u32,
        mtime_ns: i64,
        tag: &str,
        staging: &Staging,
    ) -> io::Result<Self> {
        match root.at(&target, false, |d, _| staging.create(d, mode))? {
            Some((file, linker)) => Ok(PartialFile {
                file,
                root: Arc::clone(root),
                partial: partial_path(&target, tag),
                target,
                mode,
                mtime_ns,
                unnamed: Some(linker),
                allocated: AtomicU64::new(0),
            }),
            None => Self::create(root, target, None, mode, mtime_ns, tag),
        }
    }

    /// Opens the untagged partial file of a resumable large file (see `journal.rs`). With
    /// `keep`, its contents are kept if it has the right length (returns true); otherwise it
    /// starts over, with that length and nothing allocated.
    pub(crate) fn open_resumable(
        root: &Arc<Root>,
        target: PathBuf,
        size: u64,
        mode: u32,
        mtime_ns: i64,
        keep: bool,
    ) -> io::Result<(Self, bool)> {
        let partial = super::names::resumable_path(&target);
        let file = root.at(&partial, false, |d, name| {
            d.open(name, PRIVATE | libc::O_CREAT, 0o600)
        })?;
        let kept = keep && file.metadata()?.len() == size;
        if !kept {
            // Starting over: a file that does not fit leaves nothing behind (the caller holds
            // its journal's lock, and removes the journal).
            let started = file
                .set_len(0)
                .and_then(|()| fits(&file, size))
                .and_then(|()| file.set_len(size));
            started.inspect_err(|_| remove(root, &partial))?;
        }
        Ok((
            PartialFile {
                file,
                root: Arc::clone(root),
                partial,
                target,
                mode,
                mtime_ns,
                unnamed: None,
                allocated: AtomicU64::new(0),
            },
            kept,
        ))
    }

    /// Flushes the data written so far (the resume journal records only flushed chunks).
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The partial file's own path.
    pub(crate) fn path(&self) -> &Path {
        &self.partial
    }

    /// Writes `data` at `offset`, in pieces of at most [`WRITE_PIECE`].
    pub(crate) fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.allocate_for(offset, offset + data.len() as u64)?;
        let mut at = offset;
        for piece in data.chunks(WRITE_PIECE) {
            self.file.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        Ok(())
    }

    /// Allocates the space `[offset, end)` is written to, before writing it: a full disk shows
    /// here (`ENOSPC`) rather than as a block missing under a later mapped read. A write that
    /// continues the allocated start of the file allocates a step ahead; one further on (out
    /// of order, within the chunks the receiver accepts ahead) only its own range, so that
    /// what is allocated is what arrived plus at most one step. One writer at a time per file.
    fn allocate_for(&self, offset: u64, end: u64) -> io::Result<()> {
        let done = self.allocated.load(Ordering::Relaxed);
        if end <= done {
            return Ok(());
        }
        if offset > done {
            return allocate(&self.file, offset, end - offset);
        }
        let len = self.file.metadata()?.len();
        let upto = end.max(done.saturating_add(ALLOCATE_STEP).min(len));
        allocate(&self.file, done, upto - done)?;
        self.allocated.store(upto, Ordering::Relaxed);
        Ok(())
    }

    /// Starts writing back `[offset, offset + len)` to disk without waiting for it, so that
    /// the flush at commit finds most of a large file already on disk instead of flushing
    /// gigabytes at the end.
    pub(crate) fn start_writeback(&self, offset: u64, len: u64) {
        let (Ok(offset), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return;
        };
        // SAFETY: a valid descriptor; the call only schedules I/O for the range. Failure
        // is harmless (the commit's fdatasync still flushes everything).
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    /// The final path.
    pub(crate) fn target(&self) -> &Path {
        &self.target
    }

    /// Applies mode and mtime; with `sync`, flushes the data first. Returns what
    /// [`Finished::put_in_place`] needs; a named file is closed, an unnamed one stays open
    /// until it is linked. On failure the partial file is deleted.
    pub(crate) fn finish(self, sync: bool) -> io::Result<Finished> {
        let applied = (|| {
            if sync {
                self.file.sync_data()?;
            }
            let mode = self.mode & SAFE_MODE;
            // A named partial file is private until now. An unnamed one was created with its
            // mode, which the umask or a default ACL may have changed.
            if self.unnamed.is_none() || self.file.metadata()?.permissions().mode() & 0o7777 != mode
            {
                self.file
                    .set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            self.file.set_modified(system_time(self.mtime_ns))
        })();
        if let Err(e) = applied {
            self.abandon();
            return Err(e);
        }
        Ok(Finished {
            unnamed: self.unnamed.map(|linker| (self.file, linker)),
            root: self.root,
            partial: self.partial,
            target: self.target,
        })
    }

    /// Deletes the partial file. Takes `&self` so a file still shared with a concurrent
    /// writer can be abandoned: writes to the unlinked file go nowhere. An unnamed file has
    /// nothing to delete: it is freed when closed.
    pub(crate) fn abandon(&self) {
        if self.unnamed.is_none() {
            remove(&self.root, &self.partial);
        }
    }
}

/// A written file waiting to be put in place: a closed partial file, or an unnamed file
/// still open.
#[derive(Debug)]
pub(crate) struct Finished {
    root: Arc<Root>,
    partial: PathBuf,
    target: PathBuf,
    unnamed: Option<(File, Linker)>,
}

impl Finished {
    /// Puts the file in place, atomically, replacing what was there: renames a partial file;
    /// links an unnamed one, by way of its partial name and a rename if the target exists.
    pub(crate) fn put_in_place(&self) -> io::Result<()> {
        let partial = name_of(&self.partial);
        self.root.at(&self.target, false, |d, target| {
            let Some((file, linker)) = &self.unnamed else {
                return d.rename(partial, target);
            };
            match linker.link(file, d, target) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                linked => return linked,
            }
            let named = match linker.link(file, d, partial) {
                // This file's own tag, used for no other file: whatever has the name is a
                // leftover, not another transfer's file.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    d.remove(partial)?;
                    linker.link(file, d, partial)
                }
                named => named,
            };
            named?;
            d.rename(partial, target).inspect_err(|_| {
                let _ = d.remove(partial);
            })
        })
    }

    /// Whether the kernel wrote this file's data to the disk without error, once a flush of
    /// the whole filesystem has returned: writes out and waits for anything still dirty, then
    /// asks the file itself. Used once a write on the filesystem has failed (`Flusher`): the
    /// flush's own answer then no longer says which files were hit.
    ///
    /// A file's error is told to each descriptor opened before it happened (an unnamed file's,
    /// open since before its data was written) or, if nobody was told yet, to the first one
    /// opened after (a partial file's, opened here): no other file's caller can take it.
    pub(crate) fn check_written(&self) -> io::Result<()> {
        let opened;
        let file = match &self.unnamed {
            Some((file, _)) => file,
            None => {
                opened = self.root.at(&self.partial, false, |d, name| {
                    d.open(name, libc::O_RDONLY, 0)
                })?;
                &opened
            }
        };
        // SAFETY: a valid descriptor; offset 0 and length 0 mean the whole file.
        let rc = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                0,
                0,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            let e = io::Error::last_os_error();
            Err(io::Error::new(
                e.kind(),
                format!("writing to the disk failed: {e}"),
            ))
        }
    }

    /// The final path.
    pub(crate) fn target(&self) -> &Path {
        &self.target
    }

    /// Deletes the partial file (an unnamed one is freed when dropped).
    pub(crate) fn abandon(&self) {
        if self.unnamed.is_none() {
            remove(&self.root, &self.partial);
        }
    }
}

/// The last component of a path made by `names.rs` (which always has one).
fn name_of(path: &Path) -> &OsStr {
    path.file_name().unwrap_or_default()
}

/// Deletes the file at `path`, if it can.
fn remove(root: &Root, path: &Path) {
    let _ = root.at(path, false, Dir::remove);
}

/// Makes a directory entry durable (after renames into it).
pub(crate) fn sync_dir(root: &Root, dir: &Path) -> io::Result<()> {
    root.open_dir(dir)?.sync_all()
}

/// `ENOSPC` unless the filesystem of `file` has `size` bytes free for this process: an honest
/// file too large for the disk fails at its begin, not gigabytes later.
fn fits(file: &File, size: u64) -> io::Result<()> {
    if size > super::space::free_bytes(file)? {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

/// Allocates `[offset, offset + len)` of `file`; filesystems without `fallocate` allocate as
/// they write.
fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let too_large = || io::Error::other("file too large");
    let offset = libc::off_t::try_from(offset).map_err(|_| too_large())?;
    let len = libc::off_t::try_from(len).map_err(|_| too_large())?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a valid descriptor and a non-negative range. Mode 0 only allocates (and may
    // extend the length, which is already the file's full size here).
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

/// Nanoseconds since the epoch (negative: before it) as a `SystemTime`.
pub(crate) fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Permission bits a peer may set: never setuid, setgid or sticky (as rsync's daemon).
pub(crate) const SAFE_MODE: u32 = 0o777;

/// Creates a directory (and parents) with `mode` (masked to [`SAFE_MODE`]). Returns whether
/// it was made: a directory that was already there keeps its mode, whatever the peer sent.
///
/// The final component must end up a real directory: an existing symlink there is refused,
/// never followed (its mode would otherwise be applied wherever it points). Ancestors were
/// checked by `paths::resolve`.
pub(crate) fn make_dir(root: &Root, path: &Path, mode: u32) -> io::Result<bool> {
    root.at(path, false, |d, name| {
        // Made with the server's own access; the peer's mode is set below, masked.
        let made = match d.make_dir(name, 0o700) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        let dir = d
            .open(name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| {
                if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) {
                    io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not a directory", path.display()),
                    )
                } else {
                    e
                }
            })?;
        if made {
            dir.set_permissions(std::fs::Permissions::from_mode(mode & SAFE_MODE))?;
        }
        Ok(made)
    })
}

/// Creates or replaces a symlink at `path` pointing to `target` (never followed). Its
/// directory must exist (the session's `place` makes it).
pub(crate) fn make_symlink(root: &Root, path: &Path, target: &[u8], tag: &str) -> io::Result<()> {
    let tmp = partial_path(path, tag);
    let tmp = name_of(&tmp);
    root.at(path, false, |d, name| {
        d.symlink(target, tmp)?;
        d.rename(tmp, name).inspect_err(|_| {
            let _ = d.remove(tmp);
        })
    })
}

/// How partial files are opened: read and write, and never through a symlink (`Dir::open`
/// adds `O_NOFOLLOW`); they are private (0600) until their real mode is applied at commit.
const PRIVATE: libc::c_int = libc::O_RDWR;

#[cfg(test)]
mod tests {
    use super::*;

    fn root_of(target: &Path) -> Arc<Root> {
        Root::open(target.parent().unwrap()).unwrap()
    }

    /// A large file that does not fit fails at once (nothing is allocated for it to find out)
    /// and leaves no partial file behind.
    #[test]
    fn a_file_that_does_not_fit_leaves_nothing_behind() {
        let Some(fs) = crate::server::testfs::Tmpfs::new("1m") else {
            return;
        };
        let target = fs.path().join("big");
        let created = PartialFile::create(
            &root_of(&target),
            target.clone(),
            Some(4 << 20),
            0o644,
            0,
            "tag",
        );
        assert_eq!(
            created.err().and_then(|e| e.raw_os_error()),
            Some(libc::ENOSPC)
        );
        let opened =
            PartialFile::open_resumable(&root_of(&target), target, 4 << 20, 0o644, 0, false);
        assert_eq!(
            opened.err().and_then(|e| e.raw_os_error()),
            Some(libc::ENOSPC)
        );
        let left: Vec<_> = std::fs::read_dir(fs.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// An unnamed small file replaces an existing target by way of its partial name, even
    /// when a file of that name was left behind, and leaves only the target.
    #[test]
    fn an_unnamed_file_replaces_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::on_for_test(dir.path());
        let target = dir.path().join("t");
        std::fs::write(&target, b"old").unwrap();
        std::fs::write(partial_path(&target, "tag"), b"left behind").unwrap();
        let file =
            PartialFile::create_small(&root_of(&target), target.clone(), 0o640, 0, "tag", &staging)
                .unwrap();
        file.write_at(0, b"new contents").unwrap();
        let finished = file.finish(false).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        finished.put_in_place().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["t"]);
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
    }

    /// A partial file's name that is taken (say, by a local user who guessed it) fails that
    /// file; what is there is neither written through nor truncated.
    #[test]
    fn a_taken_partial_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::write(partial_path(&target, "tag"), b"someone's").unwrap();
        let created = PartialFile::create(&root_of(&target), target.clone(), None, 0o644, 0, "tag");
        assert_eq!(
            created.err().map(|e| e.kind()),
            Some(io::ErrorKind::AlreadyExists)
        );
        assert_eq!(
            std::fs::read(partial_path(&target, "tag")).unwrap(),
            b"someone's"
        );
        assert!(!target.exists());
    }

    /// Abandoning an unnamed file deletes nothing that has a name.
    #[test]
    fn abandoning_an_unnamed_file_leaves_names_alone() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::on_for_test(dir.path());
        let target = dir.path().join("t");
        std::fs::write(partial_path(&target, "tag"), b"someone's").unwrap();
        let file =
            PartialFile::create_small(&root_of(&target), target.clone(), 0o600, 0, "tag", &staging)
                .unwrap();
        file.write_at(0, b"data").unwrap();
        file.finish(false).unwrap().abandon();
        assert!(partial_path(&target, "tag").exists());
        assert!(!target.exists());
    }
}

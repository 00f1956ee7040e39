//! Batched durability for small files.
//!
//! One `fsync` costs about 0.5 ms here, ten times the cost of writing a 32 KiB file, so small
//! files are not flushed one by one. They are written, unnamed or to partial files
//! (`staging.rs`), with mode and mtime applied; when a batch is full (`batch_files` or
//! `batch_bytes`) or the client finishes, one `syncfs` flushes them all (through the server's
//! [`Flusher`], so that no write error goes unnoticed), then each is put in place (linked or
//! renamed), then their parent directory is flushed (a second `syncfs` when they are in
//! several), so the names are durable too. Only then is `FileDone` sent: a file
//! the client counts as delivered is always durable under its final name.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::beneath::Root;
use super::writer::{sync_dir, Finished};

/// Flushes the served filesystem for batches of small files, and keeps track of whether a
/// write to it has ever failed since the server started.
///
/// `syncfs` reports a writeback error once per descriptor, to the first call on it after the
/// error, and a descriptor opened after an error somebody was already told of never hears of
/// it. A flush through a fresh descriptor could therefore succeed although a file of its batch
/// never reached the disk: the error had gone to another session's flush, or to this
/// session's previous one, which also wrote this batch's first files. So every flush goes
/// through one descriptor opened when the server was bound, before any file was written: each
/// error is told to exactly one flush, which fails its batch and notes it. After that, every
/// batch also asks each of its files (`Finished::check_written`), which only that file's own
/// descriptor can be told of; until then, that costs nothing.
///
/// Flushes run side by side, but a flush that succeeds decides whether to ask its files only
/// once every flush that was running when it returned has noted its outcome: any of them may
/// have been told of the error first.
#[derive(Debug)]
pub(crate) struct Flusher {
    root: File,
    /// The device of the served directory's filesystem, the one `root` flushes.
    root_dev: u64,
    state: Mutex<FlushState>,
    /// Signalled whenever a flush notes its outcome.
    noted: Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    /// Tickets of the flushes running, in the order they started.
    running: BTreeSet<u64>,
    next: u64,
    /// Whether any flush was told of an error.
    failed_once: bool,
}

impl Flusher {
    /// A flusher for the filesystem holding `root`.
    ///
    /// # Errors
    /// When `root` cannot be opened.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        let root = File::open(root)?;
        Ok(Flusher {
            root_dev: root.metadata()?.dev(),
            root,
            state: Mutex::default(),
            noted: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Flushes every dirty page of the filesystem. `Ok(true)`: a write failed since the server
    /// started, so each file must be asked whether its data was written.
    ///
    /// # Errors
    /// The error this flush was told of.
    pub(crate) fn flush(&self) -> io::Result<bool> {
        let ticket = {
            let mut state = self.lock();
            let ticket = state.next;
            state.next += 1;
            state.running.insert(ticket);
            ticket
        };
        let flushed = syncfs(&self.root);
        let mut state = self.lock();
        state.running.remove(&ticket);
        state.failed_once |= flushed.is_err();
        self.noted.notify_all();
        flushed?;
        // Flushes started after this one returned are not waited for: none of them can have
        // been told of an error before this one would have been.
        let horizon = state.next;
        while state.running.first().is_some_and(|&t| t < horizon) {
            state = self
                .noted
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(state.failed_once)
    }

    /// Makes the metadata of `dirs` durable: flushes the served directory's filesystem, and
    /// once each other filesystem among them (mounts inside the served directory).
    ///
    /// # Errors
    /// The first flush that fails.
    pub(crate) fn flush_dirs<'a>(&self, dirs: impl Iterator<Item = &'a Path>) -> io::Result<()> {
        self.flush()?;
        let mut seen = BTreeSet::from([self.root_dev]);
        for dir in dirs {
            let dev = std::fs::metadata(dir)?.dev();
            if seen.insert(dev) {
                syncfs_at(dir)?;
            }
        }
        Ok(())
    }
}

/// Small files waiting for a flush, and directories and symlinks made since the last one.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Small files: entry, file, length.
    items: Vec<(u64, Finished, u64)>,
    /// Directories and symlinks already in place, durable once their parent directory is
    /// flushed: their paths.
    made: Vec<(u64, PathBuf)>,
    /// The entries in `items` and `made`: asked about for every small file that arrives.
    ids: HashSet<u64>,
    bytes: u64,
}

impl Batch {
    pub(crate) fn push(&mut self, file: u64, finished: Finished, bytes: u64) {
        self.items.push((file, finished, bytes));
        self.ids.insert(file);
        self.bytes += bytes;
    }

    /// A directory or symlink made at `path`, to be confirmed with the batch.
    pub(crate) fn push_made(&mut self, file: u64, path: PathBuf) {
        self.made.push((file, path));
        self.ids.insert(file);
    }

    /// The small files in the batch: entry, where it goes, length.
    pub(crate) fn files(&self) -> impl Iterator<Item = (u64, &Path, u64)> {
        self.items
            .iter()
            .map(|(file, finished, bytes)| (*file, finished.target(), *bytes))
    }

    pub(crate) fn contains(&self, file: u64) -> bool {
        self.ids.contains(&file)
    }

    pub(crate) fn is_full(&self, max_files: usize, max_bytes: u64) -> bool {
        self.items.len() + self.made.len() >= max_files || self.bytes >= max_bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty() && self.made.is_empty()
    }

    pub(crate) fn take(&mut self) -> Batch {
        std::mem::take(self)
    }

    /// Deletes every partial file (a session that will never finish).
    pub(crate) fn abandon(self) {
        for (_, f, _) in self.items {
            f.abandon();
        }
    }

    /// Flushes, renames and syncs directories. Blocking. Returns the entries now durable in
    /// place, and those that failed with why.
    pub(crate) fn commit(
        self,
        served: &Root,
        flusher: &Flusher,
    ) -> (Vec<u64>, Vec<(u64, std::io::Error)>) {
        if self.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let root = served.path();
        let parent_of = |path: &Path| path.parent().unwrap_or(root).to_path_buf();
        // The flusher reaches only the served directory's own filesystem. A directory on
        // another one (a mount inside the served directory) has its filesystem flushed on
        // its own, and its files always asked: nothing here was opened there before they
        // were written. `None`: the directory could not be looked at; treated likewise.
        let mut dev_of = BTreeMap::<PathBuf, Option<u64>>::new();
        let targets = self.items.iter().map(|(_, partial, _)| partial.target());
        for path in targets.chain(self.made.iter().map(|(_, path)| path.as_path())) {
            let parent = path.parent().unwrap_or(root);
            if !dev_of.contains_key(parent) {
                let dev = served
                    .open_dir(parent)
                    .and_then(|d| d.metadata())
                    .ok()
                    .map(|m| m.dev());
                dev_of.insert(parent.to_path_buf(), dev);
            }
        }
        let home = |dev: Option<u64>| dev == Some(flusher.root_dev);
        let check_each = match flusher.flush() {
            Ok(check_each) => check_each,
            Err(e) => {
                let made = self.made.into_iter().map(|(f, _)| (f, flush_failed(&e)));
                let failed = self
                    .items
                    .into_iter()
                    .map(|(f, partial, _)| {
                        partial.abandon();
                        (f, flush_failed(&e))
                    })
                    .chain(made)
                    .collect();
                return (Vec::new(), failed);
            }
        };
        // Each other filesystem flushed once; what it failed with, if it did.
        let mut elsewhere = BTreeMap::<u64, Option<std::io::Error>>::new();
        for (dir, &dev) in &dev_of {
            if let Some(dev) = dev.filter(|&d| !home(Some(d)) && !elsewhere.contains_key(&d)) {
                elsewhere.insert(dev, syncfs_at(dir).err());
            }
        }
        let dev_at = |parent: &Path| dev_of.get(parent).copied().flatten();
        let lost_at = |parent: &Path| {
            let dev = dev_at(parent)?;
            elsewhere.get(&dev)?.as_ref()
        };
        let mut done = Vec::with_capacity(self.items.len());
        let mut failed = Vec::new();
        let mut dirs = BTreeMap::<PathBuf, Vec<u64>>::new();
        for (file, partial, _) in self.items {
            let parent = parent_of(partial.target());
            let written = match lost_at(&parent) {
                Some(e) => Err(flush_failed(e)),
                None if check_each || !home(dev_at(&parent)) => partial.check_written(),
                None => Ok(()),
            };
            match written.and_then(|()| partial.put_in_place()) {
                Ok(()) => dirs.entry(parent).or_default().push(file),
                Err(e) => {
                    partial.abandon();
                    failed.push((file, e));
                }
            }
        }
        for (entry, path) in self.made {
            let parent = parent_of(&path);
            match lost_at(&parent) {
                Some(e) => failed.push((entry, flush_failed(e))),
                None => dirs.entry(parent).or_default().push(entry),
            }
        }
        // The renames are durable once their directories are: one directory is flushed on
        // its own; several at once with a second `syncfs` (one journal commit on ext4, where
        // each directory's `fsync` would be one commit of its own). Directories on other
        // filesystems are flushed one by one.
        let (here, away): (Vec<_>, Vec<_>) =
            dirs.into_iter().partition(|(dir, _)| home(dev_at(dir)));
        let synced_here = match here.as_slice() {
            [] => Ok(()),
            [(dir, _)] => sync_dir(served, dir),
            _ => flusher.flush().map(|_| ()),
        };
        let synced = here
            .into_iter()
            .map(|group| (group, synced_here.as_ref().copied().map_err(clone_error)))
            .chain(away.into_iter().map(|group| {
                let synced = sync_dir(served, &group.0);
                (group, synced)
            }));
        for ((dir, files), synced) in synced {
            match synced {
                Ok(()) => done.extend(files),
                Err(e) => failed.extend(files.into_iter().map(|f| {
                    let why = format!("flushing {}: {e}", dir.display());
                    (f, std::io::Error::new(e.kind(), why))
                })),
            }
        }
        (done, failed)
    }
}

fn clone_error(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

fn flush_failed(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("flush failed: {e}"))
}

/// Flushes every dirty page of the filesystem holding `f`.
fn syncfs(f: &File) -> io::Result<()> {
    // SAFETY: `f` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `syncfs` on the filesystem holding `dir`, through a descriptor opened for the call.
fn syncfs_at(dir: &Path) -> io::Result<()> {
    syncfs(&File::open(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::staging::Staging;
    use crate::server::testfs::FailingFs;
    use crate::server::writer::PartialFile;

    /// Stages two small files in a filesystem that cannot store them (one unnamed, one under
    /// a partial name), lets `before` flush before the batch does, and checks that the batch
    /// fails both and puts neither in place.
    fn lost_files_are_failed(before: impl FnOnce(&Path, &Flusher)) {
        let Some(fs) = FailingFs::new() else {
            return;
        };
        let root = fs.root();
        let flusher = Flusher::open(&root).unwrap();
        let dir = root.join("d");
        let data = vec![7u8; 256 << 10];
        let mut batch = Batch::default();
        let served = Root::open(&root).unwrap();
        let on = Staging::on_for_test(&dir);
        let off = Staging::default();
        for (id, name, staging) in [(1, "unnamed", &on), (2, "named", &off)] {
            let file = PartialFile::create_small(&served, dir.join(name), 0o644, 0, "tag", staging)
                .expect("create");
            file.write_at(0, &data).expect("write");
            batch.push(id, file.finish(false).expect("finish"), data.len() as u64);
        }
        before(&root, &flusher);

        let (done, failed) = batch.commit(&served, &flusher);
        assert!(done.is_empty(), "put in place: {done:?}");
        let mut ids: Vec<u64> = failed.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2], "{failed:?}");
        for name in ["unnamed", "named"] {
            assert!(!dir.join(name).exists(), "{name} was put in place");
        }
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        // Every later batch asks its files (or fails, if more writes were lost since).
        assert!(!matches!(flusher.flush(), Ok(false)));
    }

    /// Another process flushed first, through its own descriptor, and was told of the error:
    /// the server's flusher is told too.
    #[test]
    fn a_write_error_another_process_was_told_of_fails_the_batch() {
        lost_files_are_failed(|root, _| {
            let told = syncfs_at(root);
            assert!(told.is_err(), "the data was written after all: {told:?}");
            // A descriptor opened now is not told again: what the server did before.
            assert!(syncfs_at(root).is_ok());
        });
    }

    /// Another batch's flush through the server's flusher (another session's, or this
    /// session's previous one, which also wrote out this batch's first files) was told of
    /// the error: this batch asks each of its files.
    #[test]
    fn a_write_error_another_batch_was_told_of_fails_the_files_it_hit() {
        lost_files_are_failed(|_, flusher| {
            let told = flusher.flush();
            assert!(told.is_err(), "the data was written after all: {told:?}");
        });
    }

    /// A file in a directory on another filesystem, mounted inside the served one, is
    /// flushed with its own filesystem: the served directory's flush does not reach it.
    #[test]
    fn a_file_on_a_mount_inside_the_served_directory_is_flushed_there() {
        let Some(fs) = FailingFs::new() else {
            return;
        };
        // Served: the directory the failing filesystem is mounted in.
        let served = fs.base();
        let flusher = Flusher::open(served).unwrap();
        let staging = Staging::on_for_test(served);
        let root = Root::open(served).unwrap();
        let mut batch = Batch::default();
        let here = served.join("here");
        let lost = fs.root().join("d").join("lost");
        for (id, target) in [(1, &here), (2, &lost)] {
            let file = PartialFile::create_small(&root, target.clone(), 0o644, 0, "tag", &staging)
                .expect("create");
            file.write_at(0, &vec![1u8; 256 << 10]).expect("write");
            batch.push(id, file.finish(false).expect("finish"), 256 << 10);
        }
        let (done, failed) = batch.commit(&root, &flusher);
        assert_eq!(done, [1], "{failed:?}");
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, 2);
        assert!(here.exists());
        assert!(!lost.exists());
    }

    /// Directories' metadata is flushed on every filesystem they are on: an error on a
    /// mount inside the served directory is reported.
    #[test]
    fn directories_on_a_mount_inside_the_served_directory_are_flushed_there() {
        let Some(fs) = FailingFs::new() else {
            return;
        };
        let served = fs.base();
        let flusher = Flusher::open(served).unwrap();
        let inside = fs.root().join("d");
        let both = [served, inside.as_path()];
        flusher.flush_dirs(both.into_iter()).unwrap();
        std::fs::write(inside.join("lost"), vec![1u8; 256 << 10]).unwrap();
        assert!(flusher.flush_dirs(both.into_iter()).is_err());
    }

    /// Flushes side by side all return, and none was told of an error.
    #[test]
    fn flushes_side_by_side_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let flusher = Flusher::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            let running: Vec<_> = (0..8)
                .map(|i| {
                    let (flusher, dir) = (&flusher, dir.path());
                    s.spawn(move || {
                        std::fs::write(dir.join(i.to_string()), b"x").unwrap();
                        let asks: Vec<bool> = (0..4).map(|_| flusher.flush().unwrap()).collect();
                        asks.contains(&true)
                    })
                })
                .collect();
            for r in running {
                assert!(!r.join().unwrap());
            }
        });
        assert!(flusher.lock().running.is_empty());
    }

    /// With no write error, nothing is asked of each file, and the files are put in place.
    #[test]
    fn files_are_put_in_place_when_nothing_failed() {
        let dir = tempfile::tempdir().unwrap();
        let flusher = Flusher::open(dir.path()).unwrap();
        let staging = Staging::on_for_test(dir.path());
        let root = Root::open(dir.path()).unwrap();
        let mut batch = Batch::default();
        for (id, name) in [(1, "a"), (2, "b")] {
            let file =
                PartialFile::create_small(&root, dir.path().join(name), 0o644, 0, "tag", &staging)
                    .unwrap();
            file.write_at(0, name.as_bytes()).unwrap();
            batch.push(id, file.finish(false).unwrap(), 1);
        }
        let (done, failed) = batch.commit(&root, &flusher);
        assert_eq!(done, [1, 2]);
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"b");
        assert!(matches!(flusher.flush(), Ok(false)));
    }
}

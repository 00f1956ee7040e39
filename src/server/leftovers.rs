//! Partial files and resume journals left behind by transfers that never came back: found in
//! the served directory and deleted once they are older than `partial_expiry`.
//!
//! A large file's partial file and journal are kept when its session ends unfinished, so that
//! the next transfer of it resumes (`journal.rs`); a receiver killed outright also leaves the
//! small files' partial files of its last batch. If no transfer of them ever comes, they would
//! stay forever. A sweep walks the served directory (never following links, and deleting
//! through directories reached without following any, see `beneath.rs`) and deletes:
//!
//! - a journal `.<name>.tidegate-journal` and its partial file `.<name>.tidegate-partial` when
//!   both last changed before the cutoff and no transfer holds the journal's lock;
//! - any other `.<…>.tidegate-partial` (no journal beside it) last changed before the cutoff.
//!
//! "Changed" is the inode's change time (see [`old`]). A live transfer keeps changing its
//! files; the longest it leaves one untouched is about `idle_timeout` + `session_linger`
//! (minutes), and the command line's shortest expiry is an hour ([`MIN_EXPIRY`]). A journal
//! is deleted only under its lock, and a transfer opening one checks that the file it locked
//! is still the one at its path (`journal::open`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::beneath::{Dir, Root};
use super::journal::try_lock;
use super::names::{stem, with_suffix, JOURNAL_SUFFIX, PARTIAL_SUFFIX};

/// The shortest expiry the command line accepts.
pub const MIN_EXPIRY: Duration = Duration::from_secs(3600);

/// What a sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Files deleted (partial files and journals).
    pub(crate) files: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
}

/// How long to wait between sweeps for an expiry: a leftover is deleted at most this long
/// after it expired.
pub(crate) fn interval(expiry: Duration) -> Duration {
    (expiry / 4).clamp(Duration::from_secs(60), Duration::from_secs(24 * 3600))
}

/// Deletes the leftovers under `root` last changed before `cutoff`. Stops early (with what it
/// deleted so far) when `stop` is cancelled. Directories that cannot be read are skipped.
/// Blocking.
pub(crate) fn sweep(root: &Path, cutoff: SystemTime, stop: &CancellationToken) -> Swept {
    let mut swept = Swept::default();
    let Ok(served) = Root::open(root) else {
        return swept;
    };
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if stop.is_cancelled() {
            break;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut partials = Vec::new();
        let mut journals = HashSet::new();
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                if let Some(stem) = stem(&name, PARTIAL_SUFFIX) {
                    partials.push(stem);
                } else if let Some(stem) = stem(&name, JOURNAL_SUFFIX) {
                    journals.insert(stem);
                }
            }
        }
        for stem in &journals {
            swept.add(expire_resumable(&served, &dir, stem, cutoff));
        }
        for stem in partials.iter().filter(|s| !journals.contains(*s)) {
            let path = dir.join(with_suffix(stem, PARTIAL_SUFFIX));
            swept.add(remove_if_old(&served, &path, cutoff));
        }
    }
    swept
}

impl Swept {
    fn add(&mut self, other: Swept) {
        self.files += other.files;
        self.bytes += other.bytes;
    }
}

/// `.<stem>` + `suffix` → `stem` (as the name is: `.<stem>`); `None` for other names.
/// Last changed before `cutoff`, and its size; `None` if it is not a regular file (or gone).
///
/// The inode's change time, not its mtime: a partial file is given its source's mtime before
/// it is renamed into place (and waits so in a small-file batch), and a source's mtime may be
/// years old. The change time moves with every write and metadata change and cannot be set.
fn old(served: &Root, path: &Path, cutoff: SystemTime) -> Option<(bool, u64)> {
    let st = served.at(path, false, |d, name| d.lstat(name)).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let changed = UNIX_EPOCH.checked_add(Duration::new(
        u64::try_from(st.st_ctime).ok()?,
        u32::try_from(st.st_ctime_nsec).ok()?,
    ))?;
    Some((changed < cutoff, u64::try_from(st.st_size).ok()?))
}

/// Deletes the file at `path` through a directory reached without following a symlink.
fn remove(served: &Root, path: &Path) -> bool {
    served.at(path, false, Dir::remove).is_ok()
}

fn remove_if_old(served: &Root, path: &Path, cutoff: SystemTime) -> Swept {
    match old(served, path, cutoff) {
        Some((true, bytes)) if remove(served, path) => Swept { files: 1, bytes },
        _ => Swept::default(),
    }
}

/// A journal and its partial file, both old and the journal not locked by a transfer.
fn expire_resumable(served: &Root, dir: &Path, stem: &OsStr, cutoff: SystemTime) -> Swept {
    let journal_path = dir.join(with_suffix(stem, JOURNAL_SUFFIX));
    let partial_path = dir.join(with_suffix(stem, PARTIAL_SUFFIX));
    let Some((true, journal_bytes)) = old(served, &journal_path, cutoff) else {
        return Swept::default();
    };
    let partial = old(served, &partial_path, cutoff);
    if matches!(partial, Some((false, _))) {
        return Swept::default(); // written recently: a transfer is on it
    }
    let Ok(journal) = served.at(&journal_path, false, |d, name| {
        d.open(name, libc::O_RDONLY, 0)
    }) else {
        return Swept::default();
    };
    if !matches!(try_lock(&journal), Ok(true)) {
        return Swept::default(); // a transfer holds it
    }
    let mut swept = Swept::default();
    if let Some((true, bytes)) = partial {
        if remove(served, &partial_path) {
            swept.add(Swept { files: 1, bytes });
        }
    }
    // Under the lock: a transfer that opened the journal meanwhile waits for it, and then
    // finds the partial file gone.
    if remove(served, &journal_path) {
        swept.add(Swept {
            files: 1,
            bytes: journal_bytes,
        });
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn write(path: &Path, len: usize) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, vec![7u8; len]).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A cutoff between what was written before and what is written after it. Change times
    /// come from the kernel's coarse clock (a few milliseconds per tick).
    fn cutoff_here() -> SystemTime {
        std::thread::sleep(Duration::from_millis(30));
        let cutoff = SystemTime::now();
        std::thread::sleep(Duration::from_millis(30));
        cutoff
    }

    fn far_future() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    #[test]
    fn old_leftovers_go_and_everything_else_stays() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // Old and abandoned: a resumable pair, a small file's tagged partial, deep down.
        write(&r.join("a/.big.tidegate-partial"), 1000);
        write(&r.join("a/.big.tidegate-journal"), 96);
        write(&r.join("a/b/c/.s.0123456789abcdef.tidegate-partial"), 10);
        // A journal without its partial file (deleted by hand).
        write(&r.join("a/.gone.tidegate-journal"), 48);
        // Not ours, however old.
        write(&r.join("a/big"), 3);
        write(&r.join("a/tidegate-partial"), 3);
        write(&r.join("a/x.tidegate-partial"), 3);
        write(&r.join("a/..tidegate-partial"), 3);
        std::os::unix::fs::symlink("/etc/passwd", r.join("a/.l.tidegate-partial")).unwrap();
        // A journal whose partial file is still being written: in use.
        write(&r.join("a/.busy.tidegate-journal"), 48);
        write(&r.join("a/.busy.tidegate-partial"), 5);
        // A partial file given an old mtime (its source's) before its rename.
        write(&r.join("a/.m.0123456789abcdef.tidegate-partial"), 5);
        let cutoff = cutoff_here();
        let m = File::options()
            .write(true)
            .open(r.join("a/.m.0123456789abcdef.tidegate-partial"))
            .unwrap();
        m.set_modified(UNIX_EPOCH + Duration::from_secs(1)).unwrap();
        // Recent: a transfer may come back for them.
        write(&r.join("a/.new.tidegate-partial"), 5);
        write(&r.join("a/.new.tidegate-journal"), 48);
        fs::write(r.join("a/.busy.tidegate-partial"), b"more").unwrap();

        let swept = sweep(r, cutoff, &CancellationToken::new());
        assert_eq!(
            swept,
            Swept {
                files: 4,
                bytes: 1000 + 96 + 10 + 48
            }
        );
        assert_eq!(
            names(&r.join("a")),
            [
                "..tidegate-partial",
                ".busy.tidegate-journal",
                ".busy.tidegate-partial",
                ".l.tidegate-partial",
                ".m.0123456789abcdef.tidegate-partial",
                ".new.tidegate-journal",
                ".new.tidegate-partial",
                "b",
                "big",
                "tidegate-partial",
                "x.tidegate-partial",
            ]
        );
        assert!(names(&r.join("a/b/c")).is_empty());
        assert!(fs::symlink_metadata("/etc/passwd").is_ok());
    }

    #[test]
    fn a_locked_journal_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(&r.join(".f.tidegate-partial"), 100);
        write(&r.join(".f.tidegate-journal"), 48);
        let held = File::open(r.join(".f.tidegate-journal")).unwrap();
        assert!(try_lock(&held).unwrap());
        assert_eq!(
            sweep(r, far_future(), &CancellationToken::new()),
            Swept::default()
        );
        drop(held);
        assert_eq!(sweep(r, far_future(), &CancellationToken::new()).files, 2);
        assert!(names(r).is_empty());
    }

    #[test]
    fn a_cancelled_sweep_stops() {
        let root = tempfile::tempdir().unwrap();
        write(&root.path().join(".f.tidegate-partial"), 1);
        let stop = CancellationToken::new();
        stop.cancel();
        assert_eq!(sweep(root.path(), far_future(), &stop), Swept::default());
        assert_eq!(names(root.path()).len(), 1);
    }

    #[test]
    fn sweeps_are_spaced_by_a_quarter_of_the_expiry() {
        const DAY: u64 = 24 * 3600;
        assert_eq!(
            interval(Duration::from_secs(7 * DAY)),
            Duration::from_secs(DAY)
        );
        assert_eq!(
            interval(Duration::from_secs(3600)),
            Duration::from_secs(900)
        );
        assert_eq!(interval(Duration::from_secs(1)), Duration::from_secs(60));
    }
}

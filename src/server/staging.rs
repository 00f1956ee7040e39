//! Unnamed staging of small files: where a small file waits, written and closed, until its
//! batch is durable and it may take its name.
//!
//! Waiting under a partial name costs a directory entry that is made, then looked up and
//! removed again by the rename into place: with 10,000 small files, the rename alone is a
//! fifth of the receiver's CPU (docs/PERFORMANCE.md). So a small file is written instead to an
//! unnamed file (`O_TMPFILE`) in its target's directory and, once its batch is flushed, gets
//! its name with one `linkat`. Nothing is ever visible under a temporary name, and a crash
//! leaves nothing behind: the filesystem frees unnamed files when it is mounted again.
//!
//! The price is one open descriptor per waiting file. [`Staging`] counts them against
//! `ServerOptions::unnamed_files` (by default half the process's descriptor limit); a file
//! that finds no slot free, or a filesystem without `O_TMPFILE`, waits under a partial name
//! instead. The server grows its descriptor table for them when it is bound
//! ([`reserve_descriptors`]), not while receiving.
//!
//! A descriptor is linked with `linkat(fd, "", AT_EMPTY_PATH)` where the kernel allows it
//! (some ask for `CAP_DAC_READ_SEARCH`), else through `/proc/self/fd/N`. Which one works is
//! found once, when the server is bound, by a probe in the served directory; when neither
//! does, staging is off.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::beneath::{with_c, Dir};
use super::names::PARTIAL_SUFFIX;

/// How an unnamed file is given a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkVia {
    /// `linkat(fd, "", …, AT_EMPTY_PATH)`.
    EmptyPath,
    /// `linkat(AT_FDCWD, "/proc/self/fd/N", …, AT_SYMLINK_FOLLOW)`.
    ProcFd,
}

/// The server's unnamed staging: how files are linked, and the descriptor slots left.
#[derive(Debug)]
pub(crate) struct Staging {
    /// `None`: staging is off, every small file waits under a partial name.
    via: Option<LinkVia>,
    /// One permit per descriptor an unnamed file may hold.
    free: Arc<Semaphore>,
    /// Set when a filesystem refused `O_TMPFILE`: the served tree (or the part of it on
    /// another mount) cannot stage, so stop asking.
    refused: AtomicBool,
}

/// An unnamed file's link method and descriptor permit, given back when it is dropped with
/// its file.
#[derive(Debug)]
pub(crate) struct Linker {
    via: LinkVia,
    _slot: OwnedSemaphorePermit,
}

impl Default for Staging {
    /// Staging off.
    fn default() -> Self {
        Staging::new(None, 0)
    }
}

impl Staging {
    fn new(via: Option<LinkVia>, slots: usize) -> Self {
        Staging {
            via,
            free: Arc::new(Semaphore::new(slots.min(Semaphore::MAX_PERMITS))),
            refused: AtomicBool::new(false),
        }
    }

    /// Finds out whether unnamed files can be made in `root` and linked, and how; with
    /// `slots` descriptors for them. Staging is off when `slots` is 0 or nothing works.
    pub(crate) fn probe(root: &Path, slots: usize) -> Self {
        if slots == 0 {
            return Staging::default();
        }
        let Ok(Some(file)) = open_unnamed(root, 0o600) else {
            return Staging::default();
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // A name the leftover sweep deletes, should the process die right here.
        let name = root.join(format!(
            ".probe-{}-{nanos}{PARTIAL_SUFFIX}",
            std::process::id()
        ));
        let Ok(at) = CString::new(name.as_os_str().as_bytes()) else {
            return Staging::default();
        };
        let via = [LinkVia::EmptyPath, LinkVia::ProcFd]
            .into_iter()
            .find(|&via| match link(&file, via, libc::AT_FDCWD, &at) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&name);
                    true
                }
                Err(e) => {
                    tracing::debug!("linking an unnamed file with {via:?}: {e}");
                    false
                }
            });
        Staging::new(via, slots)
    }

    /// Whether small files can be staged unnamed at all.
    pub(crate) fn is_on(&self) -> bool {
        self.via.is_some() && !self.refused.load(Ordering::Relaxed)
    }

    /// An unnamed file in `dir`, created with `mode`'s permission bits, and its linker.
    /// `Ok(None)`: staging is off, no slot is free, or the filesystem has no unnamed files;
    /// the caller stages under a name.
    ///
    /// # Errors
    /// What creating a file in `dir` fails with (`NotFound` if `dir` is gone, …).
    pub(crate) fn create(&self, dir: &Dir, mode: u32) -> io::Result<Option<(File, Linker)>> {
        let Some(via) = self.via else {
            return Ok(None);
        };
        if self.refused.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let Ok(slot) = Arc::clone(&self.free).try_acquire_owned() else {
            return Ok(None);
        };
        match unnamed_or_none(dir.unnamed(mode & 0o777))? {
            Some(file) => Ok(Some((file, Linker { via, _slot: slot }))),
            None => {
                self.refused.store(true, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Descriptor slots free (tests).
    #[cfg(test)]
    fn free(&self) -> usize {
        self.free.available_permits()
    }

    /// Staging in `dir` with 4 slots, which must be on (tests).
    #[cfg(test)]
    pub(crate) fn on_for_test(dir: &Path) -> Self {
        let staging = Staging::probe(dir, 4);
        assert!(
            staging.is_on(),
            "this test needs a filesystem with O_TMPFILE"
        );
        staging
    }
}

impl Linker {
    /// Gives the unnamed `file` the name `name` in `dir`, which must not exist
    /// (`AlreadyExists`).
    pub(crate) fn link(&self, file: &File, dir: &Dir, name: &OsStr) -> io::Result<()> {
        with_c(name, |name| link(file, self.via, dir.raw(), name))
    }
}

/// An unnamed file in `dir`; `Ok(None)` when its filesystem (or kernel) has none. Never
/// follows a symlink in `dir`'s last component.
fn open_unnamed(dir: &Path, mode: u32) -> io::Result<Option<File>> {
    unnamed_or_none(
        OpenOptions::new()
            .read(true)
            .write(true)
            .mode(mode)
            .custom_flags(libc::O_TMPFILE | libc::O_NOFOLLOW)
            .open(dir),
    )
}

/// What opening an unnamed file gave: `Ok(None)` when its filesystem (or kernel) has none.
fn unnamed_or_none(opened: io::Result<File>) -> io::Result<Option<File>> {
    match opened {
        Ok(file) => Ok(Some(file)),
        // EOPNOTSUPP: the filesystem has none; EISDIR or EINVAL: a kernel that predates them.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The process's soft limit on open descriptors (1024 if it cannot be read).
pub(crate) fn descriptor_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// Grows the process's descriptor table now, while the server is idle, so that descriptors
/// numbered up to `upto` (capped by the limit) need no growth later; returns the descriptor
/// number that did it, already closed again.
///
/// Waiting small files hold a descriptor each, thousands in a batch. The kernel grows the
/// table by doubling, and in a process of several threads each growth waits for an RCU
/// grace period (`synchronize_rcu` in `expand_fdtable`): met while receiving, that would put
/// the worker writing a file to sleep each time the waiting files doubled, in every new
/// `serve` process. Nothing already open is touched: `beside` is copied to
/// the lowest free number at or above the target, and closed.
pub(crate) fn reserve_descriptors(beside: BorrowedFd<'_>, upto: usize) -> Option<i32> {
    let top = libc::c_int::try_from(upto.min(descriptor_limit().saturating_sub(1))).ok()?;
    // SAFETY: duplicating a descriptor the caller keeps open; the copy is closed below.
    let copy = unsafe { libc::fcntl(beside.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
    if copy < 0 {
        tracing::debug!(
            "reserving {top} descriptors: {}",
            io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: `copy` was just made here and nothing else knows it.
    drop(unsafe { OwnedFd::from_raw_fd(copy) });
    Some(copy)
}

/// Links `file` as `to` in the directory `dir` (or relative to the working directory, with
/// `AT_FDCWD`).
fn link(file: &File, via: LinkVia, dir: RawFd, to: &CStr) -> io::Result<()> {
    let rc = match via {
        // SAFETY: a valid descriptor and NUL-terminated strings that outlive the call.
        LinkVia::EmptyPath => unsafe {
            libc::linkat(
                file.as_raw_fd(),
                c"".as_ptr(),
                dir,
                to.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        },
        LinkVia::ProcFd => {
            let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .map_err(|_| io::Error::other("descriptor path"))?;
            // SAFETY: NUL-terminated strings that outlive the call.
            unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    dir,
                    to.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            }
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;

    fn d(path: &Path) -> Dir {
        Dir::at_path(path).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_unnamed_file_is_invisible_until_linked() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::on_for_test(dir.path());
        assert!(
            names(dir.path()).is_empty(),
            "the probe left {:?}",
            names(dir.path())
        );
        let (mut file, linker) = staging.create(&d(dir.path()), 0o640).unwrap().unwrap();
        file.write_all(b"contents").unwrap();
        assert!(names(dir.path()).is_empty());
        let target = dir.path().join("a");
        linker.link(&file, &d(dir.path()), OsStr::new("a")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"contents");
        assert_eq!(names(dir.path()), ["a"]);
        // An existing name is never replaced by a link.
        let (other, linker) = staging.create(&d(dir.path()), 0o600).unwrap().unwrap();
        let e = linker
            .link(&other, &d(dir.path()), OsStr::new("a"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&target).unwrap(), b"contents");
        let mode = std::fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o077 & !0o640, 0, "mode {mode:o}");
    }

    #[test]
    fn both_link_methods_name_a_file() {
        let dir = tempfile::tempdir().unwrap();
        for (i, via) in [LinkVia::EmptyPath, LinkVia::ProcFd]
            .into_iter()
            .enumerate()
        {
            let mut file = open_unnamed(dir.path(), 0o600).unwrap().unwrap();
            file.write_all(format!("file {i}").as_bytes()).unwrap();
            let target = dir.path().join(format!("f{i}"));
            let to = CString::new(target.as_os_str().as_bytes()).unwrap();
            match link(&file, via, libc::AT_FDCWD, &to) {
                Ok(()) => assert_eq!(
                    std::fs::read(&target).unwrap(),
                    format!("file {i}").as_bytes()
                ),
                // Without CAP_DAC_READ_SEARCH on a kernel that asks for it.
                Err(e) if via == LinkVia::EmptyPath => eprintln!("AT_EMPTY_PATH: {e}"),
                Err(e) => panic!("{via:?}: {e}"),
            }
        }
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::probe(dir.path(), 2);
        let a = staging.create(&d(dir.path()), 0o600).unwrap();
        let b = staging.create(&d(dir.path()), 0o600).unwrap();
        assert!(a.is_some() && b.is_some());
        assert_eq!(staging.free(), 0);
        assert!(staging.create(&d(dir.path()), 0o600).unwrap().is_none());
        drop(a);
        assert_eq!(staging.free(), 1);
        assert!(staging.create(&d(dir.path()), 0o600).unwrap().is_some());
        assert_eq!(
            staging.free(),
            1,
            "the file made and dropped gave its slot back"
        );
    }

    #[test]
    fn off_when_asked_and_errors_when_the_directory_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let off = Staging::probe(dir.path(), 0);
        assert!(!off.is_on());
        assert!(off.create(&d(dir.path()), 0o600).unwrap().is_none());
        let staging = Staging::probe(dir.path(), 2);
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        let gone = d(&dir.path().join("gone"));
        std::fs::remove_dir(dir.path().join("gone")).unwrap();
        assert!(staging.create(&gone, 0o600).is_err());
        assert_eq!(staging.free(), 2, "a failed create keeps no slot");
    }

    /// A filesystem without unnamed files (procfs here) turns staging off for the server,
    /// and the file is staged under a name instead of failing.
    #[test]
    fn a_filesystem_without_unnamed_files_turns_staging_off() {
        // SAFETY: reads the calling process's effective user id.
        if unsafe { libc::geteuid() } != 0 {
            // Unprivileged, /proc refuses the write permission before anything else.
            eprintln!("skipped: needs root to reach procfs's missing O_TMPFILE");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::on_for_test(dir.path());
        assert!(staging
            .create(&d(Path::new("/proc")), 0o600)
            .unwrap()
            .is_none());
        assert!(!staging.is_on());
        assert!(staging.create(&d(dir.path()), 0o600).unwrap().is_none());
        assert_eq!(staging.free(), 4, "no slot kept");
    }

    /// Descriptor slots in this process's table.
    fn table_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    fn is_open(fd: i32) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn reserving_descriptors_grows_the_table_and_replaces_none() {
        let file = tempfile::tempfile().unwrap();
        let before = table_size();
        let upto = (before * 2).min(descriptor_limit() - 1);
        if upto < before {
            eprintln!("skipped: the descriptor limit leaves no room to grow the table");
            return;
        }
        let used = reserve_descriptors(file.as_fd(), upto).unwrap();
        assert!(
            usize::try_from(used).unwrap() >= upto,
            "copied to {used}, asked for {upto}"
        );
        assert!(table_size() > upto, "table of {} slots", table_size());
        assert!(!is_open(used), "the copy was left open");

        // A descriptor open at the target is stepped over, not replaced.
        // SAFETY: a copy of `file`, closed below.
        let held = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
        assert!(held >= 64);
        let used = reserve_descriptors(file.as_fd(), usize::try_from(held).unwrap()).unwrap();
        assert!(used > held);
        assert!(is_open(held), "the descriptor in use was closed");
        // SAFETY: `held` was made above and is closed only here.
        drop(unsafe { OwnedFd::from_raw_fd(held) });
    }
}

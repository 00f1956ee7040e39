//! Every change the receiver makes in the served tree goes through a directory descriptor that
//! the kernel reached without following a symbolic link, so that a local user who swaps a
//! directory for a symlink while a file is received cannot redirect the write out of the tree.
//!
//! A directory is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the served
//! directory's descriptor; where the kernel has no `openat2` (before Linux 5.6, or a seccomp
//! filter refuses it) or the path is longer than one system call takes, it is walked one
//! component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`, which refuses a symlink at
//! each step just as surely. The file itself is then created, renamed, linked or removed
//! relative to that descriptor (`openat`, `renameat`, `linkat`, `unlinkat`, `symlinkat`,
//! `mkdirat`), and never through a symlink in its own name either.
//!
//! Paths handed in are the checked absolute paths of `paths.rs` (inside the root). Each
//! operation looks its directory up again, as a path-based call would: a directory kept open
//! would go on receiving files after it was moved or deleted and made again, away from the
//! path the peer named.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The served directory, and the directories below it reached safely.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    path: PathBuf,
    /// Whether `openat2` may be tried (cleared when the kernel turns out to have none).
    openat2: AtomicBool,
}

/// A directory inside the served tree, opened with `O_PATH`: it names the directory itself,
/// whatever happens to the path that led to it.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| nul_error())
}

fn nul_error() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path")
}

/// Runs `f` on `name` NUL-terminated: copied to the stack when short, as names and most
/// paths are (no allocation per file operation), else to the heap.
pub(crate) fn with_c<T>(name: &OsStr, f: impl FnOnce(&CStr) -> io::Result<T>) -> io::Result<T> {
    const ON_STACK: usize = 512;
    let bytes = name.as_bytes();
    if bytes.len() >= ON_STACK {
        return f(&cstr(name)?);
    }
    let mut buf = [0u8; ON_STACK];
    buf[..bytes.len()].copy_from_slice(bytes);
    let c = CStr::from_bytes_with_nul(&buf[..=bytes.len()]).map_err(|_| nul_error())?;
    f(c)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes ownership of a descriptor a system call returned, or its error.
fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ELOOP`: what a path through a symbolic link gets (see [`is_through_symlink`]).
fn through_symlink() -> io::Error {
    io::Error::from_raw_os_error(libc::ELOOP)
}

/// Whether `e` says that a path went through a symbolic link.
pub(crate) fn is_through_symlink(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// `openat2(dirfd, path, O_PATH | O_DIRECTORY, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.
fn openat2_dir(dirfd: RawFd, path: &CStr) -> io::Result<OwnedFd> {
    let mut how: libc::open_how = unsafe_zeroed_how();
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: a valid descriptor, a NUL-terminated path and an `open_how` of the size passed,
    // all outliving the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(RawFd::try_from(fd).unwrap_or(-1))
}

fn unsafe_zeroed_how() -> libc::open_how {
    // SAFETY: `open_how` is plain integers, for which all zeroes is valid (and the kernel
    // requires unused fields to be zero).
    unsafe { std::mem::zeroed() }
}

impl Root {
    /// Opens the served directory `path` (already checked by `probe.rs`).
    pub(crate) fn open(path: &Path) -> io::Result<Arc<Root>> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: a NUL-terminated path outliving the call.
        let fd = owned(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(Arc::new(Root {
            fd,
            path: path.to_path_buf(),
            openat2: AtomicBool::new(true),
        }))
    }

    /// The served directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `path`'s directory (opened, and made with its missing parents when `make`) and its
    /// last component. `path` must be inside the root and have a last component.
    fn split<'p>(&self, path: &'p Path, make: bool) -> io::Result<(Dir, &'p OsStr)> {
        let outside = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not inside the served directory", path.display()),
            )
        };
        let rel = path.strip_prefix(&self.path).map_err(|_| outside())?;
        let name = rel.file_name().ok_or_else(outside)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.dir(parent, make)?, name))
    }

    /// Makes the missing parents of `path` as real directories (0777 less the umask).
    pub(crate) fn make_parents(&self, path: &Path) -> io::Result<()> {
        self.split(path, true).map(drop)
    }

    /// Opens the existing parent of `path` as [`Root::at`] does (the fuzz target's check).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn reach_parent(&self, path: &Path) -> io::Result<()> {
        self.split(path, false).map(drop)
    }

    /// Runs `op` on `path`'s directory, looked up now, and last component.
    pub(crate) fn at<T>(
        &self,
        path: &Path,
        make: bool,
        op: impl FnOnce(&Dir, &OsStr) -> io::Result<T>,
    ) -> io::Result<T> {
        let (dir, name) = self.split(path, make)?;
        op(&dir, name)
    }

    /// The directory `dir` (relative to the root) itself, opened for reading: to flush it, or
    /// give it its time and mode.
    pub(crate) fn open_dir(&self, dir: &Path) -> io::Result<File> {
        let rel = dir.strip_prefix(&self.path).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not inside the served directory", dir.display()),
            )
        })?;
        self.dir(rel, false)?.open_self()
    }

    /// The directory at `rel`, opened now (made with its missing parents when `make`).
    fn dir(&self, rel: &Path, make: bool) -> io::Result<Dir> {
        let fd = match self.resolve(rel) {
            Err(e) if make && e.kind() == io::ErrorKind::NotFound => self.walk(rel, true)?,
            other => other?,
        };
        Ok(Dir { fd })
    }

    /// Opens the existing directory at `rel`: `openat2` where the kernel has it, else
    /// [`Root::walk`].
    fn resolve(&self, rel: &Path) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.walk(rel, false);
        }
        if self.openat2.load(Ordering::Relaxed) {
            match with_c(rel.as_os_str(), |c| openat2_dir(self.fd.as_raw_fd(), c)) {
                Ok(fd) => return Ok(fd),
                // No `openat2` (ENOSYS; EPERM from a seccomp filter; E2BIG or EINVAL from a
                // kernel that knows not all of its flags): walk from now on.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOSYS | libc::EPERM | libc::E2BIG | libc::EINVAL)
                    ) =>
                {
                    self.openat2.store(false, Ordering::Relaxed);
                }
                // Too long for one call, or a rename raced the lookup: walk this once.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENAMETOOLONG | libc::EAGAIN)) => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return Err(through_symlink()),
                Err(e) => return Err(e),
            }
        }
        self.walk(rel, false)
    }

    /// Opens the directory at `rel` one component at a time, each with `O_NOFOLLOW`, making
    /// the missing ones when `make`. A symlink anywhere is `ELOOP`.
    fn walk(&self, rel: &Path, make: bool) -> io::Result<OwnedFd> {
        // SAFETY: duplicating a descriptor this root owns; the copy is owned below.
        let mut at = owned(unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
        for part in rel.components() {
            let Component::Normal(part) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a plain relative path",
                ));
            };
            at = with_c(part, |c| match open_step(&at, c) {
                Err(e) if make && e.kind() == io::ErrorKind::NotFound => {
                    // SAFETY: a valid descriptor and a NUL-terminated name outliving the call.
                    let rc = unsafe { libc::mkdirat(at.as_raw_fd(), c.as_ptr(), 0o777) };
                    match check(rc) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
                        _ => open_step(&at, c),
                    }
                }
                other => other,
            })?;
        }
        Ok(at)
    }
}

/// Opens the directory `name` in `at`, never through a symlink (`ELOOP` if it is one).
fn open_step(at: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and a NUL-terminated name outliving the call.
    let fd = unsafe {
        libc::openat(
            at.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    match owned(fd) {
        // With O_PATH, O_NOFOLLOW alone would open the symlink; O_DIRECTORY then refuses it
        // as "not a directory": tell the two apart.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => match lstat_at(at.as_raw_fd(), name) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => Err(through_symlink()),
            _ => Err(e),
        },
        other => other,
    }
}

fn lstat_at(dirfd: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: all zeroes is a valid `stat`, filled in by the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, a NUL-terminated name and a writable `stat`.
    check(unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

impl Dir {
    /// The directory at `path`, not through a symlink in its last component (tests).
    #[cfg(test)]
    pub(crate) fn at_path(path: &Path) -> io::Result<Dir> {
        let c = cstr(path.as_os_str())?;
        // SAFETY: a NUL-terminated path outliving the call.
        let fd = owned(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        Ok(Dir { fd })
    }

    /// The descriptor, for `*at` calls made elsewhere (`linkat` in `staging.rs`).
    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The directory itself, opened for reading.
    pub(crate) fn open_self(&self) -> io::Result<File> {
        self.open_c(c".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
    }

    /// `openat(name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
    pub(crate) fn open(&self, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
        with_c(name, |c| self.open_c(c, flags, mode))
    }

    fn open_c(&self, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
        // SAFETY: a valid descriptor and a NUL-terminated name outliving the call.
        let fd = unsafe {
            libc::openat(
                self.raw(),
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        owned(fd).map(File::from)
    }

    /// An unnamed file in this directory (`O_TMPFILE`).
    pub(crate) fn unnamed(&self, mode: u32) -> io::Result<File> {
        self.open_c(c".", libc::O_TMPFILE | libc::O_RDWR, mode)
    }

    /// `renameat(from, to)`, both in this directory.
    pub(crate) fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        with_c(from, |from| {
            with_c(to, |to| {
                // SAFETY: a valid descriptor and NUL-terminated names outliving the call.
                check(unsafe { libc::renameat(self.raw(), from.as_ptr(), self.raw(), to.as_ptr()) })
            })
        })
    }

    /// `unlinkat(name)`: a file or symlink, never a directory.
    pub(crate) fn remove(&self, name: &OsStr) -> io::Result<()> {
        with_c(name, |c| {
            // SAFETY: a valid descriptor and a NUL-terminated name outliving the call.
            check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) })
        })
    }

    /// `mkdirat(name, mode)`.
    pub(crate) fn make_dir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        with_c(name, |c| {
            // SAFETY: a valid descriptor and a NUL-terminated name outliving the call.
            check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) })
        })
    }

    /// `symlinkat(target, name)`.
    pub(crate) fn symlink(&self, target: &[u8], name: &OsStr) -> io::Result<()> {
        with_c(OsStr::from_bytes(target), |t| {
            with_c(name, |c| {
                // SAFETY: a valid descriptor and NUL-terminated strings outliving the call.
                check(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) })
            })
        })
    }

    /// What `name` is, without following it if it is a symlink.
    pub(crate) fn lstat(&self, name: &OsStr) -> io::Result<libc::stat> {
        with_c(name, |c| lstat_at(self.raw(), c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(dir: &Path) -> Arc<Root> {
        Root::open(dir).unwrap()
    }

    /// Without and with `openat2`: both refuse a symlink at any depth, and reach real
    /// directories.
    #[test]
    fn a_symlink_on_the_way_is_refused_by_either_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a/link")).unwrap();
        for with_openat2 in [true, false] {
            let r = root(dir.path());
            r.openat2.store(with_openat2, Ordering::Relaxed);
            let e = r.dir(Path::new("a/link"), false).unwrap_err();
            assert!(is_through_symlink(&e), "{with_openat2}: {e}");
            let e = r.dir(Path::new("a/link/x"), true).unwrap_err();
            assert!(is_through_symlink(&e), "{with_openat2}: {e}");
            assert!(r.dir(Path::new("a/b"), false).is_ok());
            r.dir(Path::new("a/new/deep"), true).unwrap();
            assert!(dir.path().join("a/new/deep").is_dir());
        }
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    /// The race a local user would run: the directory is looked up, then swapped for a
    /// symlink to elsewhere before the file is made. The file lands in the directory that
    /// was looked up (now moved aside), never where the symlink points; and a fresh lookup
    /// refuses the symlink.
    #[test]
    fn a_directory_swapped_for_a_symlink_after_the_lookup_redirects_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let r = root(dir.path());
        let target = dir.path().join("d/file");
        let (d, name) = r.split(&target, false).unwrap();
        std::fs::rename(dir.path().join("d"), dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d")).unwrap();
        d.open(name, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600)
            .unwrap();
        assert!(dir.path().join("moved/file").is_file());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let e = r.at(&target, true, |d, n| {
            d.open(n, libc::O_CREAT | libc::O_WRONLY, 0o600)
        });
        assert!(is_through_symlink(&e.unwrap_err()));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    /// A path longer than one system call takes is walked instead.
    #[test]
    fn a_path_longer_than_path_max_is_walked() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        let long: PathBuf = std::iter::repeat_n("d".repeat(200), 24).collect();
        assert!(long.as_os_str().len() > libc::PATH_MAX as usize);
        r.dir(&long, true).unwrap();
        r.dir(&long, false).unwrap();
    }

    #[test]
    fn only_paths_inside_the_root_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let r = root(dir.path());
        let e = r.at(Path::new("/etc/passwd"), false, |d, n| d.lstat(n));
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}

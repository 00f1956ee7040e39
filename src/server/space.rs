//! Free space on the served directory's filesystem, as `statvfs` gives it to this process,
//! and the reserve a new file must leave: files are refused with a limit error rather than
//! filling the disk. Large files ask afresh at their begin; small files, thousands a second,
//! use a figure at most [`REFRESH`] old, less what they have taken since.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How old the free-space figure small files are checked against may be.
const REFRESH: Duration = Duration::from_millis(100);

/// The served filesystem's free space.
#[derive(Debug)]
pub(crate) struct Space {
    /// The served directory, open (`None` if it could not be opened: then nothing is
    /// checked here, and a full disk fails writes with `ENOSPC`).
    dir: Option<File>,
    /// Bytes every new file must leave free.
    pub(crate) reserve: u64,
    /// When the last figure was taken, and that figure less what small files took since.
    cached: Mutex<Option<(Instant, u64)>>,
    refresh: Duration,
}

/// A file that would leave less than the reserve free.
#[derive(Debug, thiserror::Error)]
#[error(
    "the receiver's disk has {free} bytes free and keeps {reserve} of them free; {needed} more \
     are needed (free space there, or lower serve's --min-free)"
)]
pub(crate) struct NoSpace {
    pub(crate) free: u64,
    pub(crate) reserve: u64,
    pub(crate) needed: u64,
}

impl Space {
    /// Free-space checks for `root`, keeping `reserve` bytes free.
    pub(crate) fn new(root: &Path, reserve: u64) -> Self {
        Space {
            dir: File::open(root).ok(),
            reserve,
            cached: Mutex::new(None),
            refresh: REFRESH,
        }
    }

    /// Free bytes now (`u64::MAX` when unknown).
    ///
    /// # Errors
    /// When `statvfs` fails.
    pub(crate) fn free(&self) -> io::Result<u64> {
        match &self.dir {
            Some(dir) => free_bytes(dir),
            None => Ok(u64::MAX),
        }
    }

    /// Whether `bytes` more, on top of `committed` already promised to files being received,
    /// leave the reserve free, asking the filesystem now.
    ///
    /// # Errors
    /// [`NoSpace`] when they do not; a failing `statvfs` lets the file through.
    pub(crate) fn admit(&self, committed: u64, bytes: u64) -> Result<(), NoSpace> {
        let Ok(free) = self.free() else {
            return Ok(());
        };
        self.check(free, committed.saturating_add(bytes))
    }

    /// As [`admit`](Self::admit) for a small file, against a figure at most [`REFRESH`] old
    /// less what small files took since.
    ///
    /// # Errors
    /// [`NoSpace`] when it does not fit.
    pub(crate) fn admit_small(&self, committed: u64, bytes: u64) -> Result<(), NoSpace> {
        if self.dir.is_none() {
            return Ok(());
        }
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let (at, free) = match *cached {
            Some((at, free)) if now.duration_since(at) < self.refresh => (at, free),
            _ => match self.free() {
                Ok(free) => (now, free),
                Err(_) => return Ok(()),
            },
        };
        self.check(free, committed.saturating_add(bytes))?;
        *cached = Some((at, free.saturating_sub(bytes)));
        Ok(())
    }

    fn check(&self, free: u64, needed: u64) -> Result<(), NoSpace> {
        if free.saturating_sub(self.reserve) >= needed {
            Ok(())
        } else {
            Err(NoSpace {
                free,
                reserve: self.reserve,
                needed,
            })
        }
    }
}

/// Free bytes for this process on the filesystem of `file`.
pub(crate) fn free_bytes(file: &File) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid descriptor, and a buffer of the struct's size for the kernel to fill.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled by the successful call above.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)] // 32-bit on some targets
    Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_would_eat_into_the_reserve_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let free = Space::new(dir.path(), 0).free().unwrap();
        assert!(free > 0 && free < u64::MAX);
        let mut space = Space::new(dir.path(), free / 2);
        space.refresh = Duration::from_secs(3600);
        space.admit(0, 1).unwrap();
        let refused = space.admit(0, free).unwrap_err();
        assert!(refused.to_string().contains("--min-free"), "{refused}");
        // What is promised to other files counts.
        space.admit(free / 2, free / 4).unwrap_err();
        // Small files see what those before them took, within the figure's age.
        space.admit_small(0, free / 3).unwrap();
        space.admit_small(0, free / 3).unwrap_err();
    }
}

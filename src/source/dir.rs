//! Opening walked files relative to their directory: the reading thread keeps the last
//! directory open, so the many files of one directory are each opened with one `openat`
//! instead of a walk of their whole path.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The directory of the last walked file opened, kept open so that the next file in it is
/// opened relative to it. Owned by the one thread that reads.
#[derive(Debug, Default)]
pub(crate) struct LastDir {
    dir: Option<(PathBuf, std::os::fd::OwnedFd)>,
}

impl LastDir {
    /// Opens `path` for reading, non-blocking (a pipe put in a file's place must not block
    /// the reader), relative to its directory.
    pub(super) fn open_nonblocking(&mut self, path: &Path) -> io::Result<File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::ffi::OsStrExt;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path);
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let dir = match &mut self.dir {
            Some((p, dir)) if p.as_os_str() == parent.as_os_str() => dir,
            last => {
                let dir = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                    .open(parent)?;
                &mut last.insert((parent.to_path_buf(), dir.into())).1
            }
        };
        // The name, NUL-terminated, on the stack (a name is at most 255 bytes on Linux).
        let name = name.as_bytes();
        let mut buf = [0u8; 256];
        if name.len() >= buf.len() || name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file name too long or with a NUL byte",
            ));
        }
        buf[..name.len()].copy_from_slice(name);
        // SAFETY: `dir` is an open descriptor and `buf` a NUL-terminated string (zeroed past
        // the name, which has no NUL of its own), both alive for the call.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                buf.as_ptr().cast(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

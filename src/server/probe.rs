//! [`check_dir`]: making sure, before serving, that the served directory can take what a
//! transfer does to it (create a file, flush it, rename it, remove it), so that a receiver
//! pointed at a read-only, missing-permission or pseudo filesystem (`/proc`) refuses to start
//! instead of failing the first file a sender sends.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::names::PARTIAL_SUFFIX;

/// Why a directory cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot receive here: {step}: {source}", path.display())]
pub struct DirError {
    /// The directory.
    pub path: PathBuf,
    /// What failed: creating it, a file in it, flushing, renaming or removing that file.
    pub step: &'static str,
    /// What the OS said.
    pub source: io::Error,
}

/// Creates `root` if missing, then makes, flushes, renames and removes a probe file in it,
/// named like the receiver's partial files (no sender may use such a name). Returns `root`
/// made absolute.
///
/// # Errors
/// A [`DirError`] naming the step that failed.
pub fn check_dir(root: &Path) -> Result<PathBuf, DirError> {
    let fail = |step: &'static str| {
        move |source| DirError {
            path: root.to_path_buf(),
            step,
            source,
        }
    };
    std::fs::create_dir_all(root).map_err(fail("creating the directory"))?;
    let root = std::fs::canonicalize(root).map_err(fail("resolving the directory"))?;
    if !root.is_dir() {
        return Err(fail("checking it")(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = |n: u8| {
        root.join(format!(
            ".probe{n}-{}-{nanos}{PARTIAL_SUFFIX}",
            std::process::id()
        ))
    };
    let (first, second) = (name(1), name(2));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&first)
        .map_err(fail("creating a file in it"))
        .and_then(|mut f| {
            f.write_all(b"tidegate")
                .and_then(|()| f.sync_all())
                .map_err(fail("writing and flushing a file in it"))
        });
    let renamed = written
        .and_then(|()| std::fs::rename(&first, &second).map_err(fail("renaming a file in it")));
    let left = if renamed.is_ok() { &second } else { &first };
    let removed = std::fs::remove_file(left);
    renamed?;
    removed.map_err(fail("removing a file from it"))?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_directory_is_created_and_left_empty() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        assert_eq!(check_dir(&root).unwrap(), root.canonicalize().unwrap());
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    }

    #[test]
    fn a_file_or_a_pseudo_filesystem_is_refused_with_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = check_dir(&file).unwrap_err();
        assert_eq!(e.step, "creating the directory", "{e}");
        let e = check_dir(Path::new("/proc/1")).unwrap_err();
        assert_eq!(e.step, "creating a file in it", "{e}");
    }
}

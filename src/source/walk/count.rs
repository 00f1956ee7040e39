//! [`count`]: the total size of what a walk will yield, summed on a thread of its own by the
//! same rules, so a progress bar can show a total and an ETA.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{walk_root, Visit, WalkError};

/// The running sum of a [`count`].
#[derive(Debug, Default)]
pub(super) struct Sums {
    bytes: AtomicU64,
    done: AtomicBool,
    stop: AtomicBool,
}

impl Visit for &Sums {
    const DETAILED: bool = false;

    fn entry(&mut self, _: &Path, _: Vec<u8>, meta: &fs::Metadata, _: bool) -> bool {
        if meta.is_file() {
            self.bytes.fetch_add(meta.len(), Ordering::Relaxed);
        }
        !self.stop.load(Ordering::Relaxed)
    }

    fn error(&mut self, _: WalkError) -> bool {
        // The walk that sends reports it.
        !self.stop.load(Ordering::Relaxed)
    }
}

/// A count of the bytes of the regular files under some roots, running on its own thread.
/// Dropping it stops the count.
#[derive(Debug)]
pub struct Tally {
    sums: Arc<Sums>,
}

impl Tally {
    /// The bytes, once every root was walked; `None` before.
    pub fn total(&self) -> Option<u64> {
        self.sums
            .done
            .load(Ordering::Acquire)
            .then(|| self.sums.bytes.load(Ordering::Relaxed))
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.sums.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts counting what [`spawn`] with the same arguments would yield: the sizes of regular
/// files as the walk sees them (files that change meanwhile make it approximate).
pub fn count(roots: Vec<PathBuf>, links: bool) -> std::io::Result<Tally> {
    let sums = Arc::new(Sums::default());
    let counting = Arc::clone(&sums);
    std::thread::Builder::new()
        .name("tidegate-count".into())
        .spawn(move || {
            let mut visit = &*counting;
            for root in roots {
                if !walk_root(&root, links, &mut visit) {
                    return;
                }
            }
            counting.done.store(true, Ordering::Release);
        })?;
    Ok(Tally { sums })
}

#[cfg(test)]
mod tests {
    use super::super::{spawn, Entry, EntryKind};
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// The count sees what the walk sends: regular files and their sizes, by the same rules
    /// (links, skipped special files, trailing slashes, files given directly).
    #[test]
    fn count_sums_what_the_walk_yields() {
        let d = tempfile::tempdir().unwrap();
        let top = d.path().join("top");
        fs::create_dir_all(top.join("a/b")).unwrap();
        fs::create_dir_all(top.join("empty")).unwrap();
        fs::write(top.join("a/one"), vec![1u8; 1000]).unwrap();
        fs::write(top.join("a/b/two"), vec![2u8; 70_000]).unwrap();
        fs::write(top.join("zero"), b"").unwrap();
        std::os::unix::fs::symlink("a/one", top.join("link")).unwrap();
        let c = std::ffi::CString::new(top.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let single = d.path().join("single");
        fs::write(&single, vec![3u8; 5]).unwrap();
        let mut slash = top.join("a").into_os_string();
        slash.push("/");
        let roots = vec![top.clone(), PathBuf::from(slash), single];
        for links in [false, true] {
            let walked: Vec<Entry> = spawn(roots.clone(), links)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let files: Vec<&Entry> = walked
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .collect();
            let bytes: u64 = files.iter().map(|e| e.size).sum();
            assert_eq!((files.len(), bytes), (6, 2 * 71_000 + 5));
            let tally = count(roots.clone(), links).unwrap();
            let mut total = tally.total();
            for _ in 0..10_000 {
                if total.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
                total = tally.total();
            }
            assert_eq!(total, Some(bytes), "links {links}");
        }
    }
}

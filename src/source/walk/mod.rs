//! Expanding send inputs (files and directory trees) into entries with relative paths. This
//! file holds the walk itself; `clash.rs` the check for sources that would collide, and
//! `count.rs` the total for progress bars.
//!
//! The walk runs on its own thread and hands entries over a bounded channel, so sending
//! starts while it is still going and a huge tree never sits in memory. Paths are relative,
//! `/`-separated byte strings: `send dir` yields `dir`, `dir/a`, …; `send dir/` (trailing
//! slash) yields the contents of `dir` at the top, as rsync does. Directories come before
//! their contents, and entries within a directory are sorted by name, up to 65,536 entries
//! (a larger directory comes in the order the filesystem lists it, and is never held whole).
//! Symlinks are skipped with a warning unless links are wanted; sockets, FIFOs and devices
//! inside trees are skipped with a warning. [`check_names`] refuses, before anything is sent,
//! roots that would put something at the same path of the destination.
//!
//! Because the walk only runs ahead of sending by a bounded queue, it cannot tell the total
//! size until it is nearly done. [`count`] walks the same roots by the same rules on a thread
//! of its own, keeping nothing but sums, so a progress bar can show a total and an ETA (as
//! rsync counts its file list).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use super::Input;

mod clash;
mod count;

pub use clash::{check_names, NameClash};
pub use count::{count, Tally};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (read through the pipeline).
    File,
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
}

/// One thing to send.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where it is.
    pub input: Input,
    /// Where it goes, relative to the destination directory, `/`-separated.
    pub rel: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Size at walk time (files).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl Entry {
    /// The relative path, for messages.
    pub fn rel_display(&self) -> String {
        String::from_utf8_lossy(&self.rel).into_owned()
    }
}

/// A path the walk could not read; the rest of the walk goes on.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WalkError {
    /// The path.
    pub path: PathBuf,
    /// What the OS said.
    pub source: std::io::Error,
}

/// Entries go to the sender in batches of this many: one wake-up of either thread per batch
/// instead of per entry (the walk is much faster than reading, so it mostly waits for room).
const BATCH: usize = 64;
/// Batches in flight between the walker and the sender (1,024 entries).
const WALK_QUEUE: usize = 16;

type Item = Result<Entry, WalkError>;

/// The walk's results, in order; an iterator fed by the walking thread.
#[derive(Debug)]
pub struct Walk {
    rx: Receiver<Vec<Item>>,
    batch: std::vec::IntoIter<Item>,
}

impl Iterator for Walk {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.batch.next() {
                return Some(item);
            }
            self.batch = self.rx.recv().ok()?.into_iter();
        }
    }
}

/// The walking thread's end: collects entries into batches.
struct EntrySender {
    tx: SyncSender<Vec<Item>>,
    batch: Vec<Item>,
}

impl EntrySender {
    /// Queues one result. Fails when the receiver is gone.
    fn send(&mut self, item: Item) -> Result<(), ()> {
        self.batch.push(item);
        if self.batch.len() < BATCH {
            return Ok(());
        }
        self.flush()
    }

    fn flush(&mut self) -> Result<(), ()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.tx.send(full).map_err(drop)
    }
}

/// What the walk does with what it finds.
pub(super) trait Visit {
    /// Whether entries need their paths and name order. Without, the walk makes neither
    /// (only directories get a path, to be walked): a count allocates little.
    const DETAILED: bool;
    /// An entry; false stops the walk.
    fn entry(&mut self, path: &Path, rel: Vec<u8>, meta: &fs::Metadata, links: bool) -> bool;
    /// A path that could not be read; false stops the walk.
    fn error(&mut self, error: WalkError) -> bool;
}

impl Visit for EntrySender {
    const DETAILED: bool = true;

    fn entry(&mut self, path: &Path, rel: Vec<u8>, meta: &fs::Metadata, links: bool) -> bool {
        emit(self, path, rel, meta, links)
    }

    fn error(&mut self, error: WalkError) -> bool {
        self.send(Err(error)).is_ok()
    }
}

/// Starts walking `roots` on a thread; entries (or errors) arrive in order.
pub fn spawn(roots: Vec<PathBuf>, links: bool) -> std::io::Result<Walk> {
    let (tx, rx) = sync_channel(WALK_QUEUE);
    std::thread::Builder::new()
        .name("tidegate-walk".into())
        .spawn(move || {
            let mut out = EntrySender {
                tx,
                batch: Vec::with_capacity(BATCH),
            };
            for root in roots {
                if !walk_root(&root, links, &mut out) {
                    return;
                }
            }
            let _ = out.flush();
        })?;
    Ok(Walk {
        rx,
        batch: Vec::new().into_iter(),
    })
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.mtime_nsec())
}

/// The name `root` gets at the destination: its last component, or nothing (contents at the
/// top) for a trailing slash, `.` or `/`.
pub(super) fn top_name(root: &Path) -> Option<Vec<u8>> {
    let raw = root.as_os_str().as_bytes();
    if raw.ends_with(b"/") {
        return None;
    }
    root.file_name().map(|name| name.as_bytes().to_vec())
}

/// A directory's entries are sent sorted by name when it has at most this many. A larger
/// one is sent in the order the filesystem lists it, so that its listing is never held whole
/// (a sorted listing of a million names is over 100 MB).
const SORT_LIMIT: usize = 65_536;

/// The entries of `dir`: sorted by name if there are at most `sort_limit`; otherwise in the
/// order read, holding no more than `sort_limit + 1` of them at once.
///
/// # Errors
/// Opening the directory, or reading its first `sort_limit + 1` entries.
fn listing(
    dir: &Path,
    sort_limit: usize,
) -> std::io::Result<impl Iterator<Item = std::io::Result<fs::DirEntry>>> {
    let mut entries = fs::read_dir(dir)?;
    let mut first = Vec::new();
    let mut rest = None;
    if sort_limit > 0 {
        for entry in entries.by_ref() {
            first.push(entry?);
            if first.len() > sort_limit {
                rest = Some(entries);
                break;
            }
        }
        if rest.is_none() {
            // One name allocated per entry, not one per comparison.
            first.sort_by_cached_key(fs::DirEntry::file_name);
        }
    } else {
        rest = Some(entries);
    }
    Ok(first.into_iter().map(Ok).chain(rest.into_iter().flatten()))
}

/// Returns false when the visitor stopped the walk.
pub(super) fn walk_root<V: Visit>(root: &Path, links: bool, tx: &mut V) -> bool {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(source) => {
            return tx.error(WalkError {
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let name = top_name(root);
    if meta.is_dir() {
        let mut stack = vec![(root.to_path_buf(), name.clone())];
        if let Some(n) = &name {
            if !tx.entry(root, n.clone(), &meta, links) {
                return false;
            }
        }
        while let Some((dir, prefix)) = stack.pop() {
            // A count needs no order: it never holds a listing.
            let sort_limit = if V::DETAILED { SORT_LIMIT } else { 0 };
            let children = match listing(&dir, sort_limit) {
                Ok(c) => c,
                Err(source) => {
                    if !tx.error(WalkError { path: dir, source }) {
                        return false;
                    }
                    continue;
                }
            };
            let mut subdirs = Vec::new();
            for child in children {
                let child = match child {
                    Ok(c) => c,
                    Err(source) => {
                        // Reading the directory failed part way: what was read is sent.
                        if !tx.error(WalkError {
                            path: dir.clone(),
                            source,
                        }) {
                            return false;
                        }
                        break;
                    }
                };
                // Relative to the open directory (`fstatat`), not a walk of the whole path.
                let meta = match child.metadata() {
                    Ok(m) => m,
                    Err(source) => {
                        let path = child.path();
                        if !tx.error(WalkError { path, source }) {
                            return false;
                        }
                        continue;
                    }
                };
                if !V::DETAILED {
                    if meta.is_dir() {
                        subdirs.push((child.path(), None));
                    }
                    if !tx.entry(Path::new(""), Vec::new(), &meta, links) {
                        return false;
                    }
                    continue;
                }
                let path = child.path();
                let rel = match &prefix {
                    Some(p) => [p.as_slice(), b"/", child.file_name().as_bytes()].concat(),
                    None => child.file_name().as_bytes().to_vec(),
                };
                if meta.is_dir() {
                    subdirs.push((path.clone(), Some(rel.clone())));
                }
                if !tx.entry(&path, rel, &meta, links) {
                    return false;
                }
            }
            // Depth-first, in name order: push in reverse so the first name pops first.
            stack.extend(subdirs.into_iter().rev());
        }
        true
    } else {
        let name = name.unwrap_or_else(|| root.as_os_str().as_bytes().to_vec());
        tx.entry(root, name, &meta, links)
    }
}

/// Sends one entry if it is something we send. Returns false when the receiver is gone.
fn emit(tx: &mut EntrySender, path: &Path, rel: Vec<u8>, meta: &fs::Metadata, links: bool) -> bool {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        EntryKind::File
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        if !links {
            tracing::warn!(path = %path.display(), "skipping symlink (use --links to send links)");
            return true;
        }
        match fs::read_link(path) {
            Ok(target) => EntryKind::Symlink(target.as_os_str().as_bytes().to_vec()),
            Err(source) => {
                return tx
                    .send(Err(WalkError {
                        path: path.to_path_buf(),
                        source,
                    }))
                    .is_ok()
            }
        }
    } else {
        tracing::warn!(path = %path.display(), "skipping special file");
        return true;
    };
    tx.send(Ok(Entry {
        input: Input::Path(path.to_path_buf()),
        rel,
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        mtime_ns: mtime_ns(meta),
    }))
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(roots: Vec<PathBuf>, links: bool) -> Vec<(String, EntryKind)> {
        spawn(roots, links)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.rel_display(), e.kind)
            })
            .collect()
    }

    #[test]
    fn walks_depth_first_in_name_order_with_rsync_slash_rules() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        fs::create_dir_all(top.join("b/inner")).unwrap();
        fs::create_dir_all(top.join("a")).unwrap();
        fs::write(top.join("b/inner/f"), b"x").unwrap();
        fs::write(top.join("z"), b"").unwrap();
        std::os::unix::fs::symlink("z", top.join("link")).unwrap();
        let got = names(vec![top.clone()], false);
        let rels: Vec<_> = got.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            rels,
            [
                "top",
                "top/a",
                "top/b",
                "top/z",
                "top/b/inner",
                "top/b/inner/f"
            ]
        );
        assert_eq!(got[0].1, EntryKind::Dir);
        assert_eq!(got[5].1, EntryKind::File);
        assert!(rels.contains(&"top/b/inner/f"));
        assert!(!rels.contains(&"top/link"), "links are skipped by default");
        let with_links = names(vec![top.clone()], true);
        assert!(with_links.contains(&("top/link".into(), EntryKind::Symlink(b"z".to_vec()))));
        let mut slash = top.into_os_string();
        slash.push("/");
        let contents = names(vec![PathBuf::from(slash)], false);
        assert_eq!(contents[0].0, "a");
        assert!(contents.iter().all(|(r, _)| !r.starts_with("top")));
    }

    /// A directory is listed sorted up to the limit; past it, every entry still comes once,
    /// in the order read, and an error part way is passed on, not fatal to what was read.
    #[test]
    fn listings_are_sorted_up_to_the_limit_and_streamed_past_it() {
        let d = tempfile::tempdir().unwrap();
        let mut want: Vec<String> = (0..10).map(|i| format!("f{}", (i * 7) % 10)).collect();
        for name in &want {
            fs::write(d.path().join(name), b"").unwrap();
        }
        want.sort();
        let names = |limit: usize| -> Vec<String> {
            listing(d.path(), limit)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(10), want, "sorted when the directory fits");
        assert_eq!(names(SORT_LIMIT), want);
        for limit in [0, 1, 4, 9] {
            let mut got = names(limit);
            got.sort();
            assert_eq!(got, want, "limit {limit}: each entry once");
        }
        assert!(listing(&d.path().join("missing"), 4).is_err());
    }
}

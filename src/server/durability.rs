//! Batched durability for small files.
//!
//! One `fsync` costs about 0.5 ms here, ten times the cost of writing a 32 KiB file, so small
//! files are not flushed one by one. They are written, unnamed or to partial files
//! (`staging.rs`), with mode and mtime applied; when a batch is full (`batch_files` or
//! `batch_bytes`) or the client finishes, one `syncfs` flushes them all, then each is put in
//! place (linked or renamed), then their parent directory is flushed (a second `syncfs` when
//! they are in several), so the names are durable too. Only then is `FileDone` sent: a file
//! the client counts as delivered is always durable under its final name.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::writer::{sync_dir, sync_filesystem, Finished};

/// Small files waiting for a flush.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    items: Vec<(u64, Finished)>,
    /// The files in `items`: asked about for every small file that arrives.
    ids: HashSet<u64>,
    bytes: u64,
}

impl Batch {
    pub(crate) fn push(&mut self, file: u64, finished: Finished, bytes: u64) {
        self.items.push((file, finished));
        self.ids.insert(file);
        self.bytes += bytes;
    }

    pub(crate) fn contains(&self, file: u64) -> bool {
        self.ids.contains(&file)
    }

    pub(crate) fn is_full(&self, max_files: usize, max_bytes: u64) -> bool {
        self.items.len() >= max_files || self.bytes >= max_bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn take(&mut self) -> Batch {
        std::mem::take(self)
    }

    /// Deletes every partial file (a session that will never finish).
    pub(crate) fn abandon(self) {
        for (_, f) in self.items {
            f.abandon();
        }
    }

    /// Flushes, renames and syncs directories. Blocking. Returns the files now durable in
    /// place, and those that failed with why.
    pub(crate) fn commit(self, root: &Path) -> (Vec<u64>, Vec<(u64, std::io::Error)>) {
        if self.items.is_empty() {
            return (Vec::new(), Vec::new());
        }
        if let Err(e) = sync_filesystem(root) {
            let kind = e.kind();
            let failed = self
                .items
                .into_iter()
                .map(|(f, partial)| {
                    partial.abandon();
                    (f, std::io::Error::new(kind, format!("flush failed: {e}")))
                })
                .collect();
            return (Vec::new(), failed);
        }
        let mut done = Vec::with_capacity(self.items.len());
        let mut failed = Vec::new();
        let mut dirs = BTreeMap::<PathBuf, Vec<u64>>::new();
        for (file, partial) in self.items {
            match partial.put_in_place() {
                Ok(()) => {
                    let parent = partial.target().parent().unwrap_or(root);
                    dirs.entry(parent.to_path_buf()).or_default().push(file);
                }
                Err(e) => {
                    partial.abandon();
                    failed.push((file, e));
                }
            }
        }
        // The renames are durable once their directories are: one directory is flushed on
        // its own; several at once with a second `syncfs` (one journal commit on ext4, where
        // each directory's `fsync` would be one commit of its own).
        let synced = match dirs.len() {
            0 => Ok(()),
            1 => dirs.keys().next().map_or(Ok(()), |d| sync_dir(d)),
            _ => sync_filesystem(root),
        };
        match synced {
            Ok(()) => done.extend(dirs.into_values().flatten()),
            Err(e) => {
                for (dir, files) in dirs {
                    failed.extend(files.into_iter().map(|f| {
                        let why = format!("flushing {}: {e}", dir.display());
                        (f, std::io::Error::new(e.kind(), why))
                    }));
                }
            }
        }
        (done, failed)
    }
}

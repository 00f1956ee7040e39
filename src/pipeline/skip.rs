//! [`Skips`]: files the consumer no longer wants read, told to the reading thread. A transfer
//! marks a file whose every destination refused it, so that the rest of it (say, the rest of a
//! 1 TiB file that fits on no receiver) is neither read nor hashed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Files marked this recently are remembered. Only the file being read can still be skipped
/// (its chunks are what a refusal is about), so a handful would do.
const REMEMBERED: usize = 64;

/// A shared, bounded set of file numbers not to read further. Cheap to check when empty: the
/// reading thread checks it once per chunk.
#[derive(Debug, Clone, Default)]
pub(crate) struct Skips {
    inner: Arc<SkipsInner>,
}

#[derive(Debug, Default)]
struct SkipsInner {
    any: AtomicBool,
    files: Mutex<VecDeque<u64>>,
}

impl Skips {
    /// Marks `file`: the reading thread stops reading it at its next chunk.
    pub(crate) fn skip(&self, file: u64) {
        let mut files = self
            .inner
            .files
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if files.len() == REMEMBERED {
            files.pop_front();
        }
        files.push_back(file);
        self.inner.any.store(true, Ordering::Release);
    }

    /// Whether `file` was marked.
    pub(crate) fn contains(&self, file: u64) -> bool {
        self.inner.any.load(Ordering::Acquire)
            && self
                .inner
                .files
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_seen_by_clones_and_the_oldest_are_forgotten() {
        let skips = Skips::default();
        let reader = skips.clone();
        assert!(!reader.contains(3));
        skips.skip(3);
        assert!(reader.contains(3) && !reader.contains(4));
        for f in 100..100 + REMEMBERED as u64 {
            skips.skip(f);
        }
        assert!(!reader.contains(3), "bounded");
        assert!(reader.contains(100 + REMEMBERED as u64 - 1));
    }
}

//! The options every pipeline job shares, with their defaults and validation.

use std::time::Duration;

use super::chunk::ChunkSize;

/// Options for the chunk pipeline. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineOptions {
    /// The memory budget: bytes of chunk data that may be in flight at once (read but not
    /// yet consumed). Default 64 MiB. Larger budgets absorb more network jitter; resident
    /// memory is about this plus one mapping window plus a fixed overhead.
    pub memory_bytes: u64,
    /// Chunk size. Default [`ChunkSize::DEFAULT`] (1 MiB). Must leave room for at least two
    /// chunks in the budget.
    pub chunk_size: ChunkSize,
    /// Hashing threads. Default `None`: rayon's global pool, one thread per core.
    pub threads: Option<usize>,
    /// The least time between two byte-count progress events. Default 100 ms (10 Hz).
    pub progress_interval: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            memory_bytes: 64 * 1024 * 1024,
            chunk_size: ChunkSize::DEFAULT,
            threads: None,
            progress_interval: Duration::from_millis(100),
        }
    }
}

/// Options that cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// The budget cannot hold two chunks, so reading and consuming could not overlap.
    #[error(
        "memory budget of {memory_bytes} bytes must hold at least two {chunk_bytes}-byte chunks"
    )]
    BudgetTooSmall {
        /// The budget asked for.
        memory_bytes: u64,
        /// The chunk size asked for.
        chunk_bytes: u64,
    },
    /// Zero hashing threads.
    #[error("at least one hashing thread is needed")]
    NoThreads,
    /// The hashing pool could not be started.
    #[error("cannot start hashing threads: {0}")]
    ThreadPool(String),
}

/// How long a mapping window is, at most: a few MiB keeps `mmap`/`munmap` calls rare while
/// bounding what one window pins (the figures are in docs/PERFORMANCE.md).
const MAX_WINDOW_BYTES: u64 = 8 * 1024 * 1024;

impl PipelineOptions {
    /// Checks that the options work together.
    ///
    /// # Errors
    /// See [`OptionsError`].
    pub fn validate(&self) -> Result<(), OptionsError> {
        let chunk_bytes = self.chunk_size.bytes() as u64;
        if self.memory_bytes < 2 * chunk_bytes {
            return Err(OptionsError::BudgetTooSmall {
                memory_bytes: self.memory_bytes,
                chunk_bytes,
            });
        }
        if self.threads == Some(0) {
            return Err(OptionsError::NoThreads);
        }
        Ok(())
    }

    /// The mapping window length: a multiple of the chunk size, at most a quarter of the
    /// budget or 8 MiB, whichever is smaller, and never less than one chunk.
    pub fn window_bytes(&self) -> u64 {
        let chunk = self.chunk_size.bytes() as u64;
        let cap = MAX_WINDOW_BYTES.min(self.memory_bytes / 4);
        chunk * (cap / chunk).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_window_is_a_chunk_multiple() {
        let o = PipelineOptions::default();
        o.validate().unwrap();
        assert_eq!(o.window_bytes(), 8 * 1024 * 1024);
        let small = PipelineOptions {
            memory_bytes: 2 * 1024 * 1024,
            ..PipelineOptions::default()
        };
        small.validate().unwrap();
        assert_eq!(small.window_bytes(), 1024 * 1024);
        let bad = PipelineOptions {
            memory_bytes: 1024 * 1024,
            ..PipelineOptions::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(OptionsError::BudgetTooSmall { .. })
        ));
    }
}

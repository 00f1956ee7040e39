//! BLAKE3 on rayon, and file roots assembled from chunk chaining values.
//!
//! Each chunk is hashed as a subtree at its offset ([`digest`]) on a rayon pool; the result
//! comes back to async code through a `oneshot`, so no tokio worker ever blocks on hashing.
//! [`RootBuilder`] merges the chaining values of a file's chunks, in order, into the root
//! hash that `b3sum` prints, keeping only a stack of at most 64 values: no second pass over
//! the data and no memory that grows with the file.
//!
//! Why this is exact: chunks are powers of two of at least 16 KiB (whole BLAKE3 subtrees), and
//! for any input longer than one chunk BLAKE3 splits at the largest power-of-two number of
//! 1 KiB blocks below the length, which is then a multiple of the chunk size. So the file's
//! tree, cut at chunk granularity, is the same left-complete tree over chunks that
//! `RootBuilder` builds.

use std::sync::Arc;

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};
use blake3::Hasher;

use super::chunk::ChunkDigest;

/// Hashes `data` as the subtree at `offset`.
///
/// For the first chunk (`offset == 0`) it also returns the root hash the data would have as a
/// whole input, since a file's length is not always known before its end (streams).
///
/// # Panics
/// Unless `data` is a whole BLAKE3 subtree at `offset`: `offset` a multiple of a power of two
/// of at least 1 KiB that `data` does not exceed, as chunks of a [`ChunkSize`] are. Data from a
/// peer is checked against its file's chunk size before it gets here.
///
/// [`ChunkSize`]: crate::ChunkSize
pub fn digest(offset: u64, data: &[u8]) -> ChunkDigest {
    let mut hasher = Hasher::new();
    if offset != 0 {
        hasher.set_input_offset(offset);
    }
    hasher.update(data);
    let first = offset == 0;
    ChunkDigest {
        // A first chunk of at most one BLAKE3 block-chunk has no parent: it can only be a
        // root, and asking for its chaining value would be meaningless. Nor has an empty
        // chunk past the start (no valid tree holds one; blake3 would panic).
        chaining_value: ((!first && !data.is_empty()) || data.len() > blake3::CHUNK_LEN)
            .then(|| hasher.finalize_non_root()),
        solo_root: first.then(|| hasher.finalize()),
    }
}

/// The digest of a chunk that is a whole input: its root only, hashed in one call (cheaper
/// than [`digest`], which keeps the last 1 KiB block-chunk aside in case more follows and
/// then finalizes twice). A file of one chunk, as every small file is, needs nothing else.
pub fn digest_whole(data: &[u8]) -> ChunkDigest {
    ChunkDigest {
        chaining_value: None,
        solo_root: Some(blake3::hash(data)),
    }
}

/// Where chunk hashing runs: the global rayon pool, or a dedicated one (`--threads`).
#[derive(Debug, Clone, Default)]
pub struct HashPool {
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl HashPool {
    /// A pool of `threads` threads, or the global rayon pool for `None`.
    ///
    /// # Errors
    /// When rayon cannot start its threads.
    pub fn new(threads: Option<usize>) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = match threads {
            None => None,
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("tidegate-hash-{i}"))
                    .build()?,
            )),
        };
        Ok(HashPool { pool })
    }

    /// Runs `job` on the pool without waiting for it.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        match &self.pool {
            Some(pool) => pool.spawn(job),
            None => rayon::spawn(job),
        }
    }

    /// Runs `job` on the pool and awaits its result without blocking the async runtime.
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn(move || {
            // The receiver is gone only if the caller stopped waiting; nothing to do then.
            let _ = tx.send(job());
        });
        match rx.await {
            Ok(value) => value,
            // The sender is dropped without sending only if `job` panicked, which rayon
            // reports by aborting; resume the panic here rather than invent a value.
            Err(_) => panic!("a hashing job panicked"),
        }
    }
}

/// Why a root could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// A chunk other than a lone first chunk had no chaining value.
    #[error("chunk {index} has no chaining value")]
    MissingChainingValue {
        /// The chunk's index.
        index: u64,
    },
    /// A file with one chunk had no root digest.
    #[error("the first chunk has no root digest")]
    MissingSoloRoot,
}

/// Builds a file's root hash from its chunks' digests, fed in order.
#[derive(Debug, Default)]
pub struct RootBuilder {
    /// Merged subtrees, largest first; at most one per bit of the chunk count.
    stack: Vec<[u8; 32]>,
    /// The latest chunk, not merged yet because it might be the last one.
    pending: Option<ChunkDigest>,
    /// Chunks pushed so far.
    count: u64,
}

impl RootBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next chunk's digest.
    ///
    /// # Errors
    /// [`RootError::MissingChainingValue`] if a chunk that is followed by another has no
    /// chaining value (only a first chunk of at most 1 KiB can lack one, and it cannot be
    /// followed by another).
    pub fn push(&mut self, digest: ChunkDigest) -> Result<(), RootError> {
        if let Some(prev) = self.pending.take() {
            let index = self.count - 1;
            let mut cv = prev
                .chaining_value
                .ok_or(RootError::MissingChainingValue { index })?;
            // Merge completed subtrees: after adding chunk `index`, there are `index + 1`
            // chunks, and every trailing zero bit of that count closes a subtree.
            let mut total = index + 1;
            while total & 1 == 0 {
                let left = self
                    .stack
                    .pop()
                    .ok_or(RootError::MissingChainingValue { index })?;
                cv = merge_subtrees_non_root(&left, &cv, Mode::Hash);
                total >>= 1;
            }
            self.stack.push(cv);
        }
        self.pending = Some(digest);
        self.count += 1;
        Ok(())
    }

    /// The number of chunks pushed.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The root hash of everything pushed (`blake3::hash(b"")` for nothing).
    ///
    /// # Errors
    /// When a digest needed for the root is missing (see [`RootError`]).
    pub fn finish(self) -> Result<blake3::Hash, RootError> {
        let Some(last) = self.pending else {
            return Ok(blake3::hash(b""));
        };
        if self.stack.is_empty() {
            return last.solo_root.ok_or(RootError::MissingSoloRoot);
        }
        let index = self.count - 1;
        let mut cv = last
            .chaining_value
            .ok_or(RootError::MissingChainingValue { index })?;
        let (bottom, rest) = self.stack.split_first().ok_or(RootError::MissingSoloRoot)?;
        for left in rest.iter().rev() {
            cv = merge_subtrees_non_root(left, &cv, Mode::Hash);
        }
        Ok(merge_subtrees_root(bottom, &cv, Mode::Hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        // Not periodic at any power of two, so misplaced chunks change the hash.
        let mut x: u32 = 0x9e37_79b9;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// The root of `data` computed the chunked way, as the pipeline does. Errors are not
    /// papered over: a builder bug must fail the comparison.
    fn chunked_root(data: &[u8], chunk_len: usize) -> blake3::Hash {
        let mut root = RootBuilder::new();
        for (i, piece) in data.chunks(chunk_len).enumerate() {
            root.push(digest((i * chunk_len) as u64, piece)).unwrap();
        }
        root.finish().unwrap()
    }

    #[test]
    fn root_matches_blake3_for_edge_lengths() {
        let c = 16 * 1024;
        let mut lengths = vec![
            0,
            1,
            1023,
            1024,
            1025,
            2048,
            c - 1,
            c,
            c + 1,
            2 * c,
            3 * c + 7,
        ];
        for n in 1..=6u32 {
            let k = (1usize << n) * c;
            lengths.extend([k - 1, k, k + 1]);
        }
        let all = data(*lengths.iter().max().unwrap());
        for len in lengths {
            let input = &all[..len];
            assert_eq!(chunked_root(input, c), blake3::hash(input), "length {len}");
        }
    }

    #[test]
    fn root_matches_for_other_chunk_sizes() {
        let all = data(5 * 1024 * 1024 + 12345);
        for c in [32 * 1024, 256 * 1024, 1024 * 1024] {
            assert_eq!(chunked_root(&all, c), blake3::hash(&all), "chunk {c}");
        }
    }

    #[test]
    fn a_whole_input_digest_gives_the_same_root_and_cannot_be_followed() {
        let all = data(64 * 1024 + 1);
        for len in [0, 1, 1024, 1025, 16 * 1024, 40_000, 64 * 1024 + 1] {
            let mut root = RootBuilder::new();
            root.push(digest_whole(&all[..len])).unwrap();
            assert_eq!(
                root.finish().unwrap(),
                blake3::hash(&all[..len]),
                "length {len}"
            );
            assert_eq!(
                digest_whole(&all[..len]).solo_root,
                digest(0, &all[..len]).solo_root
            );
        }
        // Used for a first chunk that is not the whole file, it would be caught, not merged
        // into a wrong root.
        let mut root = RootBuilder::new();
        root.push(digest_whole(&all[..16384])).unwrap();
        let err = root.push(digest(16384, &all[16384..32768])).unwrap_err();
        assert_eq!(err, RootError::MissingChainingValue { index: 0 });
    }

    #[test]
    fn missing_chaining_value_is_an_error() {
        let mut root = RootBuilder::new();
        root.push(digest(0, b"tiny")).unwrap();
        let err = root.push(digest(16384, b"more")).unwrap_err();
        assert_eq!(err, RootError::MissingChainingValue { index: 0 });
    }

    #[test]
    fn an_empty_chunk_past_the_start_has_no_chaining_value() {
        // Found by the session fuzz target: blake3 panics on an empty non-root subtree.
        let d = digest(16384, b"");
        assert_eq!(d.chaining_value, None);
        assert_eq!(d.solo_root, None);
    }

    #[tokio::test]
    async fn pool_runs_off_the_runtime() {
        let pool = HashPool::new(Some(1)).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await;
        assert_eq!(name.as_deref(), Some("tidegate-hash-0"));
    }
}

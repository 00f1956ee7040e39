//! Chunk sizes and the chunk that flows from the source to its consumers.
//!
//! A chunk size is a power of two of at least 16 KiB, so every chunk starts on a BLAKE3
//! subtree boundary and its chaining value is a node of the file's hash tree.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use super::budget::Permit;

/// A validated chunk size: a power of two from [`ChunkSize::MIN`] to [`ChunkSize::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkSize(u32);

/// A chunk size that is not a power of two in range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("chunk size {0} bytes is not a power of two between 16 KiB and 64 MiB")]
pub struct BadChunkSize(pub u64);

impl ChunkSize {
    /// 16 KiB: sixteen BLAKE3 chunks, the smallest size that keeps SIMD hashing efficient.
    pub const MIN: ChunkSize = ChunkSize(16 * 1024);
    /// 64 MiB.
    pub const MAX: ChunkSize = ChunkSize(64 * 1024 * 1024);
    /// 1 MiB: large enough that per-chunk overhead (a rayon task, a frame, an ack) is noise,
    /// small enough that a 64 MiB budget keeps dozens in flight.
    pub const DEFAULT: ChunkSize = ChunkSize(1024 * 1024);

    /// Validates `bytes`.
    ///
    /// # Errors
    /// [`BadChunkSize`] unless `bytes` is a power of two within [`MIN`](Self::MIN) and
    /// [`MAX`](Self::MAX).
    pub fn new(bytes: u64) -> Result<Self, BadChunkSize> {
        if bytes.is_power_of_two()
            && bytes >= u64::from(Self::MIN.0)
            && bytes <= u64::from(Self::MAX.0)
        {
            Ok(ChunkSize(bytes as u32))
        } else {
            Err(BadChunkSize(bytes))
        }
    }

    /// [`new`](Self::new) for constants: `None` when out of range.
    pub const fn new_const(bytes: u32) -> Option<Self> {
        if bytes.is_power_of_two() && bytes >= Self::MIN.0 && bytes <= Self::MAX.0 {
            Some(ChunkSize(bytes))
        } else {
            None
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> usize {
        self.0 as usize
    }
}

impl Default for ChunkSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Exact, and parseable back by `FromStr` (it is a power of two of at least 16 KiB).
        if self.0 % (1024 * 1024) == 0 {
            write!(f, "{}MiB", self.0 / (1024 * 1024))
        } else {
            write!(f, "{}KiB", self.0 / 1024)
        }
    }
}

impl FromStr for ChunkSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = crate::progress::parse_bytes(s)?;
        ChunkSize::new(bytes).map_err(|e| e.to_string())
    }
}

/// What BLAKE3 says about one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkDigest {
    /// The chunk's chaining value as a subtree at its offset. `None` only for a first chunk
    /// of at most 1024 bytes, which can only ever be a whole (root) input.
    pub chaining_value: Option<[u8; 32]>,
    /// For the first chunk of a file: its hash as a root, which is the file's hash if the
    /// file turns out to be this one chunk.
    pub solo_root: Option<blake3::Hash>,
}

/// One chunk of one file, hashed, holding its share of the budget.
#[derive(Debug)]
pub struct Chunk {
    /// The file's position in the job's input order.
    pub file: u64,
    /// The chunk's position within its file.
    pub index: u64,
    /// Byte offset within the file (`index * chunk size`).
    pub offset: u64,
    /// The bytes, borrowed from a mapped window or a pooled buffer.
    pub data: Bytes,
    /// BLAKE3 of the bytes.
    pub digest: ChunkDigest,
    /// Released when the chunk is dropped; this is what lets the reader continue.
    pub permit: Permit,
    /// Whether `data` is a part of a larger mapped window (its pages are released on drop;
    /// a whole window is unmapped instead).
    pub(crate) release: bool,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if self.release {
            // The window stays mapped until its last chunk is gone; without this, pages of
            // chunks already consumed would stay resident (and count in RSS) until then.
            crate::source::release_pages(&self.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert!(ChunkSize::new(16 * 1024).is_ok());
        assert!(ChunkSize::new(8 * 1024).is_err());
        assert!(ChunkSize::new(3 * 16 * 1024).is_err());
        assert!(ChunkSize::new(128 * 1024 * 1024).is_err());
        assert_eq!("256KiB".parse::<ChunkSize>().unwrap().bytes(), 256 * 1024);
        assert_eq!("1M".parse::<ChunkSize>().unwrap().bytes(), 1 << 20);
        assert!("1000".parse::<ChunkSize>().is_err());
        for c in [ChunkSize::MIN, ChunkSize::DEFAULT, ChunkSize::MAX] {
            assert_eq!(c.to_string().parse::<ChunkSize>().unwrap(), c);
        }
    }
}

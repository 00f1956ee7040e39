//! Which chunks of a large file have been verified, folded into its root as they complete.
//!
//! Chunks arrive out of order (striped over connections, resent after a drop). Keeping every
//! chunk's chaining value until the end would cost memory in proportion to the file (and a
//! peer could announce a huge file to make the receiver allocate for it), so the chaining
//! values of the contiguous verified prefix are merged into a [`RootBuilder`] at once, and
//! only chunks that arrived ahead of the first missing one wait, at most
//! [`MAX_AHEAD`] of them. Memory per file is then bounded by the sender's in-flight window,
//! whatever the file's size.
//!
//! A chunk is recorded once: a repeat (a resend whose first copy was already verified and
//! written) is acknowledged without being written again, so the file on disk always holds
//! exactly the data whose chaining values went into the root.

use std::collections::VecDeque;

use crate::pipeline::chunk::ChunkDigest;
use crate::pipeline::hash::RootBuilder;

/// Most chunks that may be verified ahead of the first missing one. An honest sender has at
/// most its budget in flight (64 MiB by default: 64 chunks of 1 MiB); this allows 64 GiB at
/// 1 MiB chunks, or 1 GiB at the smallest chunk size (16 KiB), in about 2 MiB per file.
pub(crate) const MAX_AHEAD: u64 = 65_536;

/// What became of a verified chunk's chaining value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// New: its data must be (and has been) written.
    New,
    /// Already recorded: the data on disk is the first copy's.
    Repeat,
    /// Too far ahead of the first missing chunk.
    TooFarAhead,
}

/// The verification state of one file.
#[derive(Debug)]
pub(crate) struct Verified {
    chunks: u64,
    /// The first chunk not yet folded into `root`.
    next: u64,
    root: RootBuilder,
    /// Chunks `next + 1 ..` verified early; slot `k` is chunk `next + k`.
    ahead: VecDeque<Option<[u8; 32]>>,
}

impl Verified {
    /// A file of `chunks` chunks, none verified.
    pub(crate) fn new(chunks: u64) -> Self {
        Verified {
            chunks,
            next: 0,
            root: RootBuilder::new(),
            ahead: VecDeque::new(),
        }
    }

    /// The first chunk not recorded: chunks `0..next()` all are.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Whether chunk `index` is already recorded (a repeat need not be written).
    pub(crate) fn has(&self, index: u64) -> bool {
        index < self.next
            || usize::try_from(index - self.next)
                .ok()
                .and_then(|k| self.ahead.get(k))
                .is_some_and(Option::is_some)
    }

    /// Whether chunk `index` may be recorded now (not too far ahead).
    pub(crate) fn accepts(&self, index: u64) -> bool {
        index < self.chunks && index.saturating_sub(self.next) < MAX_AHEAD
    }

    /// Records chunk `index`'s chaining value, after its data was verified and written.
    pub(crate) fn record(&mut self, index: u64, cv: [u8; 32]) -> Recorded {
        if self.has(index) {
            return Recorded::Repeat;
        }
        if !self.accepts(index) {
            return Recorded::TooFarAhead;
        }
        let k = (index - self.next) as usize; // < MAX_AHEAD, checked above
        if self.ahead.len() <= k {
            self.ahead.resize(k + 1, None);
        }
        self.ahead[k] = Some(cv);
        while let Some(Some(cv)) = self.ahead.front().copied() {
            self.ahead.pop_front();
            // Pushing cannot fail: every chunk pushed here has a chaining value.
            let _ = self.root.push(ChunkDigest {
                chaining_value: Some(cv),
                solo_root: None,
            });
            self.next += 1;
        }
        Recorded::New
    }

    /// The file's root, once every chunk is recorded; `None` while any is missing.
    pub(crate) fn finish(self) -> Option<blake3::Hash> {
        if self.next != self.chunks {
            return None;
        }
        self.root.finish().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::hash::digest;

    fn cvs(data: &[u8], chunk: usize) -> Vec<[u8; 32]> {
        data.chunks(chunk)
            .enumerate()
            .map(|(i, c)| digest((i * chunk) as u64, c).chaining_value.unwrap())
            .collect()
    }

    #[test]
    fn out_of_order_chunks_give_the_root() {
        let data: Vec<u8> = (0..(16 * 1024 * 7 + 5)).map(|i| (i % 251) as u8).collect();
        let cvs = cvs(&data, 16 * 1024);
        let mut v = Verified::new(cvs.len() as u64);
        for i in [3, 1, 0, 7, 2, 5, 4, 6] {
            assert_eq!(v.record(i, cvs[i as usize]), Recorded::New);
        }
        assert_eq!(v.record(2, cvs[2]), Recorded::Repeat);
        assert!(v.ahead.is_empty());
        assert_eq!(v.finish(), Some(blake3::hash(&data)));
    }

    #[test]
    fn a_missing_chunk_gives_no_root() {
        let data = vec![7u8; 16 * 1024 * 3];
        let cvs = cvs(&data, 16 * 1024);
        let mut v = Verified::new(3);
        v.record(0, cvs[0]);
        v.record(2, cvs[2]);
        assert!(v.has(2) && !v.has(1));
        assert_eq!(v.finish(), None);
    }

    #[test]
    fn chunks_too_far_ahead_or_past_the_end_are_refused() {
        let mut v = Verified::new(MAX_AHEAD + 10);
        assert_eq!(v.record(MAX_AHEAD, [0; 32]), Recorded::TooFarAhead);
        assert_eq!(v.record(MAX_AHEAD + 10, [0; 32]), Recorded::TooFarAhead);
        assert_eq!(v.record(MAX_AHEAD - 1, [0; 32]), Recorded::New);
        assert_eq!(v.ahead.len() as u64, MAX_AHEAD);
    }
}

//! [`Readable`]: what the pipeline reads, as the producer and the consumer both see it.

use crate::source::Input;

/// Anything the pipeline can read: it only needs the [`Input`]; the rest (a relative path,
/// metadata) rides along and comes back in `Event::FileStarted`. A spec without an input
/// (a directory, a symlink) passes through in order as `Event::Entry`.
pub(crate) trait Readable: Send + 'static {
    /// What to open, if anything.
    fn input(&self) -> Option<&Input>;

    /// The length a directory walk just saw, when it saw a regular file (see
    /// `FileSource::open`).
    fn walked_len(&self) -> Option<u64> {
        None
    }
}

impl Readable for Input {
    fn input(&self) -> Option<&Input> {
        Some(self)
    }
}

//! Why bytes from a peer are not a valid frame: the one error type of the sans-IO protocol
//! layer, raised by the frame parser (`frame.rs`) and the codec (`codec.rs`). A leaf: it
//! depends on neither.

/// Why bytes from a peer are not a valid frame. Any of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix is over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A zero length: not even a type byte.
    #[error("empty frame")]
    Empty,
    /// An unknown type byte.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The body ended before its fields did.
    #[error("frame body too short for its fields")]
    ShortBody,
    /// The body has bytes after its last field.
    #[error("frame type {ty} has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// The frame type.
        ty: u8,
        /// How many bytes were left.
        extra: usize,
    },
    /// A string over `MAX_STRING_LEN` (see `frame.rs`).
    #[error("string of {len} bytes is too long")]
    StringTooLong {
        /// Declared length.
        len: usize,
    },
    /// `Hello` without the magic.
    #[error("not a tidegate peer (magic {0:?})")]
    BadMagic([u8; 4]),
    /// A small file whose payload length differs from its declared size.
    #[error("declared size {declared} but {actual} bytes of content")]
    SizeMismatch {
        /// Declared size.
        declared: u64,
        /// Payload length.
        actual: u64,
    },
}

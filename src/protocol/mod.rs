//! The wire protocol, sans-IO: frame layout (`frame`), framing with limits (`codec`), the
//! authenticated handshake (`handshake`), and peer text made safe to show (`text`). Nothing
//! here touches a socket or a clock; the client and server drive it. Specified in
//! `docs/PROTOCOL.md`.

pub mod codec;
pub mod error;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handshake;
pub mod text;

pub use codec::{decode, encode, encode_head, MAX_FRAME_LEN};
pub use error::DecodeError;
pub use frame::{ErrorCode, Frame, Meta};
pub use text::peer_text;

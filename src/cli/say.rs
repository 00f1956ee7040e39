//! The binary's own messages on stderr, in the one voice of `logging.rs`:
//! `tidegate: error: ...` and `tidegate: warning: ...`, one line each.

use std::fmt::Display;
use std::io::Write;

/// `tidegate: error: <message>`. Never fails: stderr may be closed.
pub(crate) fn error(message: impl Display) {
    let _ = writeln!(std::io::stderr(), "tidegate: error: {message}");
}

/// `tidegate: warning: <message>`.
pub(crate) fn warning(message: impl Display) {
    let _ = writeln!(std::io::stderr(), "tidegate: warning: {message}");
}

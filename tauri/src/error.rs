//! The one error type JavaScript sees: `{ kind, message }`, with a stable set of kinds an app
//! can branch on, and a message for people. Built from the library's typed errors; never a
//! bare string, never a key.

use serde::Serialize;
use tidegate::{DestinationFailure, OptionsError, TransferError};

/// What went wrong, as an app branches on it. Serialises in camelCase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorKind {
    /// An argument is missing, of the wrong type, or not valid (a malformed destination, a
    /// budget that cannot hold two chunks, an unknown option).
    InvalidArgument,
    /// A destination could not be reached within the retry time, or a receiver could not
    /// bind its address.
    Unreachable,
    /// A receiver refused the key, or speaks another protocol version.
    Authentication,
    /// Reading, writing or hashing a file failed.
    Io,
    /// The job was cancelled.
    Cancelled,
    /// No job has this id (it ended, or never existed).
    NotFound,
}

/// An error as JavaScript receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{message}")]
pub struct Error {
    /// What kind of error.
    pub kind: ErrorKind,
    /// What happened, for people.
    pub message: String,
}

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn not_found(what: &str, id: u64) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("no running {what} has id {id} (it ended, or never existed)"),
        )
    }
}

impl From<TransferError> for Error {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Start(io) => Error::new(ErrorKind::Io, format!("cannot start: {io}")),
            other => Error::invalid(other.to_string()),
        }
    }
}

impl From<OptionsError> for Error {
    fn from(e: OptionsError) -> Self {
        match e {
            OptionsError::ThreadPool(_) => Error::new(ErrorKind::Io, e.to_string()),
            other => Error::invalid(other.to_string()),
        }
    }
}

/// The kind a failed destination gives.
pub(crate) fn destination_kind(failure: Option<DestinationFailure>) -> ErrorKind {
    match failure {
        Some(DestinationFailure::Authentication | DestinationFailure::Incompatible) => {
            ErrorKind::Authentication
        }
        Some(DestinationFailure::Cancelled) => ErrorKind::Cancelled,
        Some(DestinationFailure::Unreachable) => ErrorKind::Unreachable,
        _ => ErrorKind::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialise_as_kind_and_message() {
        let e = Error::new(ErrorKind::NotFound, "gone");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"kind":"notFound","message":"gone"}"#
        );
        let e = Error::from(TransferError::Destination(
            tidegate::check_destination("nohost").unwrap_err(),
        ));
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
    }
}

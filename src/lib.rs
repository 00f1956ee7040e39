//! tidegate: memory-bounded, verified bulk file transfer.
//!
//! Files are read through memory-mapped *windows* ([`source`]), cut into chunks whose bytes
//! are borrowed from the mapping without copying, admitted one by one through a byte
//! [`Budget`] (the backpressure that bounds memory), and hashed with BLAKE3 on a rayon pool
//! ([`pipeline`]). A file's root hash is assembled from its chunks' chaining values, so it
//! equals what `b3sum` prints without a second pass over the data.
//!
//! The main types:
//! - [`Transfer`] sends files and directory trees to one or more receivers over pooled TCP
//!   connections ([`client`]), surviving dropped connections; starting it gives a
//!   [`TransferHandle`] with a [`Progress`] stream, cancellation and a final [`Report`].
//! - [`Server`] receives: it verifies every chunk, writes partial files and renames them into
//!   place once verified and durable ([`server`]). Both speak the sans-IO [`protocol`].
//! - [`HashJob`] hashes files and streams through the bounded pipeline; it is what
//!   `tidegate hash` runs. Starting it gives a [`HashHandle`] with a [`Progress`] stream,
//!   cancellation and a final [`HashReport`].
//! - [`PipelineOptions`] holds the knobs every job shares (memory budget, chunk size,
//!   threads), each with a documented default.
//! - [`SourceError`] and [`OptionsError`] are the typed errors.
//!
//! Nothing in this crate installs a tracing subscriber or touches the terminal; the `tidegate`
//! binary (feature `cli`) does that.
#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod client;
pub mod hash_job;
#[cfg(feature = "s3")]
pub mod objstore;
pub mod pipeline;
pub mod progress;
pub mod protocol;
pub mod server;
pub mod source;
pub mod tls;
pub mod transfer;
pub mod wire;

pub use client::address::{check as check_destination, AddressError};
pub use hash_job::{FileDigest, HashHandle, HashJob, HashReport};
pub use pipeline::budget::Budget;
pub use pipeline::chunk::ChunkSize;
pub use pipeline::options::{OptionsError, PipelineOptions};
pub use progress::{ConnectionState, Progress};
pub use server::{Server, ServerEvent, ServerOptions, ServerStatus, MIN_PARTIAL_EXPIRY};
pub use source::{Input, SourceError, StreamInput};
pub use transfer::{
    Authentication, DestinationFailure, DestinationReport, Report, Transfer, TransferError,
    TransferHandle, TransferOptions,
};

/// The README's Rust example, compiled and checked by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

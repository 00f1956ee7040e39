//! The bounded chunk pipeline: source → budget → hash → ordered output.
//!
//! - [`budget`]: the byte semaphore whose permits travel with chunks (the backpressure).
//! - [`chunk`]: chunk sizes and the [`Chunk`](chunk::Chunk) type.
//! - [`hash`]: BLAKE3 of each chunk on rayon, and the root hash built from chaining values.
//! - [`options`]: the knobs and their defaults.
//! - `producer`: the thread that reads and hands chunks to the hashing pool.
//! - `readable`: what the pipeline reads.
//! - `skip`: files the consumer no longer wants read.
//! - `consumer`: the ordered stream of `Event`s that jobs consume.
//!
//! The pipeline does not know about networks or terminals; jobs built on it do.

pub mod budget;
pub mod chunk;
pub(crate) mod consumer;
pub mod hash;
pub mod options;
mod producer;
mod readable;
pub(crate) mod skip;

pub(crate) use consumer::{Event, Pipeline};

//! The object-store destination: `send --to s3://BUCKET/PREFIX` puts every file of the
//! transfer into an S3-compatible store (AWS S3, Garage, MinIO, Ceph) from the same pipeline
//! that feeds the receivers, so the source is still read once whatever the destinations.
//!
//! - [`target`]: what an `s3://` destination may be, checked before anything is sent.
//! - [`options`]: endpoint, region and credentials, from the standard `AWS_*` variables.
//! - `upload.rs`: the destination's task, with one upload per file: single `PUT`s for small
//!   files, several at once, and multipart uploads fed by the chunks for large ones.
//! - [`read`]: objects as pipeline inputs, for `hash --check` with `s3://` paths.
//! - `meta.rs`: the `blake3` user metadata each object carries, and the copy that sets it
//!   on an object uploaded in parts (whose root is known only after its last part).
//!
//! Chunks stay counted against the memory budget until the request that carries them is
//! answered, so the bound holds with an object store in the fan-out.

pub mod options;
pub mod read;
pub mod target;

pub(crate) mod meta;
pub(crate) mod upload;

pub use options::{ObjectStoreError, S3Options};
pub use read::{ObjectReader, ObjectUrlError};
pub use target::{is_object_store, S3Target};

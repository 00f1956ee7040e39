//! Objects as pipeline inputs: an `s3://BUCKET/KEY` URL becomes an [`Input::Stream`] whose
//! bytes come from a `GET`, so `hash --check` verifies stored objects through the same bounded
//! pipeline as files. Only the object being read holds a connection, and its body is pulled
//! as the pipeline's budget allows, never buffered whole.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use tokio::runtime::Handle;

use super::options::{Bodies, ObjectStoreError, S3Options};
use super::target::{S3Target, TargetError};
use crate::source::{Input, StreamInput};

/// How long a failing `GET` is retried with backoff before the object counts as failed.
const RETRY_FOR: Duration = Duration::from_secs(30);
/// How long a connection to the store may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `HEAD`s in flight while summing sizes for a progress total.
const HEADS_IN_FLIGHT: usize = 16;

/// Makes [`Input`]s of object URLs, with one client per bucket.
#[derive(Debug)]
pub struct ObjectReader {
    options: S3Options,
    clients: HashMap<String, Arc<AmazonS3>>,
    handle: Handle,
    /// The objects of the inputs made since the last [`total_size`](Self::total_size).
    made: Vec<(Arc<AmazonS3>, Path)>,
}

/// Why an object URL cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectUrlError {
    /// Not a valid `s3://BUCKET/KEY`.
    #[error("bad object URL {:?}: {}", .0.addr, .0.why)]
    Url(#[from] TargetError),
    /// The store cannot be used (no credentials, a malformed endpoint).
    #[error(transparent)]
    Store(#[from] ObjectStoreError),
}

impl ObjectReader {
    /// A reader of objects in stores reached with `options`; its `GET`s run on the current
    /// tokio runtime, driven from the pipeline's reading thread.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn new(options: S3Options) -> Self {
        ObjectReader {
            options,
            clients: HashMap::new(),
            handle: Handle::current(),
            made: Vec::new(),
        }
    }

    /// The summed size of the objects named by the inputs made since the last call, looked up
    /// with `HEAD`s (16 at once) when awaited: a progress total, found while the objects are
    /// read. `None` if any cannot be looked up; reading it then fails with the reason.
    pub fn total_size(
        &mut self,
    ) -> impl std::future::Future<Output = Option<u64>> + Send + 'static {
        let objects = std::mem::take(&mut self.made);
        async move {
            futures_util::stream::iter(objects)
                .map(|(store, path)| async move { store.head(&path).await.map(|m| m.size) })
                .buffer_unordered(HEADS_IN_FLIGHT)
                .fold(
                    Some(0u64),
                    |sum, size| async move { Some(sum? + size.ok()?) },
                )
                .await
        }
    }

    /// The input for `url`, an `s3://BUCKET/KEY` naming one object. Nothing is requested
    /// until the pipeline reaches it.
    ///
    /// # Errors
    /// [`ObjectUrlError::Url`] for a malformed URL or one that names no object (a bucket, or a
    /// key ending with `/`); [`ObjectUrlError::Store`] without credentials.
    pub fn input(&mut self, url: &str) -> Result<Input, ObjectUrlError> {
        let target = S3Target::parse(url)?;
        let key = target.prefix.trim_end_matches('/');
        if key.is_empty() || url.ends_with('/') {
            return Err(TargetError {
                addr: url.to_owned(),
                why: "expected s3://BUCKET/KEY naming one object",
            }
            .into());
        }
        let path = Path::parse(key).map_err(|_| TargetError {
            addr: url.to_owned(),
            why: "not a valid object key",
        })?;
        let store = match self.clients.get(&target.bucket) {
            Some(store) => Arc::clone(store),
            None => {
                let bucket = S3Target {
                    bucket: target.bucket.clone(),
                    prefix: String::new(),
                };
                let store =
                    self.options
                        .client(&bucket, RETRY_FOR, CONNECT_TIMEOUT, Bodies::Whole)?;
                self.clients
                    .insert(target.bucket.clone(), Arc::clone(&store));
                store
            }
        };
        self.made.push((Arc::clone(&store), path.clone()));
        let handle = self.handle.clone();
        Ok(Input::Stream(StreamInput::new(url, move || {
            let got = handle.block_on(store.get(&path)).map_err(io_error)?;
            Ok(Box::new(Body {
                stream: got.into_stream(),
                current: Bytes::new(),
                handle: handle.clone(),
            }) as Box<dyn Read + Send>)
        })))
    }
}

/// An object's body as a blocking reader, for the pipeline's reading thread.
struct Body {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    current: Bytes,
    handle: Handle,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(io_error(e)),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// What the store said, as the I/O error a file would give: a missing object reads as
/// "no such object".
fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            io::Error::new(io::ErrorKind::NotFound, "no such object")
        }
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> ObjectReader {
        let mut options = S3Options::from_env();
        options.access_key_id = Some("id".into());
        options.secret_access_key = Some("secret".into());
        ObjectReader::new(options)
    }

    #[tokio::test]
    async fn urls_must_name_one_object() {
        let mut r = reader();
        assert!(r.input("s3://bucket/dir/file.bin").is_ok());
        for bad in [
            "s3://bucket",
            "s3://bucket/",
            "s3://bucket/dir/",
            "s3://b/x",
            "/tmp/x",
        ] {
            assert!(matches!(r.input(bad), Err(ObjectUrlError::Url(_))), "{bad}");
        }
        let Input::Stream(s) = r.input("s3://bucket/a/b").unwrap() else {
            panic!("not a stream");
        };
        assert_eq!(s.name(), std::path::Path::new("s3://bucket/a/b"));
    }

    #[tokio::test]
    async fn no_credentials_is_a_store_error() {
        let mut options = S3Options::from_env();
        options.access_key_id = None;
        let mut r = ObjectReader::new(options);
        assert!(matches!(
            r.input("s3://bucket/x"),
            Err(ObjectUrlError::Store(ObjectStoreError::NoCredentials(_)))
        ));
    }
}

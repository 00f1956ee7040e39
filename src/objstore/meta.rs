//! The `blake3` user metadata every object carries (`x-amz-meta-blake3`: the root in hex, as
//! `b3sum` prints it), reading it back, and setting it on an object uploaded in parts.
//!
//! A multipart upload's metadata is fixed when the upload is created, before its first part,
//! while the file's root is known only after its last chunk. So a file uploaded in parts is
//! completed without it and then copied onto itself with the metadata replaced (S3's
//! `CopyObject` with `x-amz-metadata-directive: REPLACE`, done by the store without moving
//! the data). That request is signed as a presigned URL with its headers bound to the
//! signature, since the client library has no call for it.

use std::time::{Duration, Instant};

use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::{HeaderValue, Method, SignedUrlOptions, Signer};
use object_store::{Attribute, Attributes, GetOptions, ObjectStore};

/// The user metadata key.
pub(crate) const BLAKE3: &str = "blake3";

/// Attributes carrying `root` (hex).
pub(crate) fn attributes(root: &str) -> Attributes {
    let mut a = Attributes::new();
    a.insert(Attribute::Metadata(BLAKE3.into()), root.to_owned().into());
    a
}

/// What is already stored under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    pub(crate) size: u64,
    pub(crate) blake3: Option<String>,
}

/// What is stored at `path`, if anything.
pub(crate) async fn existing(
    store: &AmazonS3,
    path: &Path,
) -> Result<Option<Existing>, object_store::Error> {
    let options = GetOptions {
        head: true,
        ..GetOptions::default()
    };
    match store.get_opts(path, options).await {
        Ok(got) => Ok(Some(Existing {
            size: got.meta.size,
            blake3: got
                .attributes
                .get(&Attribute::Metadata(BLAKE3.into()))
                .map(|v| v.to_string()),
        })),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Characters of a key that are escaped in `x-amz-copy-source`: everything but unreserved
/// characters and `/`.
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Sets `root` as the `blake3` metadata of the object at `path` in `bucket`, by copying it
/// onto itself; retried with backoff until `retry_for` has passed.
pub(crate) async fn set_root(
    store: &AmazonS3,
    http: &reqwest::Client,
    bucket: &str,
    path: &Path,
    root: &str,
    retry_for: Duration,
) -> Result<(), String> {
    let source = format!(
        "/{bucket}/{}",
        percent_encoding::utf8_percent_encode(path.as_ref(), COPY_SOURCE)
    );
    let header = |v: &str| HeaderValue::from_str(v).map_err(|e| e.to_string());
    let headers = [
        ("x-amz-copy-source", header(&source)?),
        ("x-amz-metadata-directive", header("REPLACE")?),
        ("x-amz-meta-blake3", header(root)?),
    ];
    let started = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        let mut options = SignedUrlOptions::new();
        for (name, value) in &headers {
            options = options.with_signed_header(
                object_store::signer::HeaderName::from_static(name),
                value.clone(),
            );
        }
        let attempt = async {
            let url = store
                .signed_url_opts(Method::PUT, path, Duration::from_secs(15 * 60), &options)
                .await
                .map_err(|e| (false, e.to_string()))?;
            let mut request = http.put(url.as_str());
            for (name, value) in &headers {
                request = request.header(*name, value.as_bytes());
            }
            let response = request
                .send()
                .await
                .map_err(|e| (true, format!("copy request failed: {e}")))?;
            let status = response.status();
            let body = response
                .text()
                .await
                .map_err(|e| (true, format!("copy answer unreadable: {e}")))?;
            // S3 may answer a copy with 200 and an error in the body.
            if status.is_success() && !body.contains("<Error>") {
                Ok(())
            } else {
                let retry = status.is_server_error()
                    || status.as_u16() == 429
                    || (status.is_success() && body.contains("<Error>"));
                Err((
                    retry,
                    format!("copy refused ({status}): {}", excerpt(&body)),
                ))
            }
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err((true, why)) if started.elapsed() + wait < retry_for => {
                tracing::debug!(key = %path, %why, "setting the blake3 metadata; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err((_, why)) => return Err(why),
        }
    }
}

/// The start of an answer's body, on one line, for an error message.
fn excerpt(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    one_line.trim().to_owned()
}

//! The `blake3` user metadata every object carries (`x-amz-meta-blake3`: the root in hex, as
//! `b3sum` prints it), reading it back, and setting it on an object uploaded in parts.
//!
//! A multipart upload's metadata is fixed when the upload is created, before its first part,
//! while the file's root is known only after its last chunk. So a file uploaded in parts is
//! completed without it and then copied onto itself with the metadata replaced (S3's
//! `CopyObject` with `x-amz-metadata-directive: REPLACE`, done by the store without moving
//! the data). An object over 5 GiB, more than one copy may take, is copied onto itself in
//! parts (`UploadPartCopy`) of a new multipart upload that carries the metadata. These
//! requests are signed as presigned URLs with their headers bound to the signature, since the
//! client library has no call for them.

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

/// The largest object one `CopyObject` takes (S3's limit); larger ones are copied in parts
/// of this size (`UploadPartCopy`), at most 10,000 of them.
pub(crate) const MAX_COPY: u64 = 5 << 30;

/// Sets `root` as the `blake3` metadata of the object of `size` bytes at `path` in `bucket`,
/// by copying it onto itself: in one request up to `max_copy` bytes, else as a multipart
/// upload whose parts are copied from it. Each request is retried with backoff until
/// `retry_for` has passed.
pub(crate) async fn set_root(
    store: &AmazonS3,
    http: &reqwest::Client,
    bucket: &str,
    path: &Path,
    (root, size): (&str, u64),
    max_copy: u64,
    retry_for: Duration,
) -> Result<(), String> {
    let source = format!(
        "/{bucket}/{}",
        percent_encoding::utf8_percent_encode(path.as_ref(), COPY_SOURCE)
    );
    let requests = Requests {
        store,
        http,
        path,
        retry_for,
    };
    if size <= max_copy {
        requests
            .send(
                Method::PUT,
                &[],
                &[
                    ("x-amz-copy-source", &source),
                    ("x-amz-metadata-directive", "REPLACE"),
                    ("x-amz-meta-blake3", root),
                ],
                None,
            )
            .await
            .map(drop)
    } else {
        copy_in_parts(&requests, &source, root, size, max_copy).await
    }
}

/// The multipart copy of [`set_root`]; aborted if any step fails.
async fn copy_in_parts(
    requests: &Requests<'_>,
    source: &str,
    root: &str,
    size: u64,
    part: u64,
) -> Result<(), String> {
    let created = requests
        .send(
            Method::POST,
            &[("uploads", "")],
            &[("x-amz-meta-blake3", root)],
            None,
        )
        .await?;
    let id = field(&created, "UploadId")
        .map(unescape)
        .ok_or_else(|| format!("no upload id in the answer: {}", excerpt(&created)))?;
    let copied = async {
        let mut complete = String::from("<CompleteMultipartUpload>");
        let mut start = 0;
        let mut number = 1u32;
        while start < size {
            let end = (start + part).min(size) - 1;
            let answer = requests
                .send(
                    Method::PUT,
                    &[("partNumber", &number.to_string()), ("uploadId", &id)],
                    &[
                        ("x-amz-copy-source", source),
                        ("x-amz-copy-source-range", &format!("bytes={start}-{end}")),
                    ],
                    None,
                )
                .await?;
            let etag = field(&answer, "ETag")
                .ok_or_else(|| format!("no ETag for part {number}: {}", excerpt(&answer)))?;
            // The ETag goes back as the store escaped it: still valid XML.
            complete.push_str(&format!(
                "<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>"
            ));
            start = end + 1;
            number += 1;
        }
        complete.push_str("</CompleteMultipartUpload>");
        requests
            .send(Method::POST, &[("uploadId", &id)], &[], Some(complete))
            .await
            .map(drop)
    };
    let result = copied.await;
    if result.is_err() {
        if let Err(why) = requests
            .send(Method::DELETE, &[("uploadId", &id)], &[], None)
            .await
        {
            tracing::warn!(key = %requests.path, %why, "cannot abort the copy's multipart upload");
        }
    }
    result
}

/// Requests about one object that the client library has no call for, signed as presigned
/// URLs with their headers bound to the signature.
struct Requests<'a> {
    store: &'a AmazonS3,
    http: &'a reqwest::Client,
    path: &'a Path,
    retry_for: Duration,
}

impl Requests<'_> {
    /// Sends one request, retried with backoff while the store answers with a server error
    /// or cannot be reached; returns the answer's body.
    async fn send(
        &self,
        method: Method,
        query: &[(&str, &str)],
        headers: &[(&'static str, &str)],
        body: Option<String>,
    ) -> Result<String, String> {
        let header = |v: &str| HeaderValue::from_str(v).map_err(|e| e.to_string());
        let headers = headers
            .iter()
            .map(|(name, value)| Ok((*name, header(value)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            match self.attempt(&method, query, &headers, body.clone()).await {
                Ok(answer) => return Ok(answer),
                Err((true, why)) if started.elapsed() + wait < self.retry_for => {
                    tracing::debug!(key = %self.path, %why, "retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err((_, why)) => return Err(why),
            }
        }
    }

    /// One try: the answer's body, or whether to try again and why not.
    async fn attempt(
        &self,
        method: &Method,
        query: &[(&str, &str)],
        headers: &[(&'static str, HeaderValue)],
        body: Option<String>,
    ) -> Result<String, (bool, String)> {
        let mut options = SignedUrlOptions::new().with_query(query.iter().copied());
        for (name, value) in headers {
            options = options.with_signed_header(
                object_store::signer::HeaderName::from_static(name),
                value.clone(),
            );
        }
        let url = self
            .store
            .signed_url_opts(
                method.clone(),
                self.path,
                Duration::from_secs(15 * 60),
                &options,
            )
            .await
            .map_err(|e| (false, e.to_string()))?;
        let mut request = self.http.request(method.clone(), url.as_str());
        for (name, value) in headers {
            request = request.header(*name, value.as_bytes());
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| (true, format!("request failed: {e}")))?;
        let status = response.status();
        let answer = response
            .text()
            .await
            .map_err(|e| (true, format!("answer unreadable: {e}")))?;
        // S3 may answer a copy with 200 and an error in the body.
        if status.is_success() && !answer.contains("<Error>") {
            Ok(answer)
        } else {
            let retry = status.is_server_error()
                || status.as_u16() == 429
                || (status.is_success() && answer.contains("<Error>"));
            Err((retry, format!("refused ({status}): {}", excerpt(&answer))))
        }
    }
}

/// The text of the first `<tag>` element of an XML answer, as written.
fn field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// XML's five predefined entities, decoded.
fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_answers() {
        let created = "<?xml version=\"1.0\"?><InitiateMultipartUploadResult><Bucket>b</Bucket>\
                       <UploadId>a&amp;b</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(
            field(created, "UploadId").map(unescape).as_deref(),
            Some("a&b")
        );
        let part = "<CopyPartResult><ETag>&quot;9b2cf5&quot;</ETag></CopyPartResult>";
        assert_eq!(field(part, "ETag"), Some("&quot;9b2cf5&quot;"));
        assert_eq!(field(part, "UploadId"), None);
        assert_eq!(field("<ETag>unclosed", "ETag"), None);
    }
}

//! What an object-store destination may be: `s3://BUCKET` or `s3://BUCKET/PREFIX`, with a
//! bucket name that follows S3's naming rules, checked before anything is sent.

/// Whether `addr` names an object store rather than a `HOST:PORT` receiver.
pub fn is_object_store(addr: &str) -> bool {
    addr.starts_with("s3://")
}

/// An `s3://BUCKET/PREFIX` destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Target {
    /// The bucket.
    pub bucket: String,
    /// Put before every relative path: empty, or ending with `/`.
    pub prefix: String,
}

/// A destination that is not a valid `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad destination {addr:?}: {why}")]
pub struct TargetError {
    /// The destination as given.
    pub addr: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl S3Target {
    /// Parses `s3://BUCKET[/PREFIX]`. A prefix is taken as a folder: `s3://b/2026` and
    /// `s3://b/2026/` both put `a/x` at `2026/a/x`.
    ///
    /// # Errors
    /// [`TargetError`] naming what is wrong.
    pub fn parse(addr: &str) -> Result<Self, TargetError> {
        let bad = |why| {
            Err(TargetError {
                addr: addr.to_owned(),
                why,
            })
        };
        let Some(rest) = addr.strip_prefix("s3://") else {
            return bad("expected s3://BUCKET/PREFIX");
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return bad("the bucket is missing");
        }
        if !(3..=63).contains(&bucket.len())
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            || !bucket.as_bytes()[0].is_ascii_alphanumeric()
            || !bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric()
            || bucket.contains("..")
        {
            return bad(
                "not a bucket name (3 to 63 lowercase letters, digits, dots and hyphens, \
                 starting and ending with a letter or digit)",
            );
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..")
            || prefix.contains("//")
            || prefix.chars().any(char::is_control)
        {
            return bad("the prefix has an empty, '.' or '..' component, or a control character");
        }
        Ok(S3Target {
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// The object key of a relative path.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }
}

impl std::fmt::Display for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_prefixes() {
        let t = S3Target::parse("s3://backups/2026/").unwrap();
        assert_eq!((t.bucket.as_str(), t.prefix.as_str()), ("backups", "2026/"));
        assert_eq!(t.key("a/x"), "2026/a/x");
        assert_eq!(S3Target::parse("s3://backups/2026").unwrap(), t);
        let bare = S3Target::parse("s3://my.bucket-1").unwrap();
        assert_eq!(bare.prefix, "");
        assert_eq!(bare.key("x"), "x");
        assert_eq!(S3Target::parse("s3://abc/").unwrap().prefix, "");
    }

    #[test]
    fn each_mistake_is_named() {
        let why = |a: &str| S3Target::parse(a).unwrap_err().why;
        assert_eq!(why("s3://"), "the bucket is missing");
        assert_eq!(why("s3:///x"), "the bucket is missing");
        for bad in [
            "s3://ab",
            "s3://Upper",
            "s3://-abc",
            "s3://abc-",
            "s3://a..b",
            "s3://a_b",
        ] {
            assert!(why(bad).starts_with("not a bucket name"), "{bad}");
        }
        assert!(why(&format!("s3://{}", "a".repeat(64))).starts_with("not a bucket name"));
        for bad in ["s3://abc/x/../y", "s3://abc/./y", "s3://abc/x//y"] {
            assert!(why(bad).starts_with("the prefix"), "{bad}");
        }
        assert_eq!(why("http://x"), "expected s3://BUCKET/PREFIX");
    }
}

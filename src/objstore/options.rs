//! Where an object store is and how to sign requests to it: endpoint, region and credentials,
//! from the standard `AWS_*` variables or set by the caller, and the client built from them.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::target::S3Target;

/// How to reach an S3-compatible store. `Default` is empty; [`S3Options::from_env`] reads the
/// standard variables.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct S3Options {
    /// The endpoint, for a store other than AWS (`http://127.0.0.1:3900`); `http://` is
    /// allowed only when given here explicitly. `None`: AWS S3 in `region`.
    pub endpoint: Option<String>,
    /// The region the store signs for (Garage's default is `garage`). Default `us-east-1`.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Session token, for temporary credentials.
    pub session_token: Option<String>,
    /// Uploads of whole small files in flight at once. Default 32.
    pub files_in_flight: usize,
    /// Parts of one multipart upload in flight at once. Default 4.
    pub parts_in_flight: usize,
    /// Sign every request body with SHA-256 (SigV4's signed payload), which both ends then
    /// hash. Off by default, as in rclone and the AWS SDKs over HTTPS: the store checks each
    /// body's CRC-64 and TLS protects it on the way. Worth turning on for an `http://`
    /// endpoint on a network the user does not own, where a body could be replaced in transit.
    pub sign_payload: bool,
    /// The largest object whose metadata is set with one copy; 0 means S3's limit, 5 GiB,
    /// which is also the most this takes. Tests lower it to exercise the copy in parts.
    #[doc(hidden)]
    pub max_copy: u64,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| ".."),
            )
            .field("session_token", &self.session_token.as_ref().map(|_| ".."))
            .field("files_in_flight", &self.files_in_flight)
            .field("parts_in_flight", &self.parts_in_flight)
            .field("sign_payload", &self.sign_payload)
            .field("max_copy", &self.max_copy)
            .finish()
    }
}

/// Why an object store cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectStoreError {
    /// No credentials were given.
    #[error(
        "no credentials for {0}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
         AWS_ENDPOINT_URL and AWS_REGION for a store other than AWS S3)"
    )]
    NoCredentials(String),
    /// The client could not be built (a malformed endpoint, say).
    #[error("cannot use {target}: {why}")]
    Config {
        /// The destination.
        target: String,
        /// What the client said.
        why: String,
    },
}

/// Which requests a client makes, which decides how the store checks their bodies: either
/// way, the bytes it keeps are the bytes that were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bodies {
    /// Whole objects, and requests without a body: each body carries its CRC-64, which the
    /// store checks, and is signed only with [`S3Options::sign_payload`].
    Whole,
    /// Parts of multipart uploads: each body is signed with SHA-256, which the store checks.
    /// A checksum algorithm on the upload would make the store read and hash the whole
    /// object again when its `blake3` metadata is set, since the copy that sets it must then
    /// recompute the object's checksum (as AWS specifies and Garage does); that costs the
    /// store more than SHA-256 costs both ends.
    Parts,
}

/// Default uploads of whole files in flight.
pub const FILES_IN_FLIGHT: usize = 32;
/// Default parts of one upload in flight.
pub const PARTS_IN_FLIGHT: usize = 4;

impl S3Options {
    /// Reads `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`, `AWS_ENDPOINT`), `AWS_REGION` (or
    /// `AWS_DEFAULT_REGION`), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// `AWS_SESSION_TOKEN`. Empty variables count as unset.
    pub fn from_env() -> Self {
        let var = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        S3Options {
            endpoint: var(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]),
            region: var(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
            access_key_id: var(&["AWS_ACCESS_KEY_ID"]),
            secret_access_key: var(&["AWS_SECRET_ACCESS_KEY"]),
            session_token: var(&["AWS_SESSION_TOKEN"]),
            files_in_flight: FILES_IN_FLIGHT,
            parts_in_flight: PARTS_IN_FLIGHT,
            sign_payload: false,
            max_copy: 0,
        }
    }

    /// A client for `target`'s bucket whose requests are retried with backoff for up to
    /// `retry_for`, and whose connections time out after `connect_timeout`; `bodies` says
    /// which requests it makes.
    ///
    /// # Errors
    /// [`ObjectStoreError`] without credentials or with a malformed endpoint.
    pub(crate) fn client(
        &self,
        target: &S3Target,
        retry_for: Duration,
        connect_timeout: Duration,
        bodies: Bodies,
    ) -> Result<Arc<AmazonS3>, ObjectStoreError> {
        let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) else {
            return Err(ObjectStoreError::NoCredentials(target.to_string()));
        };
        let mut client = ClientOptions::new().with_connect_timeout(connect_timeout);
        let mut builder = AmazonS3Builder::new().with_bucket_name(&target.bucket);
        builder = match bodies {
            Bodies::Whole => builder
                .with_checksum_algorithm(Checksum::CRC64NVME)
                .with_unsigned_payload(!self.sign_payload),
            Bodies::Parts => builder.with_unsigned_payload(false),
        };
        builder = builder
            .with_region(self.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(id)
            .with_secret_access_key(secret)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: usize::MAX,
                retry_timeout: retry_for,
            });
        if let Some(token) = &self.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &self.endpoint {
            client = client.with_allow_http(endpoint.starts_with("http://"));
            builder = builder.with_endpoint(endpoint);
        }
        builder
            .with_client_options(client)
            .build()
            .map(Arc::new)
            .map_err(|e| ObjectStoreError::Config {
                target: target.to_string(),
                why: e.to_string(),
            })
    }

    /// The largest object whose metadata is set with one copy.
    pub(crate) fn max_copy(&self) -> u64 {
        match self.max_copy {
            0 => super::meta::MAX_COPY,
            n => n.min(super::meta::MAX_COPY),
        }
    }

    /// Files and parts in flight, each at least one.
    pub(crate) fn limits(&self) -> (usize, usize) {
        let or = |n: usize, d: usize| if n == 0 { d } else { n };
        (
            or(self.files_in_flight, FILES_IN_FLIGHT),
            or(self.parts_in_flight, PARTS_IN_FLIGHT),
        )
    }
}

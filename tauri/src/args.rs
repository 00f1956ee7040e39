//! Arguments from JavaScript: [`Arg`] turns Tauri's own argument errors (a missing or
//! mistyped argument) into an [`Error`] of kind `invalidArgument`, and the option objects
//! are checked into the library's options. A key is held as [`Secret`], which never prints.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tauri::ipc::{CommandArg, CommandItem, InvokeError};
use tauri::Runtime;
use tidegate::protocol::handshake::Key;
use tidegate::{ChunkSize, PipelineOptions, TransferOptions};

use crate::error::Error;

/// A command argument whose failure to parse reaches JavaScript as `invalidArgument`.
#[derive(Debug)]
pub struct Arg<T>(pub T);

impl<'de, R: Runtime, T: CommandArg<'de, R>> CommandArg<'de, R> for Arg<T> {
    fn from_command(item: CommandItem<'de, R>) -> Result<Self, InvokeError> {
        T::from_command(item).map(Arg).map_err(|e| {
            let message = match e.0 {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            to_invoke_error(&Error::invalid(message))
        })
    }
}

pub(crate) fn to_invoke_error(e: &Error) -> InvokeError {
    InvokeError(serde_json::to_value(e).unwrap_or_else(|_| e.message.clone().into()))
}

/// A passphrase: compared and derived, never printed or serialised.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub(crate) fn key(&self) -> Result<Key, Error> {
        if self.0.is_empty() {
            return Err(Error::invalid(
                "the key is empty: leave it out for no key, or give the receiver's passphrase",
            ));
        }
        Ok(Key::from_passphrase(&self.0))
    }
}

/// A byte count: a number, or a string with a binary unit (`"64MiB"`).
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Bytes(n)),
            Raw::Text(t) => tidegate::progress::parse_bytes(&t)
                .map(Bytes)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `send`'s options. Every field is optional; the defaults are the library's.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendOptions {
    /// Memory budget (default 64 MiB).
    pub memory: Option<Bytes>,
    /// Chunk size (default 1 MiB).
    pub chunk_size: Option<Bytes>,
    /// Hashing threads (default: one per core).
    pub threads: Option<usize>,
    /// TCP connections per destination (default 4).
    pub streams: Option<usize>,
    /// The receiver's passphrase (default: none).
    pub key: Option<Secret>,
    /// How long an unreachable destination is retried, in milliseconds (default 60,000).
    pub retry_for_ms: Option<u64>,
    /// Timeout of one connection attempt, in milliseconds (default 10,000).
    pub connect_timeout_ms: Option<u64>,
    /// Send symlinks as links (default: skip them).
    pub links: Option<bool>,
    /// List every file in the final report (default: only failures).
    pub file_reports: Option<bool>,
}

/// Events are sent at most this often per job.
pub(crate) const EVENT_INTERVAL: Duration = Duration::from_millis(100);

impl SendOptions {
    pub(crate) fn into_options(self) -> Result<TransferOptions, Error> {
        let mut o = TransferOptions::default();
        o.pipeline = pipeline(o.pipeline, self.memory, self.chunk_size, self.threads)?;
        if let Some(streams) = self.streams {
            if !(1..=64).contains(&streams) {
                return Err(Error::invalid("streams must be from 1 to 64"));
            }
            o.streams = streams;
        }
        if let Some(key) = &self.key {
            o.key = key.key()?;
        }
        if let Some(ms) = self.retry_for_ms {
            o.retry_for = Duration::from_millis(ms);
        }
        if let Some(ms) = self.connect_timeout_ms {
            if ms == 0 {
                return Err(Error::invalid("connectTimeoutMs must be more than 0"));
            }
            o.connect_timeout = Duration::from_millis(ms);
        }
        o.links = self.links.unwrap_or(false);
        o.file_reports = self.file_reports.unwrap_or(false);
        Ok(o)
    }
}

/// `hash`'s options.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashOptions {
    /// Memory budget (default 32 MiB).
    pub memory: Option<Bytes>,
    /// Chunk size (default 4 MiB).
    pub chunk_size: Option<Bytes>,
    /// Hashing threads (default: one per core).
    pub threads: Option<usize>,
}

impl HashOptions {
    pub(crate) fn into_options(self) -> Result<PipelineOptions, Error> {
        pipeline(
            tidegate::HashJob::default_options(),
            self.memory,
            self.chunk_size,
            self.threads,
        )
    }
}

fn pipeline(
    mut p: PipelineOptions,
    memory: Option<Bytes>,
    chunk: Option<Bytes>,
    threads: Option<usize>,
) -> Result<PipelineOptions, Error> {
    if let Some(Bytes(m)) = memory {
        p.memory_bytes = m;
    }
    if let Some(Bytes(c)) = chunk {
        p.chunk_size = ChunkSize::new(c).map_err(|e| Error::invalid(e.to_string()))?;
    }
    if threads.is_some() {
        p.threads = threads;
    }
    p.progress_interval = EVENT_INTERVAL;
    p.validate()?;
    Ok(p)
}

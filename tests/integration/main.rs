//! The integration tests, in one binary (one build and link instead of eight), one module per
//! topic. The dhat heap tests stay one per file (`tests/heap_*.rs`: the profiler is global to
//! the process), and so do the peak-RSS tests (`tests/rss_*.rs`), which each move gigabytes.

#[path = "../common/mod.rs"]
mod common;

mod cli_docs;
mod cli_errors;
mod cli_hash;
mod cli_send;
mod encryption;
mod faults;
mod fuzz_corpus;
mod hash_job;
mod hostile;
mod limits;
#[cfg(feature = "s3")]
mod objstore;
mod refusals;
mod restart;
mod resume;
mod security;
mod server_events;
mod transfer;

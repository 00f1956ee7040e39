//! Command-line arguments (clap derive). Doc comments here are the `--help` text.

use clap::{Args, Parser, Subcommand};
use tidegate::progress::parse_bytes;
use tidegate::ChunkSize;

/// Fast, memory-bounded, verified file transfer.
#[derive(Debug, Parser)]
#[command(name = "tidegate", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Only errors on stderr, and no progress bar.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print or check BLAKE3 hashes, in b3sum's format, with bounded memory.
    Hash(HashArgs),
}

/// Options of the chunk pipeline shared by subcommands that read files.
#[derive(Debug, Args)]
pub(crate) struct PipelineArgs {
    /// Memory budget for chunk data in flight (e.g. 32MiB, 1G) [hash: 32MiB]. Resident
    /// memory stays near this plus a few MiB, whatever the file sizes.
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub(crate) memory: Option<u64>,
    /// Chunk size: a power of two from 16KiB to 64MiB [hash: 4MiB].
    #[arg(long, value_name = "SIZE")]
    pub(crate) chunk_size: Option<ChunkSize>,
    /// Hashing threads [default: one per core].
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct HashArgs {
    /// Files to hash; `-` (or nothing) reads stdin. With --check: files of
    /// `<hash>  <path>` lines to verify.
    #[arg(value_name = "FILE")]
    pub(crate) files: Vec<String>,
    /// Read BLAKE3 sums from the FILEs and check them.
    #[arg(short, long)]
    pub(crate) check: bool,
    /// Write one JSON object per file, then a summary (NDJSON), instead of text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Never show a progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
}

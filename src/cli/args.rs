//! Command-line arguments (clap derive). Doc comments here are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tidegate::progress::parse_bytes;
use tidegate::ChunkSize;

/// Exit code for usage errors, as clap uses.
pub(crate) const USAGE: u8 = 2;

/// Fast, memory-bounded, verified file transfer.
#[derive(Debug, Parser)]
#[command(name = "tidegate", about, propagate_version = true)]
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
    /// Send files and directory trees to one or more `tidegate serve` receivers.
    ///
    /// At the end it prints what each receiver got; with -v, also each file's BLAKE3 root, in
    /// b3sum's format. Exit code 0 when everything is durable on every receiver, 1 when
    /// anything failed (each failure is listed), 2 for a usage error (for example two paths
    /// that would arrive under the same name).
    Send(SendArgs),
    /// Receive files into a directory.
    Serve(ServeArgs),
    /// Measure a loopback transfer: an in-process receiver, real TCP, verified result.
    Bench(BenchArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    ///
    /// For example: `tidegate completions bash > ~/.local/share/bash-completion/completions/tidegate`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout: `tidegate man | man -l -`.
    Man,
}

/// What `--version` prints: the release and the wire protocol's version, which both ends of a
/// transfer must share.
pub(crate) fn version() -> String {
    format!(
        "{} (protocol version {})",
        env!("CARGO_PKG_VERSION"),
        tidegate::protocol::frame::VERSION
    )
}

/// The clap command, with its version.
pub(crate) fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().version(version())
}

/// Parses the process's arguments; exits with clap's message on a usage error.
pub(crate) fn parse() -> Cli {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Checks a `--to` destination (`HOST:PORT` or `s3://BUCKET/PREFIX`), so a mistyped one is a
/// usage error at once.
fn parse_destination(s: &str) -> Result<String, String> {
    if s.starts_with("s3://") {
        #[cfg(feature = "s3")]
        return tidegate::objstore::S3Target::parse(s)
            .map(|_| s.to_owned())
            .map_err(|e| e.why.to_owned());
        #[cfg(not(feature = "s3"))]
        return Err("this build has no object-store support (feature `s3`)".into());
    }
    tidegate::check_destination(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.why.to_owned())
}

/// Parses `500ms`, `30s`, `2m`, `1h`, `7d`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 30s)"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(24 * 3600)),
        _ => return Err(format!("'{s}' has an unknown unit (use ms, s, m, h or d)")),
    };
    Ok(d)
}

/// An expiry: a duration, or never (`None`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expiry(pub(crate) Option<Duration>);

/// A duration of at least an hour, or `never`.
pub(crate) fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if matches!(s.trim(), "never" | "off") {
        return Ok(Expiry(None));
    }
    let d = parse_duration(s)?;
    if d < tidegate::MIN_PARTIAL_EXPIRY {
        return Err(format!("'{s}' is shorter than an hour (or use never)"));
    }
    Ok(Expiry(Some(d)))
}

/// Where the pre-shared key comes from. Both ends must use the same key.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// File whose first line is the passphrase (or the code phrase `serve` printed). Also
    /// `TIDEGATE_KEY` in the environment. Both ends must have the same one; an empty one is
    /// an error.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Files and directories to send (`dir` arrives as `dir/...`; `dir/` sends its contents).
    #[arg(value_name = "PATH", required = true)]
    pub(crate) paths: Vec<PathBuf>,
    /// A receiver, as HOST:PORT, or an S3-compatible bucket, as s3://BUCKET/PREFIX. Repeat
    /// to send everything to several destinations at once (the source is read once).
    #[arg(long = "to", value_name = "DEST", required = true, value_parser = parse_destination)]
    pub(crate) to: Vec<String>,
    /// TCP connections per receiver.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub(crate) streams: usize,
    /// Keep retrying an unreachable receiver for this long before failing it.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) retry_for: Duration,
    /// Send symbolic links as links (default: skip them with a warning).
    #[arg(long)]
    pub(crate) links: bool,
    /// Write progress events and the final report as NDJSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Never show a progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
    #[command(flatten)]
    pub(crate) s3: S3Args,
    /// Sign every body with SHA-256, for an http:// endpoint on a network you do not own
    /// (costs CPU on both ends; without it the store checks each body's CRC-64).
    #[arg(long, help_heading = "Object store (s3:// URLs)")]
    pub(crate) s3_sign_payload: bool,
}

/// Where `s3://` destinations and checked objects are. Credentials come from
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`).
#[derive(Debug, Args)]
#[command(next_help_heading = "Object store (s3:// URLs)")]
pub(crate) struct S3Args {
    /// Endpoint of an S3-compatible store (http://127.0.0.1:3900); default
    /// AWS_ENDPOINT_URL, else AWS S3.
    #[arg(long, value_name = "URL")]
    pub(crate) s3_endpoint: Option<String>,
    /// Region to sign for (Garage's default is `garage`); default AWS_REGION, else us-east-1.
    #[arg(long, value_name = "REGION")]
    pub(crate) s3_region: Option<String>,
}

#[cfg(feature = "s3")]
impl S3Args {
    /// The standard `AWS_*` variables, with the flags over them.
    pub(crate) fn options(&self) -> tidegate::objstore::S3Options {
        let mut options = tidegate::objstore::S3Options::from_env();
        if let Some(endpoint) = &self.s3_endpoint {
            options.endpoint = Some(endpoint.clone());
        }
        if let Some(region) = &self.s3_region {
            options.region = Some(region.clone());
        }
        options
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Directory to receive into (created if missing). Nothing is written outside it.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7878", value_name = "ADDR")]
    pub(crate) listen: SocketAddr,
    /// Close a connection that gets nothing done for this long: silent, or sending only
    /// repeats and refused requests.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) idle_timeout: Duration,
    /// Largest chunk a sender may use (bounds memory per connection).
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub(crate) max_chunk: u64,
    /// Delete partial files and resume journals that no transfer has written for this long
    /// (swept at start, then every quarter of it, at most daily); at least 1h, or `never`.
    #[arg(long, default_value = "7d", value_parser = parse_expiry, value_name = "DURATION")]
    pub(crate) partial_expiry: Expiry,
    /// Accept symlinks whose target is absolute or leads out of DIR (refused by default, as
    /// rsync's daemon does with --safe-links).
    #[arg(long)]
    pub(crate) links_anywhere: bool,
    /// Memory one transfer may spend remembering its directories until it finishes (each
    /// path's length plus 64 bytes); a transfer with more is refused its further directories.
    #[arg(long, default_value = "16MiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub(crate) max_dir_bytes: u64,
    /// Let in any sender, without a passphrase. The connection is still encrypted, but
    /// anyone who can reach the port can write into --dir. Without a key and without this,
    /// `serve` makes a code phrase and prints it.
    #[arg(long)]
    pub(crate) insecure_no_auth: bool,
    #[command(flatten)]
    pub(crate) key: KeyArgs,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

/// What peers may make the receiver hold. A peer past one gets a limit error (code 6) that
/// names the flag; other transfers go on.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub(crate) struct LimitArgs {
    /// Authenticated connections served at once; one more waits up to --handshake-timeout
    /// for a slot, then is refused (its sender tries again).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub(crate) max_connections: usize,
    /// Authenticated connections from one address at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub(crate) max_connections_per_address: usize,
    /// Connections still in their handshake; past it, the one waiting longest is closed.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub(crate) max_handshakes: usize,
    /// Time a connection has to authenticate.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) handshake_timeout: Duration,
    /// Close a connection whose peer reads no reply for this long; also how long a shutdown
    /// waits for busy connections.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub(crate) write_timeout: Duration,
    /// Transfers held at once (including those waiting for their sender to come back).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub(crate) max_sessions: usize,
    /// Transfers begun from one address and held at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub(crate) max_sessions_per_address: usize,
    /// Large files one transfer may have open at once.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub(crate) max_open_files: usize,
    /// Bytes of large files one transfer may have begun and not yet sent.
    #[arg(long, default_value = "16TiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub(crate) max_session_unfinished: u64,
    /// Bytes of large files begun and not yet received, over all transfers.
    #[arg(long, default_value = "64TiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub(crate) max_unfinished: u64,
    /// Free space every new file must leave on DIR's filesystem (what files being received
    /// still lack counts as taken).
    #[arg(long, default_value = "512MiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub(crate) min_free: u64,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Send these paths instead of a generated file.
    #[arg(value_name = "PATH")]
    pub(crate) paths: Vec<PathBuf>,
    /// Size of the generated file.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes, value_name = "SIZE")]
    pub(crate) size: u64,
    /// TCP connections.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub(crate) streams: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,
}

/// Options of the chunk pipeline shared by subcommands that read files.
#[derive(Debug, Args)]
pub(crate) struct PipelineArgs {
    /// Memory budget for chunk data in flight (e.g. 32MiB, 1G) [hash: 48MiB, send: 64MiB].
    /// Resident memory stays near this plus a few MiB, whatever the file sizes.
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub(crate) memory: Option<u64>,
    /// Chunk size: a power of two from 16KiB to 64MiB [hash: 16MiB, send: 1MiB].
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
    #[command(flatten)]
    pub(crate) s3: S3Args,
}

//! `tidegate serve`: run a [`tidegate::Server`] until SIGINT or SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use tidegate::{Server, ServerOptions};
use tokio::signal::unix::{signal, SignalKind};

use super::args::ServeArgs;
use super::args::USAGE;
use super::key::load_key;
use super::say;

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let Ok(max_chunk) = u32::try_from(args.max_chunk) else {
        say::error("--max-chunk is too large");
        return Ok(ExitCode::from(USAGE));
    };
    if !max_chunk.is_power_of_two() || !(16 * 1024..=64 << 20).contains(&max_chunk) {
        say::error("--max-chunk must be a power of two from 16KiB to 64MiB");
        return Ok(ExitCode::from(USAGE));
    }
    if let Err(e) = tidegate::server::check_dir(&args.dir) {
        say::error(format_args!("{e}; choose another --dir"));
        return Ok(ExitCode::from(USAGE));
    }
    let mut options = ServerOptions::new(&args.dir);
    options.key = load_key(&args.key)?;
    let limits = &args.limits;
    options.max_connections = limits.max_connections.max(1);
    options.max_connections_per_address = limits.max_connections_per_address.max(1);
    options.max_handshakes = limits.max_handshakes.max(1);
    options.handshake_timeout = limits.handshake_timeout;
    options.write_timeout = limits.write_timeout;
    options.max_sessions = limits.max_sessions.max(1);
    options.max_sessions_per_address = limits.max_sessions_per_address.max(1);
    options.max_open_files = limits.max_open_files.max(1);
    options.max_session_unfinished_bytes = limits.max_session_unfinished;
    options.max_unfinished_bytes = limits.max_unfinished;
    options.min_free_bytes = limits.min_free;
    options.idle_timeout = args.idle_timeout;
    options.max_chunk_len = max_chunk;
    options.partial_expiry = args.partial_expiry.0;
    options.links_anywhere = args.links_anywhere;
    options.max_dir_bytes = args.max_dir_bytes;
    let server = Server::bind(args.listen, options)
        .await
        .with_context(|| format!("serving {} on {}", args.dir.display(), args.listen))?;
    let addr = server.local_addr()?;
    // Both handlers are in place before the server says it is ready: a SIGTERM sent as soon
    // as the line appears stops it gracefully, not by the default action.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Messages to stderr must never fail the server (stderr may be closed when detached).
    let _ = writeln!(
        std::io::stderr(),
        "tidegate: receiving into {} on {addr}",
        args.dir.display()
    );
    let stop = server.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
        let _ = writeln!(std::io::stderr(), "tidegate: shutting down");
    });
    server.serve().await.context("serving")?;
    Ok(ExitCode::SUCCESS)
}

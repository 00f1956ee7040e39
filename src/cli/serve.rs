//! `tidegate serve`: run a [`tidegate::Server`] until SIGINT or SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use tidegate::{Server, ServerOptions};
use tokio::signal::unix::{signal, SignalKind};

use super::args::ServeArgs;
use super::args::USAGE;
use super::key::{load_key, Given};
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
    // A code phrase made here is printed once the port is known.
    let mut made_phrase = None;
    match (load_key(&args.key)?, args.insecure_no_auth) {
        (Given::Empty(message), _) => {
            say::error(message);
            return Ok(ExitCode::from(USAGE));
        }
        (Given::Key(_), true) => {
            say::error("--insecure-no-auth lets anyone in: give it without a key, or leave it out");
            return Ok(ExitCode::from(USAGE));
        }
        (Given::Key(key), false) => options.key = key,
        (Given::Nothing, true) => {
            say::warning(
                "--insecure-no-auth: any sender that can reach this port may write into the \
                 directory (the connection is encrypted, but not authenticated)",
            );
        }
        (Given::Nothing, false) => {
            let phrase =
                tidegate::protocol::handshake::code_phrase().context("making a code phrase")?;
            options.key = tidegate::protocol::handshake::Key::from_passphrase(&phrase);
            made_phrase = Some(phrase);
        }
    }
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
    if let Some(phrase) = made_phrase {
        let host = if addr.ip().is_unspecified() {
            hostname().unwrap_or_else(|| "HOST".into())
        } else {
            addr.ip().to_string()
        };
        let _ = writeln!(
            std::io::stderr(),
            "tidegate: no key given, so senders need this code phrase (shown only now):\n\
             \n    TIDEGATE_KEY={phrase} tidegate send --to {host}:{} PATH...\n\n\
             (or put it in a file for --key-file; --insecure-no-auth lets anyone in)",
            addr.port()
        );
    }
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

/// This machine's host name, for the `send` line a made code phrase is printed with.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&buf[..end])
        .ok()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

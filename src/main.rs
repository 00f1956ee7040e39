//! The `tidegate` binary: parse arguments, set up logging, run a subcommand, map its outcome
//! to an exit code (0 success, 1 failure, 2 usage error).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::args::parse();
    match &args.command {
        cli::args::Command::Completions { shell } => return cli::docs::completions(*shell),
        cli::args::Command::Man => return cli::docs::man(),
        _ => {}
    }
    cli::logging::init(args.verbose, args.quiet);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let workers = match &args.command {
        // `serve` writes small files on its async workers (`server/inline.rs`), all but one
        // at a time: one worker per core plus one that always stays free.
        cli::args::Command::Serve(_) => cores + 1,
        // A sender's workers only move chunks to sockets and read acknowledgements (files are
        // read and hashed on threads of their own): one thread keeps a receiver's connections
        // busy, and a second mostly wakes up to find nothing to take (see
        // docs/PERFORMANCE.md). One per receiver, up to the cores.
        cli::args::Command::Send(send) => send.to.len().clamp(1, cores),
        _ => 2,
    };
    if matches!(
        args.command,
        cli::args::Command::Serve(_) | cli::args::Command::Bench(_)
    ) {
        raise_descriptor_limit();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("tidegate-io")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidegate: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tidegate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open descriptors to the hard one: a receiver holds one per small
/// file waiting for its batch's flush (`server/staging.rs` in the library), and uses half the
/// soft limit for them. Failure only means fewer of them.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            // An unlimited hard limit: a million is plenty.
            let want = limit.rlim_max.min(1 << 20);
            if want > limit.rlim_cur {
                limit.rlim_cur = want;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

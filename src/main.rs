//! The `tidegate` binary: parse arguments, set up logging, run a subcommand, map its outcome
//! to an exit code (0 success, 1 failure, 2 usage error).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    cli::logging::init(args.verbose, args.quiet);
    // `serve` writes small files on its async workers (`server/inline.rs`), all but one at a
    // time: one worker per core plus one that always stays free. The rest is mostly waiting
    // on sockets and the hashing threads.
    let workers = match args.command {
        cli::args::Command::Serve(_) => {
            std::thread::available_parallelism().map_or(2, |n| n.get().max(2)) + 1
        }
        _ => 2,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .thread_name("tidegate-io")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidegate: cannot start the async runtime: {e}");
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

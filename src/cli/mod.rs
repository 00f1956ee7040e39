//! The command-line front end: one file per subcommand, all thin layers over the library.

pub(crate) mod args;
mod bench;
pub(crate) mod docs;
mod hash;
mod key;
pub(crate) mod logging;
mod progress;
mod say;
mod send;
mod serve;

use std::process::ExitCode;

/// Runs the chosen subcommand.
pub(crate) async fn run(cli: args::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        args::Command::Hash(a) => hash::run(a, cli.verbose).await,
        args::Command::Send(a) => send::run(a, cli.verbose, cli.quiet).await,
        args::Command::Serve(a) => serve::run(a).await,
        args::Command::Bench(a) => bench::run(a).await,
        // Answered in `main` before the runtime starts.
        args::Command::Completions { .. } | args::Command::Man => Ok(ExitCode::SUCCESS),
    }
}

//! The command-line front end: one file per subcommand, all thin layers over the library.

pub(crate) mod args;
mod hash;
pub(crate) mod logging;
mod progress;

use std::process::ExitCode;

/// Exit code for usage errors, as clap uses.
pub(crate) const USAGE: u8 = 2;

/// Runs the chosen subcommand.
pub(crate) async fn run(cli: args::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        args::Command::Hash(a) => hash::run(a, cli.verbose).await,
    }
}

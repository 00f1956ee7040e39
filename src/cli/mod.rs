//! The command-line front end: one file per subcommand, all thin layers over the library.

pub(crate) mod args;
mod bench;
mod hash;
pub(crate) mod logging;
mod progress;
mod send;
mod serve;

use std::process::ExitCode;

/// Exit code for usage errors, as clap uses.
pub(crate) const USAGE: u8 = 2;

/// Runs the chosen subcommand.
pub(crate) async fn run(cli: args::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        args::Command::Hash(a) => hash::run(a, cli.verbose).await,
        args::Command::Send(a) => send::run(a, cli.verbose, cli.quiet).await,
        args::Command::Serve(a) => serve::run(a).await,
        args::Command::Bench(a) => bench::run(a).await,
    }
}

/// The pre-shared key from `--key-file` or `TIDEGATE_KEY`; the empty key without either.
pub(crate) fn load_key(args: &args::KeyArgs) -> anyhow::Result<tidegate::protocol::handshake::Key> {
    use anyhow::Context;
    let passphrase = match &args.key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the key file {}", path.display()))?;
            text.lines().next().unwrap_or_default().to_owned()
        }
        None => std::env::var("TIDEGATE_KEY").unwrap_or_default(),
    };
    Ok(tidegate::protocol::handshake::Key::from_passphrase(
        &passphrase,
    ))
}

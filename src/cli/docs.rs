//! Shell completions and the man page, both generated from the same clap definitions as
//! `--help`, so they never drift from the real options.

use std::io::Write;
use std::process::ExitCode;

use super::args::command;

/// Writes the completion script for `shell` to stdout.
pub(crate) fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "tidegate", &mut out);
    print(&out, "the completion script")
}

/// Writes the man page (roff) to stdout, with a section for each subcommand.
pub(crate) fn man() -> ExitCode {
    let cmd = command();
    let mut out = Vec::new();
    let rendered = clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .and_then(|()| {
            for sub in cmd.get_subcommands() {
                let sub = sub.clone().name(format!("tidegate-{}", sub.get_name()));
                clap_mangen::Man::new(sub).render(&mut out)?;
            }
            Ok(())
        });
    match rendered {
        Ok(()) => print(&out, "the man page"),
        Err(e) => {
            super::say::error(format_args!("rendering the man page: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` to stdout; a reader that stops early (`| head`) is not an error.
fn print(text: &[u8], what: &str) -> ExitCode {
    match std::io::stdout().write_all(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            super::say::error(format_args!("writing {what}: {e}"));
            ExitCode::FAILURE
        }
    }
}

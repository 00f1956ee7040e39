//! The passphrase, from `--key-file` or `TIDEGATE_KEY`.

use super::args::KeyArgs;
use tidegate::protocol::handshake::Key;

/// What the user gave.
pub(crate) enum Given {
    /// A passphrase.
    Key(Key),
    /// Neither `--key-file` nor `TIDEGATE_KEY`.
    Nothing,
    /// An empty one: a usage error, with what to say.
    Empty(String),
}

/// The passphrase from `--key-file` (its first line) or `TIDEGATE_KEY`.
pub(crate) fn load_key(args: &KeyArgs) -> anyhow::Result<Given> {
    use anyhow::Context;
    match &args.key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the key file {}", path.display()))?;
            let line = text.lines().next().unwrap_or_default();
            if line.is_empty() {
                return Ok(Given::Empty(format!(
                    "the key file {} has an empty first line: put the passphrase there, or \
                     leave --key-file out",
                    path.display()
                )));
            }
            Ok(Given::Key(Key::from_passphrase(line)))
        }
        None => match std::env::var_os("TIDEGATE_KEY") {
            None => Ok(Given::Nothing),
            Some(v) if v.is_empty() => Ok(Given::Empty(
                "TIDEGATE_KEY is set but empty: set it to the passphrase, or unset it".into(),
            )),
            Some(v) => match v.into_string() {
                Ok(s) => Ok(Given::Key(Key::from_passphrase(&s))),
                Err(_) => Ok(Given::Empty(
                    "TIDEGATE_KEY is not valid UTF-8: use --key-file for such a passphrase".into(),
                )),
            },
        },
    }
}

//! The pre-shared key, from `--key-file` or `TIDEGATE_KEY`.

use super::args::KeyArgs;

/// The pre-shared key from `--key-file` or `TIDEGATE_KEY`; the empty key without either.
pub(crate) fn load_key(args: &KeyArgs) -> anyhow::Result<tidegate::protocol::handshake::Key> {
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

//! `--version`, `tidegate completions` and `tidegate man`: generated from the same clap
//! definitions as `--help`, so every subcommand and option appears in them.

use crate::common::process::{succeeds, tidegate};

const SUBCOMMANDS: [&str; 4] = ["send", "serve", "hash", "bench"];

fn stdout(args: &[&str]) -> String {
    String::from_utf8(succeeds(tidegate().args(args)).stdout).unwrap()
}

#[test]
fn version_names_the_protocol_version() {
    let version = tidegate::protocol::frame::VERSION;
    let out = stdout(&["--version"]);
    assert_eq!(
        out.trim(),
        format!(
            "tidegate {} (protocol version {version})",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert!(stdout(&["send", "--version"]).contains(&format!("protocol version {version}")));
}

#[test]
fn completions_cover_every_subcommand_and_option() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = stdout(&["completions", shell]);
        for word in SUBCOMMANDS.iter().chain(&["retry-for", "partial-expiry"]) {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    let out = tidegate().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_man_page_has_a_section_for_every_subcommand() {
    let page = stdout(&["man"]);
    assert!(page.contains(".TH tidegate 1"), "{}", &page[..200]);
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!(".TH tidegate-{sub} 1")),
            "no page for {sub}"
        );
    }
    assert!(page.contains("retry\\-for"), "options are listed");
}

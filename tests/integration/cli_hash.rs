//! The `tidegate hash` command: b3sum's output format, `--check`, `--json`, stdin, and exit
//! codes (0 ok, 1 mismatch or I/O error, 2 usage).

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn tidegate(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn prints_b3sum_lines_and_keeps_going_after_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a file");
    let b = dir.path().join("b");
    std::fs::write(&a, vec![7u8; 300_000]).unwrap();
    std::fs::write(&b, b"").unwrap();
    let missing = dir.path().join("missing");
    let out = tidegate(
        &[
            "hash",
            a.to_str().unwrap(),
            missing.to_str().unwrap(),
            b.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "a missing file fails the run");
    let stdout = text(&out.stdout);
    let expected = format!(
        "{}  {}\n{}  {}\n",
        blake3::hash(&vec![7u8; 300_000]).to_hex(),
        a.display(),
        blake3::hash(b"").to_hex(),
        b.display()
    );
    assert_eq!(stdout, expected);
    assert!(
        text(&out.stderr).contains("missing"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn stdin_is_hashed_with_dash_or_no_arguments() {
    let input = vec![42u8; 3 << 20];
    let want = format!("{}  -\n", blake3::hash(&input).to_hex());
    for args in [&["hash"][..], &["hash", "-"][..]] {
        let out = tidegate(args, &input);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), want);
    }
}

#[test]
fn check_reads_its_own_output() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::write(&a, b"alpha").unwrap();
    std::fs::write(&b, vec![1u8; 100_000]).unwrap();
    let sums = tidegate(&["hash", a.to_str().unwrap(), b.to_str().unwrap()], b"");
    assert!(sums.status.success());
    let sumfile = dir.path().join("SUMS");
    std::fs::write(&sumfile, &sums.stdout).unwrap();

    let ok = tidegate(&["hash", "--check", sumfile.to_str().unwrap()], b"");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert_eq!(
        text(&ok.stdout),
        format!("{}: OK\n{}: OK\n", a.display(), b.display())
    );

    std::fs::write(&b, vec![2u8; 100_000]).unwrap();
    let bad = tidegate(&["hash", "-c", "-"], &sums.stdout);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        text(&bad.stdout),
        format!("{}: OK\n{}: FAILED\n", a.display(), b.display())
    );

    let garbage = tidegate(&["hash", "-c", "-"], b"not a sum line\n");
    assert_eq!(garbage.status.code(), Some(1));
    assert!(
        text(&garbage.stderr).contains("-:1"),
        "{}",
        text(&garbage.stderr)
    );
}

#[test]
fn json_output_is_ndjson_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    std::fs::write(&a, b"json").unwrap();
    let out = tidegate(&["hash", "--json", a.to_str().unwrap()], b"");
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["blake3"], blake3::hash(b"json").to_hex().as_str());
    assert_eq!(lines[0]["bytes"], 4);
    assert_eq!(lines[1]["summary"]["files"], 1);
    assert_eq!(lines[1]["summary"]["failed"], 0);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["hash", "--chunk-size", "1000", "-"][..],
        &["hash", "--memory", "1MiB", "--chunk-size", "1MiB", "-"][..],
        &["hash", "--threads", "0", "-"][..],
        &["hash", "--no-such-flag"][..],
        &["frobnicate"][..],
    ] {
        let out = tidegate(args, b"");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!out.stderr.is_empty());
    }
}

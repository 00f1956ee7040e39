//! `tidegate serve` and `tidegate send` as processes: real use, JSON output, exit codes,
//! and a graceful stop on SIGTERM.

use crate::common::process::{serve, serve_from, stop, succeeds, tidegate, Owned};

#[test]
fn send_to_serve_with_json_report_and_graceful_stop() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("docs");
    std::fs::create_dir_all(top.join("sub")).unwrap();
    std::fs::write(top.join("a.txt"), b"alpha").unwrap();
    std::fs::write(top.join("sub/big.bin"), vec![9u8; 3 << 20]).unwrap();
    std::fs::write(src.path().join("key"), "sesame\n").unwrap();
    let key = src.path().join("key");
    let (server, addr) = serve(dst.path(), &["--key-file", key.to_str().unwrap()]);

    let out = succeeds(
        tidegate()
            .args([
                "send",
                "--json",
                "--to",
                &addr,
                "--key-file",
                key.to_str().unwrap(),
            ])
            .arg(&top),
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let report = &lines.last().unwrap()["report"];
    assert_eq!(report["destinations"][0]["error"], serde_json::Value::Null);
    assert!(lines.iter().any(|l| l["event"] == "file_done"));
    // The sources were counted alongside: the last byte count carries the total.
    let bytes = lines.iter().rev().find(|l| l["event"] == "bytes").unwrap();
    let total = 5 + (3u64 << 20);
    assert_eq!(bytes["total_bytes"], total, "{bytes}");
    assert_eq!(bytes["done_bytes"], total, "{bytes}");
    assert_eq!(
        std::fs::read(dst.path().join("docs/a.txt")).unwrap(),
        b"alpha"
    );
    assert_eq!(
        std::fs::read(dst.path().join("docs/sub/big.bin")).unwrap(),
        vec![9u8; 3 << 20]
    );

    // The wrong key fails with exit 1 and says why.
    let bad = tidegate()
        .env("TIDEGATE_KEY", "wrong")
        .args(["send", "--retry-for", "2s", "--to", &addr])
        .arg(&top)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("authentication failed"));

    assert!(stop(server).success(), "serve exits 0 on SIGTERM");
}

#[test]
fn unreachable_receiver_and_usage_errors() {
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let addr = crate::common::unused_addr();
    let out = tidegate()
        .args(["send", "--retry-for", "1s", "--to", &addr])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("FAILED"),
        "{stderr}"
    );
    // The file is counted as not delivered, not listed with the receiver's error again.
    assert!(
        stderr.contains("not delivered: 1 entry") && !stderr.contains("failed: f:"),
        "{stderr}"
    );
    // Said once, not once per attempt of each of the four streams; and nothing dropped,
    // since nothing was ever connected.
    assert_eq!(stderr.matches("cannot connect").count(), 1, "{stderr}");
    assert!(
        !stderr.contains("dropped") && stderr.contains("0 reconnects"),
        "{stderr}"
    );

    for args in [
        &["send", "x"][..],
        &["send", "--to", "127.0.0.1:1"][..],
        &["send", "--streams", "0", "--to", "127.0.0.1:1", "x"][..],
        // Destinations that are not HOST:PORT fail at once instead of being retried.
        &["send", "--to", "receiver", "x"][..],
        &["send", "--to", "::1:9000", "x"][..],
        &["send", "--to", "127.0.0.1:0", "x"][..],
        &["serve"][..],
        &["serve", "--dir", "/tmp", "--max-chunk", "3KiB"][..],
        &["serve", "--dir", "/tmp", "--partial-expiry", "30m"][..],
        &["serve", "--dir", "/tmp", "--partial-expiry", "soon"][..],
    ] {
        let out = tidegate().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = tidegate()
        .args(["send", "--to", "receiver", "x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'receiver'") && stderr.contains("the port is missing"),
        "{stderr}"
    );
}

/// Two sources that would land on the same path are a usage error before anything is sent:
/// otherwise both were counted delivered and whichever arrived last was kept.
#[test]
fn sources_with_the_same_name_are_refused_before_sending() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    for dir in ["a", "b"] {
        std::fs::create_dir(src.path().join(dir)).unwrap();
        std::fs::write(src.path().join(dir).join("x"), dir).unwrap();
    }
    let (server, addr) = serve(dst.path(), &[]);
    let out = tidegate()
        .args(["send", "--to", &addr])
        .arg(src.path().join("a/x"))
        .arg(src.path().join("b/x"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a/x and ")
            && stderr.contains("b/x would both be delivered as x")
            && stderr.contains("separate transfers"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dst.path()).unwrap().count(), 0);
    // In separate transfers, the second replaces the first, as the user asked.
    for dir in ["a", "b"] {
        succeeds(
            tidegate()
                .args(["send", "--to", &addr])
                .arg(src.path().join(dir).join("x")),
        );
    }
    assert_eq!(std::fs::read(dst.path().join("x")).unwrap(), b"b");
    assert!(stop(server).success());
}

/// `send -v` lists each file's root as b3sum does, escaping names with a backslash or a
/// newline, so the list checks the received tree with `hash --check`.
#[test]
fn verbose_roots_check_the_received_tree() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let top = src.path().join("top");
    std::fs::create_dir(&top).unwrap();
    for (name, body) in [("plain", "a"), ("back\\slash", "b"), ("new\nline", "c")] {
        std::fs::write(top.join(name), body).unwrap();
    }
    let (server, addr) = serve(dst.path(), &[]);
    let out = tidegate()
        .args(["send", "-v", "--to", &addr])
        .arg(&top)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sums: String = stderr
        .lines()
        .filter(|l| {
            let hex = l.strip_prefix('\\').unwrap_or(l);
            hex.len() > 66 && hex[..64].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(sums.lines().count(), 3, "{stderr}");
    assert!(
        sums.contains("\\") && sums.contains("top/new\\nline"),
        "{sums}"
    );
    let list = src.path().join("sums.b3");
    std::fs::write(&list, sums).unwrap();
    succeeds(
        tidegate()
            .current_dir(dst.path())
            .args(["hash", "--check"])
            .arg(&list),
    );
    assert!(stop(server).success());
}

/// A receiver that comes up while the sender retries: one warning that it cannot connect,
/// one that it did (and the same as `--json` events), everything delivered, and no reconnect
/// counted (no connection dropped).
#[test]
fn a_receiver_coming_up_late_is_reported_once_each_way() {
    use std::io::{BufRead, BufReader};
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("f"), b"late but whole").unwrap();
    let addr = crate::common::unused_addr();
    let mut send = Owned::new(
        tidegate()
            .args(["send", "--json", "--retry-for", "60s", "--to", &addr])
            .arg(src.path().join("f"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(send.stderr.take().unwrap());
    let mut seen = String::new();
    // The receiver starts only once the sender said it cannot connect.
    while !seen.contains("cannot connect") {
        assert_ne!(stderr.read_line(&mut seen).unwrap(), 0, "{seen}");
    }
    let server = Owned::new(
        tidegate()
            .args(["serve", "--listen", &addr, "--dir"])
            .arg(dst.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::io::Read::read_to_string(&mut stderr, &mut seen).unwrap();
    let mut json = String::new();
    std::io::Read::read_to_string(&mut send.stdout.take().unwrap(), &mut json).unwrap();
    let status = send.wait().unwrap();
    assert!(stop(server).success());
    assert!(status.success(), "{seen}");
    assert_eq!(
        std::fs::read(dst.path().join("f")).unwrap(),
        b"late but whole"
    );
    assert_eq!(seen.matches("cannot connect").count(), 1, "{seen}");
    assert_eq!(seen.matches("connected").count(), 1, "{seen}");
    assert!(
        !seen.contains('\x1b'),
        "no colour codes into a pipe: {seen:?}"
    );
    // The same, as events an app can show; and no reconnect counted.
    let events: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "connection")
        .map(|e| {
            assert_eq!(e["address"], addr.as_str());
            e["state"].as_str().unwrap()
        })
        .collect();
    assert_eq!(states, ["unreachable", "connected"], "{json}");
    let report = &events.last().unwrap()["report"]["destinations"][0];
    assert_eq!(report["reconnects"], 0, "{json}");
}

/// `serve` raises its soft descriptor limit to the hard one (small files waiting for their
/// flush hold a descriptor each; see the library's `ServerOptions::unnamed_files`).
#[test]
fn serve_raises_its_descriptor_limit() {
    use std::os::unix::process::CommandExt;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid, writable rlimit.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    let low = 64;
    assert!(
        limit.rlim_max > low,
        "hard limit {} too low to test",
        limit.rlim_max
    );
    let hard = limit.rlim_max;
    let mut cmd = tidegate();
    // SAFETY: only setrlimit, which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lowered = libc::rlimit {
                rlim_cur: low,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = serve_from(cmd, dir.path(), &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.id())).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no open files limit in {limits}"));
    assert!(stop(server).success());
    assert_eq!(
        soft,
        hard.min(1 << 20),
        "started with a soft limit of {low}"
    );
}

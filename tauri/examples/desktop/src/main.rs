//! A small desktop app on tauri-plugin-tidegate: pick files, send them with a progress bar,
//! rate and ETA, cancel, and receive into a chosen folder. The UI is plain HTML, CSS and JS
//! in `ui/`, calling the plugin's JavaScript API.
//!
//! Smoke mode (`TIDEGATE_SMOKE=1`): the UI's own JavaScript starts a receiver, sends a
//! generated file to it through the same buttons a person would use, checks that both copies
//! hash the same, and the app exits 0 (1 on failure; 3 when a watchdog sees no result after
//! 120 s). `TIDEGATE_SMOKE_BYTES` sets the file's size (default 64 MiB); `TIDEGATE_SMOKE=idle`
//! only opens the window, for measuring what WebKit takes at idle; `TIDEGATE_SMOKE_TO` sends
//! to a receiver of another process (writing into `TIDEGATE_SMOKE_INBOX`), so that the app's
//! memory is the sender's alone. The app prints its peak
//! RSS on exit in smoke mode.

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tauri::{AppHandle, State};

/// How long the smoke run may take.
const WATCHDOG: Duration = Duration::from_secs(120);

/// What the smoke run works on: a generated file and a folder to receive into.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct SmokePlan {
    mode: String,
    source: String,
    inbox: String,
    bytes: u64,
    /// A receiver of another process to send to instead of the app's own
    /// (`TIDEGATE_SMOKE_TO`, writing into `TIDEGATE_SMOKE_INBOX`).
    to: Option<String>,
}

struct Smoke {
    plan: Option<SmokePlan>,
}

mod tempdir {
    //! A folder under the system's temporary directory, deleted on drop.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Writes `bytes` of deterministic, incompressible data to `path`, a MiB at a time.
fn generate(path: &std::path::Path, bytes: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut left = bytes;
    while left > 0 {
        for b in block.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// The smoke run's plan, and its folder: held by `main`, not by the app's managed state, which
/// Tauri does not drop before the process exits.
fn smoke_setup(mode: String) -> std::io::Result<(Smoke, tempdir::Dir)> {
    let bytes = std::env::var("TIDEGATE_SMOKE_BYTES")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(64 << 20);
    let dir = std::env::temp_dir().join(format!("tidegate-smoke-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("inbox"))?;
    let to = std::env::var("TIDEGATE_SMOKE_TO").ok();
    let inbox = match (&to, std::env::var("TIDEGATE_SMOKE_INBOX")) {
        (Some(_), Ok(inbox)) => inbox,
        (Some(_), Err(_)) => {
            return Err(std::io::Error::other(
                "TIDEGATE_SMOKE_TO needs TIDEGATE_SMOKE_INBOX (where that receiver writes)",
            ))
        }
        (None, _) => dir.join("inbox").display().to_string(),
    };
    let guard = tempdir::Dir(dir.clone());
    let source: PathBuf = dir.join("generated.bin");
    if mode != "idle" {
        generate(&source, bytes)?;
    }
    let smoke = Smoke {
        plan: Some(SmokePlan {
            mode,
            source: source.display().to_string(),
            inbox,
            bytes,
            to,
        }),
    };
    Ok((smoke, guard))
}

/// The smoke run's plan, or nothing when the app runs for a person.
#[tauri::command]
fn smoke_plan(smoke: State<'_, Smoke>) -> Option<SmokePlan> {
    smoke.plan.clone()
}

/// The peak resident memory of this process (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The peak resident memory so far, in MiB: read between the smoke run's steps.
#[tauri::command]
fn smoke_peak() -> f64 {
    peak_rss_kib() as f64 / 1024.0
}

/// The smoke run's verdict: printed, then the app exits 0 or 1.
#[tauri::command]
fn smoke_result(app: AppHandle, ok: bool, message: String) {
    let peak = peak_rss_kib();
    println!(
        "smoke: {}: {message}; peak RSS {:.1} MiB",
        if ok { "ok" } else { "FAILED" },
        peak as f64 / 1024.0
    );
    app.exit(if ok { 0 } else { 1 });
}

fn main() {
    let (smoke, folder) = match std::env::var("TIDEGATE_SMOKE") {
        Ok(mode) if !mode.is_empty() => {
            let folder =
                std::env::temp_dir().join(format!("tidegate-smoke-{}", std::process::id()));
            std::thread::spawn(move || {
                std::thread::sleep(WATCHDOG);
                eprintln!("smoke: FAILED: no result after {} s", WATCHDOG.as_secs());
                let _ = std::fs::remove_dir_all(&folder);
                std::process::exit(3);
            });
            let mode = if mode == "idle" {
                mode
            } else {
                "transfer".into()
            };
            match smoke_setup(mode) {
                Ok((smoke, folder)) => (smoke, Some(folder)),
                Err(e) => {
                    eprintln!("smoke: FAILED: cannot prepare the test file: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => (Smoke { plan: None }, None),
    };
    let app = tauri::Builder::default()
        .plugin(tauri_plugin_tidegate::init())
        .plugin(tauri_plugin_dialog::init())
        .manage(smoke)
        .invoke_handler(tauri::generate_handler![
            smoke_plan,
            smoke_peak,
            smoke_result
        ])
        .build(tauri::generate_context!());
    match app {
        Ok(app) => {
            let code = app.run_return(|_, _| {});
            // `exit` runs no destructors: the smoke run's folder goes first.
            drop(folder);
            std::process::exit(code)
        }
        Err(e) => {
            eprintln!("tidegate-desktop: {e}");
            drop(folder);
            std::process::exit(1);
        }
    }
}

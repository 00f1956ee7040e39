//! `tidegate-profile`: runs tidegate's heap scenarios under dhat, writes a viewable profile and
//! a summary for each, and checks the summaries against a committed baseline.
//!
//! ```text
//! tidegate-profile run   [--out DIR] [--runs N] [SCENARIO...]  profiles + DIR/summary.json
//! tidegate-profile check [--out DIR] [--runs N] [--baseline FILE]  exit 1 on a regression
//! tidegate-profile bless [--out DIR] [--runs N] [--baseline FILE] [SCENARIO...]
//!                                                  rewrites the baseline (only the named
//!                                                  scenarios' entries, when some are named)
//! ```
//! Each scenario runs in a child process of its own (`scenario NAME DIR`), so that none
//! inherits another's allocations. Allocation counts barely move between runs, but peaks
//! depend on how many frames happen to be in flight at once, so `check` runs each scenario
//! 3 times and keeps its best run, and `bless` runs it 5 times and records its worst: a
//! regression has to show in every run. See `profiling/README.md`.

mod scenarios;
mod summary;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use summary::{combine, compare, Pick, Summary};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const USAGE: &str = "usage: tidegate-profile run|check|bless [--out DIR] [--runs N] \
                     [--baseline FILE] [SCENARIO...]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("scenario") {
        return match (args.get(1), args.get(2)) {
            (Some(name), Some(out)) => {
                scenario(name, Path::new(out));
                ExitCode::SUCCESS
            }
            _ => usage(),
        };
    }
    let Some(command) = args.first().cloned() else {
        return usage();
    };
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = here.join("out");
    let mut baseline = here.join("baseline.json");
    let mut names = Vec::new();
    let (mut runs, pick) = match command.as_str() {
        "run" => (1, Pick::Best),
        "check" => (3, Pick::Best),
        "bless" => (5, Pick::Worst),
        _ => return usage(),
    };
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--out" => match rest.next() {
                Some(v) => out = PathBuf::from(v),
                None => return usage(),
            },
            "--runs" => match rest.next().and_then(|v| v.parse().ok()).filter(|&n| n > 0) {
                Some(n) => runs = n,
                None => return usage(),
            },
            "--baseline" => match rest.next() {
                Some(v) => baseline = PathBuf::from(v),
                None => return usage(),
            },
            name if scenarios::ALL.contains(&name) => names.push(name.to_string()),
            _ => return usage(),
        }
    }
    if names.is_empty() {
        names = scenarios::ALL.iter().map(|s| s.to_string()).collect();
    }
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("cannot create {}: {e}", out.display());
        return ExitCode::from(2);
    }
    let mut results = Vec::new();
    for name in &names {
        let mut each = Vec::new();
        for _ in 0..runs {
            match run_child(name, &out) {
                Ok(s) => each.push(s),
                Err(e) => {
                    eprintln!("scenario {name} failed: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if let Some(s) = combine(&each, pick) {
            println!("{}", s.line());
            results.push(s);
        }
    }
    let summary = out.join("summary.json");
    if let Err(e) = summary::write(&summary, &results) {
        eprintln!("cannot write {}: {e}", summary.display());
        return ExitCode::from(2);
    }
    println!("summary: {}", summary.display());
    match command.as_str() {
        "run" => ExitCode::SUCCESS,
        "bless" => match summary::read(&baseline)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(Vec::new())
                } else {
                    Err(e)
                }
            })
            .and_then(|base| summary::write(&baseline, &summary::merge(base, results)))
        {
            Ok(()) => {
                println!("baseline written: {}", baseline.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot write {}: {e}", baseline.display());
                ExitCode::from(2)
            }
        },
        "check" => {
            let base = match summary::read(&baseline) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("cannot read baseline {}: {e}", baseline.display());
                    return ExitCode::from(2);
                }
            };
            let problems = compare(&base, &results);
            if problems.is_empty() {
                println!("check: ok against {}", baseline.display());
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    eprintln!("REGRESSION: {p}");
                }
                ExitCode::FAILURE
            }
        }
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

/// Runs one scenario in a child process and reads its summary.
fn run_child(name: &str, out: &Path) -> Result<Summary, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let status = std::process::Command::new(exe)
        .args(["scenario", name])
        .arg(out)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("child exited with {status}"));
    }
    summary::read_one(&out.join(format!("{name}.json"))).map_err(|e| e.to_string())
}

/// In the child: prepares, warms up, profiles, and writes `dhat-heap-NAME.json` and
/// `NAME.json` into `out`.
fn scenario(name: &str, out: &Path) {
    let data = scenarios::prepare(name);
    let stats = std::cell::Cell::new(None);
    scenarios::run(
        name,
        &data,
        || {
            dhat::Profiler::builder()
                .file_name(out.join(format!("dhat-heap-{name}.json")))
                .build()
        },
        || stats.set(Some(tidegate_testkit::heap::settled_blocking())),
    );
    let stats = stats.take().expect("the scenario read the heap");
    let profile = out.join(format!("dhat-heap-{name}.json"));
    let pool = summary::pool_at_end(&profile).expect("read the profile");
    let s = Summary::new(name, data.bytes, &stats, pool);
    summary::write_one(&out.join(format!("{name}.json")), &s).expect("write the summary");
}

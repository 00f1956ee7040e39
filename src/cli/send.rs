//! `tidegate send`: a thin layer over [`tidegate::Transfer`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tidegate::transfer::TransferError;
use tidegate::{Progress, Report, Transfer, TransferOptions};

use super::args::SendArgs;
use super::args::USAGE;
use super::hash::apply_pipeline_args;
use super::key::{load_key, Given};
use super::progress;
use super::say;

pub(crate) async fn run(args: SendArgs, verbose: u8, quiet: bool) -> anyhow::Result<ExitCode> {
    let mut options = TransferOptions::default();
    options.pipeline = match apply_pipeline_args(&args.pipeline, options.pipeline.clone()) {
        Ok(o) => o,
        Err(message) => {
            say::error(message);
            return Ok(ExitCode::from(USAGE));
        }
    };
    if args.streams == 0 {
        say::error("--streams must be at least 1");
        return Ok(ExitCode::from(USAGE));
    }
    options.streams = args.streams;
    options.retry_for = args.retry_for;
    options.links = args.links;
    // Each file's root is listed at the end only with -v; otherwise nothing is kept per file
    // once it is delivered (the JSON stream's `file_done` events carry the same as they go).
    options.file_reports = verbose > 0;
    options.key = match load_key(&args.key)? {
        Given::Key(key) => key,
        Given::Empty(message) => {
            say::error(message);
            return Ok(ExitCode::from(USAGE));
        }
        Given::Nothing => {
            let receivers = args.to.iter().any(|d| !d.starts_with("s3://"));
            if receivers && !quiet {
                say::warning(
                    "no key given (TIDEGATE_KEY or --key-file): only a receiver started with \
                     --insecure-no-auth accepts this, and nothing proves who that receiver is",
                );
            }
            tidegate::protocol::handshake::Key::default()
        }
    };
    #[cfg(feature = "s3")]
    {
        options.s3 = args.s3.options();
        options.s3.sign_payload = args.s3_sign_payload;
    }
    let bar = !args.json && progress::wanted(args.no_progress || quiet, None);
    // Progress events, and the total (one more `stat` per file, on a thread of its own), only
    // for someone watching: otherwise two events per file were made and thrown away.
    let watching = bar || args.json;
    options.count_total = watching;
    // A mistyped path is said at once, not after a receiver was waited for.
    let (paths, unreadable) = readable_sources(&args.paths, args.links);
    if paths.is_empty() {
        return Ok(ExitCode::from(USAGE));
    }
    let mut transfer = Transfer::new(paths, args.to.clone()).options(options);
    let events = watching.then(|| transfer.subscribe());
    let handle = match transfer.start() {
        Ok(handle) => handle,
        Err(e @ (TransferError::Usage(_) | TransferError::Names(_))) => {
            say::error(e);
            return Ok(ExitCode::from(USAGE));
        }
        Err(e) => return Err(e).context("starting the transfer"),
    };
    let cancel = handle.cancel_token();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    let viewer = events.map(|events| {
        if args.json {
            tokio::spawn(print_json(events))
        } else {
            progress::spawn_bar(events, None, None)
        }
    });
    let report = handle
        .wait()
        .await
        .context("the transfer stopped unexpectedly")?;
    ctrl_c.abort();
    if let Some(viewer) = viewer {
        let _ = viewer.await;
    }
    print_report(&report, args.json, verbose)?;
    Ok(if report.success() && unreadable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The sources that can be opened for reading; an error (all unreadable) or a warning (some)
/// for each of the others. Returns the readable ones and how many were not.
fn readable_sources(paths: &[PathBuf], links: bool) -> (Vec<PathBuf>, usize) {
    let checked: Vec<_> = paths.iter().map(|p| (p, check_source(p, links))).collect();
    let none = checked.iter().all(|(_, c)| c.is_err());
    let mut readable = Vec::with_capacity(paths.len());
    let mut unreadable = 0;
    for (path, check) in checked {
        match check {
            Ok(()) => readable.push(path.clone()),
            Err(e) if none => say::error(format_args!("{}: {e}", path.display())),
            Err(e) => {
                unreadable += 1;
                say::warning(format_args!("{}: {e}; sending the rest", path.display()));
            }
        }
    }
    (readable, unreadable)
}

/// Opens a source for reading (without blocking, should it be a FIFO) and closes it again; a
/// symlink sent as a link (`--links`) only has to exist.
fn check_source(path: &Path, links: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if links && std::fs::symlink_metadata(path)?.is_symlink() {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map(drop)
}

async fn print_json(mut events: tokio::sync::mpsc::Receiver<Progress>) {
    while let Some(e) = events.recv().await {
        if let Ok(line) = serde_json::to_string(&e) {
            println!("{line}");
        }
    }
}

/// The summary: files, bytes, time, rate and retries per destination; every failure; with
/// `-v`, each file's BLAKE3 root.
/// `, 12.0 MiB resent, 1 receiver restart` when there is something to say.
fn resent_and_restarts(d: &tidegate::transfer::DestinationReport) -> String {
    let mut out = String::new();
    if d.resent > 0 {
        out += &format!(", {} resent", tidegate::progress::human_bytes(d.resent));
    }
    if d.restarts > 0 {
        let noun = if d.restarts == 1 {
            "restart"
        } else {
            "restarts"
        };
        out += &format!(", {} receiver {noun}", d.restarts);
    }
    out
}

pub(crate) fn print_report(report: &Report, json: bool, verbose: u8) -> anyhow::Result<()> {
    if json {
        /// `{"report": ...}`, written as it is serialized, so that a report listing a million
        /// files (`-v`) is never held twice.
        #[derive(serde::Serialize)]
        struct Line<'a> {
            report: &'a Report,
        }
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer(&mut out, &Line { report })?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let mut err = std::io::stderr().lock();
    let secs = report.elapsed_ms as f64 / 1000.0;
    if verbose > 0 {
        for f in &report.files {
            if !f.blake3.is_empty() {
                writeln!(err, "{}", super::hash::b3sum_hex_line(&f.blake3, &f.path))?;
            }
        }
    }
    for d in &report.destinations {
        // The rate of what this destination acknowledged, like the bytes before it (what was
        // read may be more: a destination that failed early got less of it).
        let rate = d.bytes as f64 / (1024.0 * 1024.0) / secs.max(1e-3);
        writeln!(
            err,
            "{}: {} {} delivered, {} sent in {secs:.2} s ({rate:.0} MiB/s), {} reconnects{}{}{}",
            d.address,
            d.files_done,
            if d.files_done == 1 {
                "entry"
            } else {
                "entries"
            },
            tidegate::progress::human_bytes(d.bytes),
            d.reconnects,
            resent_and_restarts(d),
            if d.already_there > 0 {
                format!(
                    ", {} {} already there ({})",
                    d.already_there,
                    if d.already_there == 1 {
                        "file"
                    } else {
                        "files"
                    },
                    tidegate::progress::human_bytes(d.resumed)
                )
            } else if d.resumed > 0 {
                format!(
                    ", {} already there (resumed)",
                    tidegate::progress::human_bytes(d.resumed)
                )
            } else {
                String::new()
            },
            d.error
                .as_ref()
                .map(|e| format!(", FAILED: {e}"))
                .unwrap_or_default()
        )?;
        for note in &d.notes {
            writeln!(err, "  note: {note}")?;
        }
        // When the receiver failed as a whole, every entry not yet delivered fails with its
        // error: one line says so (each is listed with -v, and always in the JSON report).
        let mut undelivered = 0u64;
        for (path, why) in &d.failed {
            if verbose == 0 && d.error.as_deref() == Some(why.as_str()) {
                undelivered += 1;
                continue;
            }
            writeln!(err, "  failed: {path}: {why}")?;
        }
        if undelivered > 0 {
            writeln!(
                err,
                "  not delivered: {undelivered} {} (-v lists them)",
                if undelivered == 1 { "entry" } else { "entries" }
            )?;
        }
    }
    for (path, why) in &report.source_errors {
        writeln!(err, "  could not read {path}: {why}")?;
    }
    if report.cancelled {
        writeln!(err, "cancelled")?;
    }
    Ok(())
}
